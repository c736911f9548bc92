"""The validated settings model: inventory data in, one typed ``Settings`` out.

Stage 0 of every deploy. Nothing is contacted here: bad input stops the run with
one line naming the field (``ConfigError``) before any host, API or secret store
is touched. The rules are the safety rules of the seed design: backups strictly
worse than every primary, relay CIDRs narrow enough that whitelisting them cannot
whitelist the internet.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from backupmx.core.errors import ConfigError
from backupmx.core.keys import (
    BACKUP_MX_KEYS,
    CLOUDFLARE_KEYS,
    DOMAIN_KEYS,
    MTA_STS_KEYS,
    PRIMARY_MX_KEYS,
    VAULT_KEYS,
    check_top_level_keys,
)
from backupmx.core.gate_ledger import GateLedger, gate_ledger
from backupmx.core.profile import SELFHOSTED, ProviderProfile, provider_kind, provider_profile
from backupmx.core.provider_choice import (
    load_relay_hosts,
    relay_addresses,
    relay_backup_mx,
    relay_group_names,
    select_provider,
)
from backupmx.core.validate import (
    IPNetwork,
    bounded_seconds,
    endpoint,
    hostname,
    known_keys,
    local_path,
    lookup,
    mapping,
    nonempty_list,
    priority,
    relay_cidrs,
    required,
    timeout_seconds,
)

PRODUCTION_CLOUDFLARE_API = "https://api.cloudflare.com/client/v4"
FREE_PLAN_RECORD_QUOTA = 200
MAILHOST_FLAVOURS = ("native", "docker-mailserver")


_SECRET_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")



@dataclass(frozen=True)
class MXHost:
    host: str
    priority: int


@dataclass(frozen=True)
class Domain:
    name: str
    zone: str
    primary_mx: tuple[MXHost, ...]


@dataclass(frozen=True)
class BackupMX:
    provider: str
    hosts: tuple[str, ...]
    priority: int
    smtp_port: int = 25
    # Where gate G3 connects for each backup host ("ip:port"), instead of
    # host:smtp_port; and a CA bundle to trust instead of the system's. Both only
    # for a sandbox or a split horizon: the certificate is still checked against
    # the host's name.
    smtp_endpoints: tuple[tuple[str, str], ...] = ()
    tls_ca_bundle: str | None = None

    def records(self) -> tuple[MXHost, ...]:
        return tuple(MXHost(host, self.priority) for host in self.hosts)

    def smtp_endpoint(self, host: str) -> tuple[str, int]:
        """Where to connect for ``host``'s SMTP (the STARTTLS gate): an override, or host:smtp_port."""
        override = dict(self.smtp_endpoints).get(host)
        if override is None:
            return host, self.smtp_port
        address, _, port = override.rpartition(":")
        return address.strip("[]"), int(port)


@dataclass(frozen=True)
class VaultSettings:
    addr: str
    secret_path: str
    token_env: str = "VAULT_TOKEN"
    token_file: str | None = None
    ca_cert: str | None = None

    @property
    def mount(self) -> str:
        return self.secret_path.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.secret_path.split("/", 1)[1]


@dataclass(frozen=True)
class CloudflareSettings:
    api_base: str = PRODUCTION_CLOUDFLARE_API
    record_quota: int = FREE_PLAN_RECORD_QUOTA
    # Seconds to wait for an answer (connect timeout is 5 s); a timed-out write is re-read, not blindly retried.
    read_timeout: float = 30.0


@dataclass(frozen=True)
class MtaStsSettings:
    # Where to fetch https://mta-sts.<domain>/ from ("ip:port"), and a CA bundle
    # to trust instead of the system's: both only for a sandbox or a split horizon.
    connect_to: str | None = None
    ca_bundle: str | None = None


@dataclass(frozen=True)
class Settings:
    domains: tuple[Domain, ...]
    backup_mx: BackupMX
    relay_cidrs: tuple[IPNetwork, ...]
    vault: VaultSettings
    cloudflare: CloudflareSettings
    # Authoritative servers to ask ("ip:port"); empty means the zone's own NS.
    dns_servers: tuple[str, ...] = ()
    # The backup provider: which backend answers the gates' questions (see
    # docs/provider-api.md), and the operator-confirmed facts (docs/gates.md).
    provider: ProviderProfile = field(default_factory=lambda: ProviderProfile())
    gate_ledger: GateLedger = field(default_factory=lambda: GateLedger())
    mta_sts: MtaStsSettings = MtaStsSettings()
    # How long stage 5 waits for the authoritative DNS to show the new MX set.
    dns_wait_seconds: int = 300
    # Controller-side state: the per-domain run locks and the change log
    # (docs/reliability.md). Defaults: ~/.local/state/backupmx, <state_dir>/audit.jsonl.
    state_dir: str = ""
    audit_log: str = ""
    # Provider selfhosted: the inventory names of the `relay` group (the hosts this
    # tool configures as the backup MX). Stage 5 refuses unless each is proven.
    relay_hosts: tuple[str, ...] = ()

    @property
    def selfhosted(self) -> bool:
        return self.provider.name == SELFHOSTED


def load_settings(data: Mapping[str, Any], relays: Mapping[str, Any] | None = None) -> Settings:
    """Validate inventory data (pyinfra ``host.data`` or a plain dict) into ``Settings``.

    ``relays``: the inventory's ``relay`` group as ``{host name: its relayhost data}``;
    only provider ``selfhosted`` reads it (its relay CIDRs are those hosts' addresses).
    """
    check_top_level_keys(data)
    data = select_provider(data)
    domains = _domains(required(data, "domains"))
    backup_data = required(data, "backup_mx")
    if isinstance(backup_data, Mapping):
        # Before anything branches on it: an unknown kind must not be taken for Roller Network.
        provider_kind(backup_data.get("provider"), "backup_mx.provider")
    selfhosted = isinstance(backup_data, Mapping) and backup_data.get("provider") == SELFHOSTED
    relay_hosts: tuple[str, ...] = ()
    if selfhosted:
        relay_hosts = tuple(relay_group_names(relays))
        loaded = load_relay_hosts(relays)
        backup_data = relay_backup_mx(backup_data, loaded)
    backup = _backup_mx(backup_data)
    _check_backups_against_primaries(domains, backup)
    profile = provider_profile(lookup(data, "provider"), backup.provider)
    if selfhosted:
        cidrs = lookup(data, "relay_cidrs")
        # Not listed: the relay hosts' own addresses are the CIDRs (one place to
        # edit). Listed: kept, and gate G4 compares them with the relay hosts'.
        networks = (relay_cidrs(cidrs) if cidrs is not None else
                    relay_cidrs(relay_addresses(loaded), "relayhost.public_addresses"))
    else:
        networks = relay_cidrs(required(data, "relay_cidrs"))
    return Settings(
        domains=domains,
        backup_mx=backup,
        relay_cidrs=networks,
        relay_hosts=relay_hosts,
        vault=_vault(required(data, "vault")),
        cloudflare=_cloudflare(lookup(data, "cloudflare") or {}),
        dns_servers=_dns_servers(lookup(data, "dns_servers") or []),
        provider=profile,
        gate_ledger=gate_ledger(lookup(data, "gate_ledger"), [domain.name for domain in domains]),
        mta_sts=_mta_sts(lookup(data, "mta_sts") or {}),
        dns_wait_seconds=bounded_seconds(lookup(data, "dns_wait_seconds"), "dns_wait_seconds", default=300),
        state_dir=local_path(lookup(data, "state_dir"), "state_dir") or default_state_dir(),
        audit_log=local_path(lookup(data, "audit_log"), "audit_log"),
    )


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "backupmx")



def _domains(value: Any) -> tuple[Domain, ...]:
    domains = []
    for index, entry in enumerate(nonempty_list(value, "domains")):
        where = f"domains[{index}]"
        entry = mapping(entry, where)
        known_keys(entry, where, DOMAIN_KEYS)
        name = hostname(entry.get("name"), f"{where}.name")
        zone = hostname(entry.get("zone", name), f"{where}.zone")
        if name != zone and not name.endswith("." + zone):
            raise ConfigError(f"{where}.zone", f"{name!r} is not inside zone {zone!r}")
        primaries = []
        for mx_index, mx in enumerate(nonempty_list(entry.get("primary_mx"), f"{where}.primary_mx")):
            mx_where = f"{where}.primary_mx[{mx_index}]"
            mx = mapping(mx, mx_where)
            known_keys(mx, mx_where, PRIMARY_MX_KEYS)
            primaries.append(MXHost(hostname(mx.get("host"), f"{mx_where}.host"),
                                    priority(mx.get("priority"), f"{mx_where}.priority")))
        if len({mx.host for mx in primaries}) != len(primaries):
            raise ConfigError(f"{where}.primary_mx", "lists a host twice")
        domains.append(Domain(name, zone, tuple(primaries)))
    names = [domain.name for domain in domains]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise ConfigError("domains", f"{duplicate!r} is listed twice", "keep one entry per domain")
    return tuple(domains)


def _backup_mx(value: Any) -> BackupMX:
    value = mapping(value, "backup_mx")
    known_keys(value, "backup_mx", BACKUP_MX_KEYS)
    provider = provider_kind(value.get("provider"), "backup_mx.provider")
    hosts = tuple(hostname(host, f"backup_mx.hosts[{index}]")
                  for index, host in enumerate(nonempty_list(value.get("hosts"), "backup_mx.hosts")))
    if len(set(hosts)) != len(hosts):
        raise ConfigError("backup_mx.hosts", "lists a host twice")
    smtp_port = value.get("smtp_port", 25)
    if isinstance(smtp_port, bool) or not isinstance(smtp_port, int) or not 1 <= smtp_port <= 65535:
        raise ConfigError("backup_mx.smtp_port", f"{smtp_port!r} is not a TCP port")
    endpoints = mapping(value.get("smtp_endpoints") or {}, "backup_mx.smtp_endpoints")
    for host, address in endpoints.items():
        if host not in hosts:
            raise ConfigError(f"backup_mx.smtp_endpoints[{host!r}]", "is not one of backup_mx.hosts",
                              f"use one of {', '.join(hosts)}")
        endpoint(address, f"backup_mx.smtp_endpoints[{host!r}]")
    ca_bundle = value.get("tls_ca_bundle")
    if ca_bundle is not None and (not isinstance(ca_bundle, str) or not ca_bundle):
        raise ConfigError("backup_mx.tls_ca_bundle", f"{ca_bundle!r} is not a file path")
    return BackupMX(provider, hosts, priority(value.get("priority"), "backup_mx.priority"), smtp_port,
                    tuple(sorted(endpoints.items())), ca_bundle)


def _check_backups_against_primaries(domains: tuple[Domain, ...], backup: BackupMX) -> None:
    for index, domain in enumerate(domains):
        worst_primary = max(mx.priority for mx in domain.primary_mx)
        if backup.priority <= worst_primary:
            # The provider's servers must never be the most preferred MX: in
            # Secondary MX mode they would relay to themselves and lose mail.
            raise ConfigError(
                "backup_mx.priority",
                f"{backup.priority} is not worse than primary preference {worst_primary} of {domain.name}",
                f"use a number greater than {worst_primary} (the seed uses 20)",
            )
        clash = set(backup.hosts) & {mx.host for mx in domain.primary_mx}
        if clash:
            raise ConfigError(f"domains[{index}].primary_mx",
                              f"{sorted(clash)[0]!r} is also a backup MX host", "a host is either primary or backup")



def _vault(value: Any) -> VaultSettings:
    value = mapping(value, "vault")
    known_keys(value, "vault", VAULT_KEYS)
    addr = value.get("addr")
    if not isinstance(addr, str) or not re.match(r"^https?://[^/\s]+", addr):
        raise ConfigError("vault.addr", f"{addr!r} is not a Vault URL", "e.g. https://vault.example.com:8200")
    secret_path = value.get("secret_path")
    if not isinstance(secret_path, str) or not _SECRET_PATH.match(secret_path):
        raise ConfigError("vault.secret_path", f"{secret_path!r} is not a KV path",
                          "write <mount>/<path>, e.g. secret/viktor")
    token_env = value.get("token_env", "VAULT_TOKEN")
    return VaultSettings(addr.rstrip("/"), secret_path, token_env, value.get("token_file"), value.get("ca_cert"))


def _cloudflare(value: Any) -> CloudflareSettings:
    value = mapping(value, "cloudflare")
    known_keys(value, "cloudflare", CLOUDFLARE_KEYS)
    api_base = value.get("api_base", PRODUCTION_CLOUDFLARE_API)
    if not isinstance(api_base, str) or not re.match(r"^https?://[^/\s]+", api_base):
        raise ConfigError("cloudflare.api_base", f"{api_base!r} is not a URL")
    quota = value.get("record_quota", FREE_PLAN_RECORD_QUOTA)
    if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
        raise ConfigError("cloudflare.record_quota", f"{quota!r} is not a record count")
    return CloudflareSettings(api_base.rstrip("/"), quota,
                              timeout_seconds(value.get("read_timeout", 30.0), "cloudflare.read_timeout"))


def _dns_servers(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(endpoint(server, f"dns_servers[{index}]")
                 for index, server in enumerate(nonempty_list(value, "dns_servers")))



def _mta_sts(value: Any) -> MtaStsSettings:
    value = mapping(value, "mta_sts")
    known_keys(value, "mta_sts", MTA_STS_KEYS)
    connect_to = value.get("connect_to")
    if connect_to is not None:
        endpoint(connect_to, "mta_sts.connect_to")
    return MtaStsSettings(connect_to, value.get("ca_bundle"))



