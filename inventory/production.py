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
    "provider": {"name": "rollernet", "backend": "api", "user": "viktor"},
}

# The mail host: docker-mailserver behind pfSense HAProxy (PROXY v2 on :2525).
# Pin its host key: trust-on-first-use is not good enough for production.
mailhosts = [
    (
        "mail.viktorbarzin.me",
        {
            **_settings,
            "ssh_user": "root",
            "ssh_strict_host_key_checking": "yes",
            "ssh_known_hosts_file": os.path.join(os.path.dirname(__file__), "known_hosts"),
            "mailhost": {
                "flavour": "docker-mailserver",
                "container": "mailserver",
                "config_dir": "/tmp/docker-mailserver",
                "proxy_service": "2525/inet",
            },
        },
    ),
]

# The control machine: Cloudflare, DNS checks and the provider API are driven from here.
controller = [("@local", _settings)]
