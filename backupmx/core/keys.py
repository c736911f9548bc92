"""Which inventory keys are backupmx's: per level, and the near-miss check of the top level."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from backupmx.core.errors import ConfigError
from backupmx.core.validate import (
    keys_of,
    near_miss,
)

# The keys of the inventory data this tool reads (docs/configuration.md). At the top
# level of pyinfra's host data they sit beside pyinfra's own (ssh_*, _sudo ...) and
# other tools' keys, so there only a near miss of one of ours is refused; below
# their own top-level key every unknown key is.
SETTINGS_KEYS = ("domains", "backup_mx", "relay_cidrs", "vault", "cloudflare", "dns_servers", "provider",
                 "gate_ledger", "mta_sts", "dns_wait_seconds", "state_dir", "audit_log")
# Per host: its mail host, relay host, monitoring host, failover drill and canary data.
HOST_KEYS = ("mailhost", "relayhost", "monitoring", "failover", "canary")
# Run flags, usually given with --data: maintenance, run lock, rollback, drift, the --dry plan documents.
RUN_KEYS = ("hold", "lock_wait", "revert_mailhost", "disable_domain", "drift_verbose",
            "plan_markdown", "plan_json", "full_docs_diff")
TOP_LEVEL_KEYS = SETTINGS_KEYS + ("providers",) + HOST_KEYS + RUN_KEYS
DOMAIN_KEYS = ("name", "zone", "primary_mx")
PRIMARY_MX_KEYS = ("host", "priority")
BACKUP_MX_KEYS = ("provider", "hosts", "priority", "smtp_port", "smtp_endpoints", "tls_ca_bundle")
VAULT_KEYS = ("addr", "secret_path", "token_env", "token_file", "ca_cert")
CLOUDFLARE_KEYS = ("api_base", "record_quota", "read_timeout")
MTA_STS_KEYS = ("connect_to", "ca_bundle")


def check_top_level_keys(data: Mapping[str, Any], host_name: str | None = None) -> None:
    """Refuse a top-level key that is a near miss of one of ours (``backup-mx``, ``relay_cidr``, ``domain``).

    Any other unknown top-level key is pyinfra's or another tool's and is left alone.
    """
    for key in sorted(keys_of(data), key=str):
        meant = near_miss(key, TOP_LEVEL_KEYS) if isinstance(key, str) and key not in TOP_LEVEL_KEYS else None
        if meant:
            where = f" (host {host_name})" if host_name else ""
            raise ConfigError(key, f"is not a known key{where}", f"did you mean {meant}? backupmx's top-level keys: "
                              f"{', '.join(TOP_LEVEL_KEYS)} (other keys are left to pyinfra and other tools)")


def check_inventory_keys(hosts: Iterable[Any]) -> None:
    """``check_top_level_keys`` on every host of the inventory (pyinfra hosts: ``.name``, ``.data``).

    Stage 0 loads the settings from one host's data; a per-host key (``mailhost``,
    ``monitoring`` ...) mistyped on another host would otherwise go unseen.
    """
    for target in hosts:
        check_top_level_keys(target.data, target.name)
