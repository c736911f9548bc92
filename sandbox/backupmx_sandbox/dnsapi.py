"""The sandbox's Cloudflare: a fake v4 API that also serves the world's DNS.

One process (``backupmx_sandbox.fake_cloudflare``) answers the API over HTTP and the
zones over DNS (UDP and TCP) on loopback. This module writes its config, says how
to start it and when it is ready, and contributes the world keys:

``cloudflare_api_base`` (the official SDK's ``base_url``), ``cloudflare_token``,
``cloudflare_token_no_zone`` (valid, but without access to the zone),
``cloudflare_zone_id``, ``cloudflare_admin`` (the fake's ``/_sandbox`` endpoints),
``zone``, ``record_quota``, ``dns`` (``127.0.0.1:PORT``), ``resolver`` (the
primary's resolver, ``127.53.X.Y`` port 53: see ``resolver_address``), ``dnsbl_zone``,
and the test sender's ``sender_domain``, ``dkim_selector`` and ``dkim_key`` (its
private key file).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import socket
import sys
import urllib.request
from pathlib import Path

from backupmx_sandbox import seed
from backupmx_sandbox.world import LOOPBACK, Sandbox, Service, write_private_json
from backupmx_sandbox.zonedns import RESOLVER_PORT

SERVICE_NAMES = ["cloudflare"]
API_PORT = "cloudflare.api"
DNS_PORT = "dns"
# Cloudflare assigns every zone a pair of its own name servers.
NAME_SERVERS = ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"]
WORLD_TTL = 300


def zone_id(name: str) -> str:
    return hashlib.md5(f"backupmx-sandbox-zone:{name}".encode()).hexdigest()


def _account() -> dict:
    return {"id": hashlib.md5(b"backupmx-sandbox-account").hexdigest(), "name": "Sandbox account"}


def zone_seed() -> list[dict]:
    """The Cloudflare zone as the seed design describes it, near its 200-record cap."""
    domain = seed.DOMAIN
    mail = seed.PRIMARY_MX
    records = [
        {"type": "MX", "name": domain, "content": mail, "priority": seed.PRIMARY_PRIORITY, "ttl": 1},
        {"type": "A", "name": mail, "content": LOOPBACK, "ttl": 1},
        {"type": "A", "name": domain, "content": LOOPBACK, "ttl": 1},
        # Published though nothing serves the policy (the seed's MTA-STS finding).
        {"type": "TXT", "name": f"_mta-sts.{domain}", "content": "v=STSv1; id=20260412", "ttl": 1},
        {"type": "TXT", "name": domain, "content": "v=spf1 mx ~all", "ttl": 1},
        {"type": "TXT", "name": f"_dmarc.{domain}", "content": "v=DMARC1; p=quarantine", "ttl": 1},
        {"type": "CNAME", "name": f"www.{domain}", "content": domain, "ttl": 1},
        {"type": "CNAME", "name": f"autoconfig.{domain}", "content": mail, "ttl": 1},
        {"type": "CNAME", "name": f"autodiscover.{domain}", "content": mail, "ttl": 1},
        {"type": "CNAME", "name": f"imap.{domain}", "content": mail, "ttl": 1},
    ]
    return records + filler_records(domain)


def filler_records(domain: str) -> list[dict]:
    """The zone's many unrelated names (services of the homelab), alternately A and CNAME."""
    fillers = []
    for number in range(1, seed.FILLER_RECORDS + 1):
        name = f"host{number:03d}.{domain}"
        if number % 2:
            fillers.append({"type": "A", "name": name, "content": f"10.0.{number // 250}.{number % 250 + 1}",
                            "ttl": 1})
        else:
            fillers.append({"type": "CNAME", "name": name, "content": domain, "ttl": 1})
    return fillers


def dkim_key_path(sandbox: Sandbox) -> Path:
    return sandbox.dir("dkim") / f"{seed.SENDER_DOMAIN}.key"


def dkim_public_key(sandbox: Sandbox) -> str:
    """The sender's DKIM public key (base64 DER), making the private key once (mode 600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = dkim_key_path(sandbox)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(tmp, path)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _record(kind: str, name: str, content: str, **extra) -> dict:
    return {"type": kind, "name": name, "content": content, "ttl": WORLD_TTL, **extra}


def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def _reverse_zones() -> dict[str, list[dict]]:
    """PTR records of the relay addresses, each in its /24's in-addr.arpa zone."""
    zones: dict[str, list[dict]] = {}
    for address, name in seed.RELAY_PTR.items():
        ptr = reverse_name(address)
        zones.setdefault(ptr.split(".", 1)[1], []).append(_record("PTR", ptr, name))
    return zones


def _dnsbl_zone() -> list[dict]:
    """The DNSBL's listings: 127.0.0.2 and a TXT saying why, per listed address (RFC 5782)."""
    records = []
    for address in seed.DNSBL_LISTED:
        name = ".".join(reversed(address.split("."))) + "." + seed.DNSBL_ZONE
        records += [_record("A", name, "127.0.0.2"),
                    _record("TXT", name, f"Listed by {seed.DNSBL_ZONE}: {address} sent spam (sandbox)")]
    # RFC 5782 §5: a DNSBL lists 127.0.0.2 as its test entry and never 127.0.0.1.
    records += [_record("A", f"2.0.0.127.{seed.DNSBL_ZONE}", "127.0.0.2")]
    return records


def world_zones(sandbox: Sandbox) -> dict[str, list[dict]]:
    """The DNS the world needs besides the Cloudflare zone: the relays' names and
    reverse DNS, the test senders and the DNSBL."""
    sender = seed.SENDER_DOMAIN
    neutral = seed.NEUTRAL_SENDER_DOMAIN
    return {
        "rollernet.us": [_record("A", host, LOOPBACK) for host in seed.BACKUP_MX]
        + [_record("A", name, address) for name, address in seed.RELAY_PTR_A.items()],
        **_reverse_zones(),
        seed.DNSBL_ZONE: _dnsbl_zone(),
        # A real sender domain has a mail server (reject_unknown_sender_domain asks).
        neutral: [_record("MX", neutral, f"mx.{neutral}", priority=10),
                  _record("A", f"mx.{neutral}", seed.SENDER_ALLOWED_IP)],
        sender: [
            _record("MX", sender, seed.SENDER_MX, priority=10),
            _record("A", seed.SENDER_MX, seed.SENDER_ALLOWED_IP),
            {"type": "TXT", "name": sender, "content": f"v=spf1 ip4:{seed.SENDER_ALLOWED_IP} -all",
             "ttl": WORLD_TTL},
            {"type": "TXT", "name": f"_dmarc.{sender}", "content": "v=DMARC1; p=reject", "ttl": WORLD_TTL},
            {"type": "TXT", "name": f"{seed.SENDER_DKIM_SELECTOR}._domainkey.{sender}",
             "content": f"v=DKIM1; k=rsa; p={dkim_public_key(sandbox)}", "ttl": WORLD_TTL},
        ],
    }


def _tokens(sandbox: Sandbox) -> dict[str, list[str]]:
    return {
        sandbox.secret("cloudflare_token"): [zone_id(seed.DOMAIN)],
        sandbox.secret("cloudflare_token_no_zone"): [],
    }


def resolver_address(sandbox: Sandbox) -> str:
    """This sandbox's own loopback address for the primary's resolver: ``127.53.X.Y``.

    resolv.conf has no port, so the resolver must own port 53 of an address. Several
    sandboxes run on one machine at once: X.Y comes from a digest of the sandbox
    directory (stable across ``up``), moved on while port 53 there is taken (UDP or
    TCP) or another world reserved it (``backupmx_sandbox.ports``), and kept in
    ``addresses.json``.
    """

    def candidates():
        for attempt in range(256):
            digest = hashlib.sha256(f"{sandbox.root}:{attempt}".encode()).digest()
            yield f"127.53.{digest[0]}.{digest[1] % 254 + 1}"

    try:
        return sandbox.address("resolver", candidates(), _port_53_free)
    except RuntimeError:
        raise RuntimeError("no free port 53 on any 127.53.x.y address for the sandbox resolver") from None


def _port_53_free(address: str) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((address, RESOLVER_PORT))
            except OSError:
                return False
    return True


def config(sandbox: Sandbox) -> dict:
    return {
        "api": {"host": LOOPBACK, "port": sandbox.port(API_PORT)},
        "dns": {"host": LOOPBACK, "port": sandbox.port(DNS_PORT, udp_too=True)},
        "resolver": {"host": resolver_address(sandbox), "port": RESOLVER_PORT},
        "state_dir": str(sandbox.dir("cloudflare", "state", mode=0o700)),
        "zones": [{"id": zone_id(seed.DOMAIN), "name": seed.DOMAIN, "account": _account(),
                   "name_servers": NAME_SERVERS, "records": zone_seed()}],
        "tokens": _tokens(sandbox),
        "record_quota": seed.RECORD_QUOTA,
        # Cloudflare's global limit: 1200 requests per 5 minutes, then 5 minutes blocked.
        "rate_limit": {"requests": 1200, "window": 300, "block": 300},
        "static_zones": world_zones(sandbox),
    }


def _http_ready(sandbox: Sandbox) -> bool:
    url = f"http://{LOOPBACK}:{sandbox.port(API_PORT)}/_sandbox/health"
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def _dns_ready(sandbox: Sandbox) -> bool:
    import dns.exception
    import dns.message
    import dns.query

    query = dns.message.make_query(seed.DOMAIN, "SOA")
    servers = [(LOOPBACK, sandbox.port(DNS_PORT, udp_too=True)), (resolver_address(sandbox), RESOLVER_PORT)]
    try:
        for host, port in servers:
            for send in (dns.query.udp, dns.query.tcp):
                if not send(query, host, port=port, timeout=1).answer:
                    return False
    except (OSError, dns.exception.DNSException):
        return False
    return True


def services(sandbox: Sandbox) -> list[Service]:
    path = sandbox.dir("cloudflare", mode=0o700) / "config.json"
    write_private_json(path, config(sandbox))
    return [
        Service(
            name="cloudflare",
            argv=[sys.executable, "-m", "backupmx_sandbox.fake_cloudflare", "--config", str(path)],
            ready=lambda: _http_ready(sandbox) and _dns_ready(sandbox),
            ready_timeout=30.0,
        )
    ]


def world(sandbox: Sandbox) -> dict:
    api = f"http://{LOOPBACK}:{sandbox.port(API_PORT)}"
    world_zones(sandbox)  # makes the DKIM key if services() has not run yet
    return {
        "cloudflare_api_base": f"{api}/client/v4",
        "cloudflare_admin": f"{api}/_sandbox",
        "cloudflare_token": sandbox.secret("cloudflare_token"),
        "cloudflare_token_no_zone": sandbox.secret("cloudflare_token_no_zone"),
        "cloudflare_zone_id": zone_id(seed.DOMAIN),
        "zone": seed.DOMAIN,
        "record_quota": seed.RECORD_QUOTA,
        "dns": f"{LOOPBACK}:{sandbox.port(DNS_PORT, udp_too=True)}",
        "resolver": resolver_address(sandbox),
        "dnsbl_zone": seed.DNSBL_ZONE,
        "sender_domain": seed.SENDER_DOMAIN,
        "dkim_selector": seed.SENDER_DKIM_SELECTOR,
        "dkim_key": str(dkim_key_path(sandbox)),
    }
