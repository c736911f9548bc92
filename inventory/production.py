"""Production: the seed design's real values (docs/configuration.md explains each key).

Tests never load or contact this inventory. Secrets are not here: only the Vault
path they are read from at run time.
"""

import os

_settings = {
    "domains": [
        {
            "name": "viktorbarzin.me",
            "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}],
        },
    ],
    "backup_mx": {
        "provider": "rollernet",
        "hosts": ["mail.rollernet.us", "mail2.rollernet.us"],
        "priority": 20,
    },
    # Roller Network's published mail ranges (seed, 2026); gate G4 compares them
    # with the Resource Access page of the ACC before anything changes.
    "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24"],
    "vault": {
        "addr": os.environ.get("VAULT_ADDR", "https://vault.viktorbarzin.me"),
        "secret_path": "secret/viktor",
    },
    "cloudflare": {"record_quota": 200},
    # The ACC API's mail module names and answers are assumed (docs/provider-api.md):
    # correct them under "api" here if Roller Network names them differently. The
    # relay source networks are shown only on the logged-in Resource Access page,
    # so that fact comes from the gate ledger below, not from the API.
    "provider": {
        "name": "rollernet",
        "backend": "api",
        "user": "viktor",
        "api": {"facts": {"relay_cidrs": None}},
        # Roller Network's free tier as reported (the default, written out): 200 messages
        # or 10 MB per rolling 7 days per domain. The drill and the canary spend at most a
        # quarter of it; the gate report warns when the rest covers an outage shorter than
        # 72 h at this domain's volume (docs/budget.md). A paid plan: its figures, or None.
        "budget": {"messages": 200, "bytes": 10_000_000, "days": 7, "share": 0.25, "min_outage_hours": 72},
    },
    # Operator-confirmed facts (docs/gates.md): value, date, evidence each. Both
    # G2 and G4 are deliberately NOT recorded yet: the seed design calls the
    # overage behaviour unverified and the relay ranges "to be confirmed in the
    # ACC", so the deploy stops at G2 and G4 until the operator records them, e.g.
    #   "overage": {"value": "4xx", "date": "2026-07-10", "evidence": "support ticket #12345"},
    #   "relay_cidrs": {"value": ["162.216.242.0/24", "72.51.58.0/24"], "date": "2026-07-10",
    #                   "evidence": "ACC Resource Access page, screenshot 2026-07-10"},
    "gate_ledger": {},
    # Another provider, one line away (docs/provider-selfhosted.md): a relay on your
    # own VM that this tool configures. `--data provider=selfhosted` (one run) or
    # "provider": "selfhosted" above picks this entry; its MX hosts and relay CIDRs
    # are the `relay` group's relayhost.hostname and public_addresses. Without a
    # `relay` group (below, commented out) such a run stops at stage 0.
    "providers": {
        "selfhosted": {"backup_mx": {"provider": "selfhosted", "priority": 20}},
    },
}

# The mail host: docker-mailserver behind pfSense HAProxy (PROXY v2 on :2525).
# Pin its host key: trust-on-first-use is not good enough for production. The hosts'
# keys go in inventory/known_hosts, which you create once (stage 0 stops until it exists):
#   ssh-keyscan mail.viktorbarzin.me k8s-master.viktorbarzin.lan >> inventory/known_hosts
# then compare `ssh-keygen -lf inventory/known_hosts` with each host's own fingerprint
# (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub, on its console), and commit the file.
mailhosts = [
    (
        "mail.viktorbarzin.me",
        {
            **_settings,
            "ssh_user": "root",
            "ssh_strict_host_key_checking": "yes",
            "ssh_known_hosts_file": os.path.join(os.path.dirname(__file__), "known_hosts"),
            # docs/mailhost.md: pyinfra writes the mounted config directory on the
            # docker host (host_config_dir); Postfix and rspamd read it in the
            # container at config_dir; commands run through `docker exec mailserver`.
            "mailhost": {
                "flavour": "docker-mailserver",
                "container": "mailserver",
                "config_dir": "/tmp/docker-mailserver",
                "host_config_dir": "/srv/mailserver/docker-data/dms/config",
                "proxy_service": "2525/inet",
            },
            # The weekly canary (docs/canary.md). ASSUMPTION: a mailbox
            # backupmx-canary@viktorbarzin.me exists (`setup email add` in the
            # container); its Maildir is read through `docker exec`. Sent from this
            # host: give "send_from" an inventory host with outbound port 25 if its
            # provider blocks that port. Unsigned until a DKIM key on the control
            # machine is named ("dkim_key", "dkim_selector").
            "canary": {
                "maildir": "/var/mail/viktorbarzin.me/backupmx-canary",
                "metrics_file": "/var/lib/prometheus/node-exporter/backupmx_canary.prom",
            },
        },
    ),
]

# The control machine: Cloudflare, DNS checks and the provider API are driven from here.
controller = [("@local", _settings)]

# Monitoring (seed change 4). ASSUMPTION, see docs/monitoring.md: Prometheus and
# blackbox_exporter run in the Kubernetes cluster; the rendered files are pushed to
# a directory on the cluster's control host and turned into a ConfigMap there.
# Change the host and directory to yours. That host has neither validator, so the
# checks run on the control machine before the push (make setup installs both).
monitoring = [
    (
        "k8s-master.viktorbarzin.lan",
        {
            **_settings,
            "ssh_user": "root",
            "ssh_strict_host_key_checking": "yes",
            "ssh_known_hosts_file": os.path.join(os.path.dirname(__file__), "known_hosts"),
            "monitoring": {
                "dir": "/srv/backupmx/monitoring",
                "blackbox_check": False,
                "promtool_check": False,
                # What senders see; the zone's Cloudflare name servers (dig NS) watch the source itself.
                "dns_targets": ["1.1.1.1:53", "8.8.8.8:53"],
                "blackbox_address": "prometheus-blackbox-exporter.monitoring.svc.cluster.local:9115",
                # Where the alerts link to (each to its section): give the address your team
                # opens the rendered runbook at, e.g. your forge's URL of docs/runbook.md, as
                # "runbook_url". Left out, they link to file://<this checkout>/docs/runbook.md,
                # which opens only on this machine.
                "runbook": "docs/runbook.md",
                "architecture": "docs/architecture.md",
            },
        },
    ),
]

# Provider selfhosted's relay host(s) (docs/selfhosted-relay.md for every key):
# relay = [
#     (
#         "relay1.viktorbarzin.me",
#         {
#             **_settings,
#             "ssh_user": "root",
#             "ssh_strict_host_key_checking": "yes",
#             "ssh_known_hosts_file": os.path.join(os.path.dirname(__file__), "known_hosts"),
#             "relayhost": {
#                 "hostname": "relay1.viktorbarzin.me",
#                 "public_addresses": ["203.0.113.25"],
#                 "primary": "mail.viktorbarzin.me",
#                 "primary_port": 587,  # many cloud VMs cannot send on 25
#             },
#         },
#     ),
# ]
