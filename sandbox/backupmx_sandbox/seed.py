"""The names and addresses of the sandbox world, shared by all of its parts.

The zone mirrors the seed design's (``viktorbarzin.me``, primary MX pri 1). The
relays' *claimed* source addresses (what they announce in the PROXY-v2 header)
come from documentation ranges, so no test ever names a real network; every
socket is on loopback.
"""

from __future__ import annotations

DOMAIN = "viktorbarzin.me"
PRIMARY_MX = "mail.viktorbarzin.me"
PRIMARY_PRIORITY = 1
BACKUP_MX = ["mail.rollernet.us", "mail2.rollernet.us"]
BACKUP_PRIORITY = 20

# What the Roller Network relays announce as their source address (RFC 5737/3849).
RELAY_CIDRS = ["192.0.2.0/24", "198.51.100.0/24", "2001:db8:2::/48"]
RELAY_SOURCE = {"mail.rollernet.us": "192.0.2.25", "mail2.rollernet.us": "198.51.100.25"}

# The relays' reverse DNS, as the primary's resolver serves it. mail.rollernet.us's
# address is forward-confirmed (its PTR name's A points back); mail2's is not (its
# PTR name's A points elsewhere); the self-hosted relay's 127.0.0.66 and the stage-4
# probe addresses have no PTR (a fresh VM, a tunnel). The names the product connects
# to (BACKUP_MX) keep their loopback A records.
RELAY_PTR = {"192.0.2.25": "out1.rollernet.us", "198.51.100.25": "out2.rollernet.us"}
RELAY_PTR_A = {"out1.rollernet.us": "192.0.2.25", "out2.rollernet.us": "198.51.100.26"}

# The sandbox DNSBL: it lists a relay address and a probe address (backup relays are
# listed often; that is why the postscreen whitelist exists) and one outside address.
DNSBL_ZONE = "bl.sandbox-dnsbl.test"
DNSBL_LISTED_OUTSIDE = "203.0.113.66"
DNSBL_LISTED = ["192.0.2.25", "192.0.2.1", DNSBL_LISTED_OUTSIDE]

# A sender domain whose SPF allows only one address outside the relays; DMARC reject.
SENDER_DOMAIN = "sender.test"
SENDER_ALLOWED_IP = "203.0.113.10"
SENDER_DKIM_SELECTOR = "sb"
SENDER_MX = f"mx.{SENDER_DOMAIN}"
# A sender domain with a mail server and no SPF/DMARC, for tests about the path, not the verdict.
NEUTRAL_SENDER_DOMAIN = "example.test"
# Addresses outside every relay CIDR, for "outside client" test cases.
OUTSIDE_NETWORK = "203.0.113.0/24"

VAULT_SECRET_PATH = "secret/viktor"
ACC_USER = "viktor"

# The seeded zone holds this many filler records besides the mail ones, so the
# Free-plan quota (200) is close, as it is for the real zone.
FILLER_RECORDS = 180
RECORD_QUOTA = 200
