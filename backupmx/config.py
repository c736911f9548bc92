"""The validated configuration model: inventory data in, one typed ``Settings`` out.

Stage 0 of every deploy. Nothing is contacted here: bad input stops the run with
one line naming the field (``ConfigError``) before any host, API or secret store
is touched. The rules are the safety rules of the seed design: backups strictly
worse than every primary, relay CIDRs narrow enough that whitelisting them cannot
whitelist the internet.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from backupmx.errors import ConfigError

PRODUCTION_CLOUDFLARE_API = "https://api.cloudflare.com/client/v4"
FREE_PLAN_RECORD_QUOTA = 200
MAILHOST_FLAVOURS = ("native", "docker-mailserver")
# Whitelisting a network wider than this in postscreen would exempt a large part
# of the internet from DNSBL and pregreet tests.
WIDEST_PREFIX = {4: 16, 6: 32}

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SECRET_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    def records(self) -> tuple[MXHost, ...]:
        return tuple(MXHost(host, self.priority) for host in self.hosts)


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
    provider: Mapping[str, Any] = field(default_factory=dict)
    mta_sts: MtaStsSettings = MtaStsSettings()
    # How long stage 5 waits for the authoritative DNS to show the new MX set.
    dns_wait_seconds: int = 300


def load_settings(data: Mapping[str, Any]) -> Settings:
    """Validate inventory data (pyinfra ``host.data`` or a plain dict) into ``Settings``."""
    domains = _domains(_required(data, "domains"))
    backup = _backup_mx(_required(data, "backup_mx"))
    _check_backups_against_primaries(domains, backup)
    return Settings(
        domains=domains,
        backup_mx=backup,
        relay_cidrs=relay_cidrs(_required(data, "relay_cidrs")),
        vault=_vault(_required(data, "vault")),
        cloudflare=_cloudflare(_get(data, "cloudflare") or {}),
        dns_servers=_dns_servers(_get(data, "dns_servers") or []),
        provider=_mapping(_get(data, "provider") or {}, "provider"),
        mta_sts=_mta_sts(_get(data, "mta_sts") or {}),
        dns_wait_seconds=_seconds(_get(data, "dns_wait_seconds"), "dns_wait_seconds", default=300),
    )


def _get(data: Mapping[str, Any], key: str) -> Any:
    # pyinfra's HostData answers attribute access and .get(); plain dicts only .get().
    return data.get(key) if hasattr(data, "get") else getattr(data, key, None)


def _required(data: Mapping[str, Any], key: str) -> Any:
    value = _get(data, key)
    if value is None:
        raise ConfigError(key, "missing", f"set `{key}` in the inventory (see docs/configuration.md)")
    return value


def _mapping(value: Any, field_name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, f"must be a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, field_name: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(field_name, f"must be a list, got {type(value).__name__}")
    if not value:
        raise ConfigError(field_name, "is empty")
    return list(value)


def hostname(value: Any, field_name: str) -> str:
    """A DNS host name as Cloudflare stores it: lowercase A-labels, no trailing dot."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field_name, f"must be a host name, got {value!r}")
    canonical = value.strip().rstrip(".").lower()
    try:
        canonical = canonical.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(field_name, f"{value!r} is not a valid host name") from None
    if canonical != value:
        raise ConfigError(field_name, f"{value!r} is not in canonical form", f"write {canonical!r}")
    labels = value.split(".")
    if len(labels) < 2 or len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(field_name, f"{value!r} is not a valid host name")
    if all(label.isdigit() for label in labels):
        raise ConfigError(field_name, f"{value!r} is an IP address; an MX must name a host")
    return value


def priority(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(field_name, f"{value!r} is not an MX preference (a whole number 0-65535)")
    return value


def _domains(value: Any) -> tuple[Domain, ...]:
    domains = []
    for index, entry in enumerate(_list(value, "domains")):
        where = f"domains[{index}]"
        entry = _mapping(entry, where)
        name = hostname(entry.get("name"), f"{where}.name")
        zone = hostname(entry.get("zone", name), f"{where}.zone")
        if name != zone and not name.endswith("." + zone):
            raise ConfigError(f"{where}.zone", f"{name!r} is not inside zone {zone!r}")
        primaries = []
        for mx_index, mx in enumerate(_list(entry.get("primary_mx"), f"{where}.primary_mx")):
            mx_where = f"{where}.primary_mx[{mx_index}]"
            mx = _mapping(mx, mx_where)
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
    value = _mapping(value, "backup_mx")
    provider = value.get("provider")
    if not isinstance(provider, str) or not provider:
        raise ConfigError("backup_mx.provider", f"must name the provider profile, got {provider!r}")
    hosts = tuple(hostname(host, f"backup_mx.hosts[{index}]")
                  for index, host in enumerate(_list(value.get("hosts"), "backup_mx.hosts")))
    if len(set(hosts)) != len(hosts):
        raise ConfigError("backup_mx.hosts", "lists a host twice")
    smtp_port = value.get("smtp_port", 25)
    if isinstance(smtp_port, bool) or not isinstance(smtp_port, int) or not 1 <= smtp_port <= 65535:
        raise ConfigError("backup_mx.smtp_port", f"{smtp_port!r} is not a TCP port")
    return BackupMX(provider, hosts, priority(value.get("priority"), "backup_mx.priority"), smtp_port)


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


def relay_cidrs(value: Any, field_name: str = "relay_cidrs") -> tuple[IPNetwork, ...]:
    """Parse and vet the provider's relay networks (IPv4 and IPv6)."""
    networks = []
    for index, raw in enumerate(_list(value, field_name)):
        where = f"{field_name}[{index}]"
        if not isinstance(raw, str):
            raise ConfigError(where, f"must be a CIDR string, got {raw!r}")
        try:
            network = ipaddress.ip_network(raw.strip(), strict=True)
        except ValueError as error:
            loose = _loose_network(raw)
            fix = f"did you mean {loose}?" if loose else "write it as address/prefix, e.g. 192.0.2.0/24"
            raise ConfigError(where, f"{raw!r} is not a network ({_why(error)})", fix) from None
        widest = WIDEST_PREFIX[network.version]
        if network.prefixlen < widest:
            raise ConfigError(where, f"{raw!r} is wider than /{widest}: whitelisting it would exempt "
                              "a large part of the internet from postscreen", "list the provider's exact ranges")
        if network in networks:
            raise ConfigError(where, f"{raw!r} is listed twice")
        networks.append(network)
    return tuple(networks)


def _loose_network(raw: str) -> str | None:
    try:
        return str(ipaddress.ip_network(raw.strip(), strict=False))
    except ValueError:
        return None


def _why(error: ValueError) -> str:
    return "host bits set" if "host bits set" in str(error) else "not an IP network"


def _vault(value: Any) -> VaultSettings:
    value = _mapping(value, "vault")
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
    value = _mapping(value, "cloudflare")
    api_base = value.get("api_base", PRODUCTION_CLOUDFLARE_API)
    if not isinstance(api_base, str) or not re.match(r"^https?://[^/\s]+", api_base):
        raise ConfigError("cloudflare.api_base", f"{api_base!r} is not a URL")
    quota = value.get("record_quota", FREE_PLAN_RECORD_QUOTA)
    if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
        raise ConfigError("cloudflare.record_quota", f"{quota!r} is not a record count")
    return CloudflareSettings(api_base.rstrip("/"), quota)


def _dns_servers(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(_endpoint(server, f"dns_servers[{index}]")
                 for index, server in enumerate(_list(value, "dns_servers")))


def _endpoint(value: Any, field_name: str) -> str:
    """An ``ip:port`` (``[v6]:port`` for IPv6) to connect to."""
    host, _, port = str(value).rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        valid = port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(field_name, f"{value!r} is not ip:port")
    return str(value)


def _mta_sts(value: Any) -> MtaStsSettings:
    value = _mapping(value, "mta_sts")
    connect_to = value.get("connect_to")
    if connect_to is not None:
        _endpoint(connect_to, "mta_sts.connect_to")
    return MtaStsSettings(connect_to, value.get("ca_bundle"))


def _seconds(value: Any, field_name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3600:
        raise ConfigError(field_name, f"{value!r} is not a number of seconds (1-3600)")
    return value
