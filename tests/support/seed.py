"""The seed design's values for tests: the inventory as plain data, for tests that
need a valid ``Settings`` and no world (the domain, its primary and the backup hosts
are the sandbox's, ``backupmx_sandbox.seed``; the relay networks are Roller Network's
published ones, as in inventory/production.py), and the MX records of the domain as
(preference, host), as ``backupmx.dns.check.live_mx`` answers them.
"""

from __future__ import annotations

import copy

from backupmx.core.settings import Settings, load_settings
from backupmx_sandbox.seed import BACKUP_MX, BACKUP_PRIORITY, DOMAIN, PRIMARY_MX, PRIMARY_PRIORITY, VAULT_SECRET_PATH

PRIMARY = (PRIMARY_PRIORITY, PRIMARY_MX)
BACKUPS = frozenset((BACKUP_PRIORITY, host) for host in BACKUP_MX)

SEED_DATA = {
    "domains": [{"name": DOMAIN, "primary_mx": [{"host": PRIMARY_MX, "priority": PRIMARY_PRIORITY}]}],
    "backup_mx": {"provider": "rollernet", "hosts": list(BACKUP_MX), "priority": BACKUP_PRIORITY},
    "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24"],
    "vault": {"addr": "https://vault.example", "secret_path": VAULT_SECRET_PATH},
}


def seed_data(**changes) -> dict:
    """A deep copy of ``SEED_DATA`` with top-level keys replaced by ``changes``."""
    return {**copy.deepcopy(SEED_DATA), **copy.deepcopy(changes)}


def seed_settings(**changes) -> Settings:
    return load_settings(seed_data(**changes))
