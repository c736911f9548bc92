"""The validated configuration model: inventory data in, one typed ``Settings`` out.

Stage 0 of every deploy. Nothing is contacted here: bad input stops the run with
one line naming the field (``ConfigError``) before any host, API or secret store
is touched. The rules are the safety rules of the seed design: backups strictly
worse than every primary, relay CIDRs narrow enough that whitelisting them cannot
whitelist the internet.
"""

from __future__ import annotations

import datetime
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
    data = select_provider(data)
    domains = _domains(_required(data, "domains"))
    backup_data = _required(data, "backup_mx")
    selfhosted = isinstance(backup_data, Mapping) and backup_data.get("provider") == SELFHOSTED
    relay_hosts: tuple[str, ...] = ()
    if selfhosted:
        relay_hosts = tuple(_relay_group(relays))
        loaded = _relay_hosts(relays)
        backup_data = _relay_backup_mx(backup_data, loaded)
    backup = _backup_mx(backup_data)
    _check_backups_against_primaries(domains, backup)
    profile = provider_profile(_get(data, "provider"), backup.provider)
    if selfhosted:
        cidrs = _get(data, "relay_cidrs")
        # Not listed: the relay hosts' own addresses are the CIDRs (one place to
        # edit). Listed: kept, and gate G4 compares them with the relay hosts'.
        networks = (relay_cidrs(cidrs) if cidrs is not None else
                    relay_cidrs(_relay_addresses(loaded), "relayhost.public_addresses"))
    else:
        networks = relay_cidrs(_required(data, "relay_cidrs"))
    return Settings(
        domains=domains,
        backup_mx=backup,
        relay_cidrs=networks,
        relay_hosts=relay_hosts,
        vault=_vault(_required(data, "vault")),
        cloudflare=_cloudflare(_get(data, "cloudflare") or {}),
        dns_servers=_dns_servers(_get(data, "dns_servers") or []),
        provider=profile,
        gate_ledger=gate_ledger(_get(data, "gate_ledger"), domains),
        mta_sts=_mta_sts(_get(data, "mta_sts") or {}),
        dns_wait_seconds=_seconds(_get(data, "dns_wait_seconds"), "dns_wait_seconds", default=300),
        state_dir=_local_path(_get(data, "state_dir"), "state_dir") or default_state_dir(),
        audit_log=_local_path(_get(data, "audit_log"), "audit_log"),
    )


# ----------------------------------------------------------- provider choice

SELFHOSTED = "selfhosted"
RELAY_GROUP = "relay"
# The keys one entry of `providers` may set: what differs between providers.
PROVIDER_KEYS = ("backup_mx", "relay_cidrs", "provider", "gate_ledger")


def select_provider(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The data with the chosen entry of ``providers`` laid over it.

    ``provider`` is normally the provider profile (a mapping). A name instead
    (``provider = "selfhosted"`` in the inventory, or ``--data provider=selfhosted``,
    which pyinfra lays over every host's data) picks ``providers[<name>]``, whose
    keys (backup_mx, relay_cidrs, provider, gate_ledger) replace the top-level ones.
    """
    chosen = _get(data, "provider")
    if not isinstance(chosen, str):
        return data
    providers = _get(data, "providers")
    if providers is None:
        raise ConfigError("provider", f"{chosen!r} names a provider but the inventory has no `providers` map",
                          "define providers.<name> (docs/configuration.md), or give the profile itself")
    providers = _mapping(providers, "providers")
    if chosen not in providers:
        names = ", ".join(sorted(providers)) or "none"
        raise ConfigError("provider", f"{chosen!r} is not in `providers` (defined: {names})",
                          "pass one of those, or add it (docs/configuration.md)")
    entry = _mapping(providers[chosen], f"providers.{chosen}")
    _known_keys(entry, f"providers.{chosen}", PROVIDER_KEYS)
    profile = entry.get("provider", {"name": chosen})
    if isinstance(profile, str):
        raise ConfigError(f"providers.{chosen}.provider", "must be a profile (a mapping), not a name")
    keys = ("domains", "backup_mx", "relay_cidrs", "vault", "cloudflare", "dns_servers", "provider",
            "gate_ledger", "mta_sts", "dns_wait_seconds", "state_dir", "audit_log")
    merged = {key: _get(data, key) for key in keys}
    merged.update(entry)
    merged["provider"] = profile
    if "relay_cidrs" not in entry and profile.get("name", chosen) == SELFHOSTED:
        # The other provider's CIDRs must not leak into a selfhosted run: there
        # they are derived from the relay hosts unless this entry lists them.
        merged["relay_cidrs"] = None
    return {key: value for key, value in merged.items() if value is not None}


def _relay_group(relays: Mapping[str, Any] | None) -> list[str]:
    if not relays:
        raise ConfigError(RELAY_GROUP, "provider selfhosted needs the inventory group `relay` (the relay hosts "
                          "this tool configures) and it is missing or empty",
                          "add relay = [(host, {'relayhost': {...}})] (docs/provider-selfhosted.md)")
    return sorted(relays)


def _relay_hosts(relays: Mapping[str, Any]) -> dict[str, Any]:
    """Each relay host's validated ``relayhost`` data (``backupmx.relayhost.RelayHost``)."""
    from backupmx.relayhost import load_relayhost

    loaded = {}
    for name in sorted(relays):
        if relays[name] is None:
            raise ConfigError(f"relay[{name!r}].relayhost", "missing",
                              "give each relay host its `relayhost` data (docs/selfhosted-relay.md)")
        loaded[name] = load_relayhost(relays[name])
    return loaded


def _relay_addresses(relays: Mapping[str, Any]) -> list[str]:
    """The relay hosts' public addresses (``relayhost.public_addresses``), as host networks."""
    networks: list[str] = []
    for relay in relays.values():
        for network in relay.relay_cidrs:
            if str(network) not in networks:
                networks.append(str(network))
    return networks


def _relay_backup_mx(value: Any, relays: Mapping[str, Any]) -> Any:
    """backup_mx for selfhosted: its hosts are the relay hosts' names (derived when not listed)."""
    value = dict(_mapping(value, "backup_mx"))
    names = [relay.hostname for relay in relays.values()]
    hosts = value.get("hosts")
    if hosts is None:
        value["hosts"] = names
    elif not isinstance(hosts, (list, tuple)) or sorted(hosts) != sorted(names):
        raise ConfigError("backup_mx.hosts", f"{value['hosts']!r} are not the relay hosts' names {names!r}",
                          "list exactly the relayhost.hostname of each `relay` host, or leave hosts out")
    return value


def default_state_dir() -> str:
    import os

    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "backupmx")


def _local_path(value: Any, field_name: str) -> str:
    """An absolute path on the control machine, or "" when not set."""
    if value is None:
        return ""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or value.endswith("/.."):
        raise ConfigError(field_name, f"{value!r} is not an absolute path", "e.g. /var/lib/backupmx")
    return value


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
    endpoints = _mapping(value.get("smtp_endpoints") or {}, "backup_mx.smtp_endpoints")
    for host, endpoint in endpoints.items():
        if host not in hosts:
            raise ConfigError(f"backup_mx.smtp_endpoints[{host!r}]", "is not one of backup_mx.hosts",
                              f"use one of {', '.join(hosts)}")
        _endpoint(endpoint, f"backup_mx.smtp_endpoints[{host!r}]")
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
        mapped = network.version == 6 and network.network_address.ipv4_mapped
        if mapped:
            # Postfix sees an IPv4 client as IPv4: a ::ffff: entry would never match it.
            prefix = network.prefixlen - 96
            fix = f"write {mapped}/{prefix}" if prefix >= 0 else "write the IPv4 network"
            raise ConfigError(where, f"{raw!r} is an IPv4-mapped IPv6 network", fix)
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
    _known_keys(value, "cloudflare", ("api_base", "record_quota", "read_timeout"))
    return CloudflareSettings(api_base.rstrip("/"), quota,
                              _timeout(value.get("read_timeout", 30.0), "cloudflare.read_timeout"))


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


# ------------------------------------------------------------ provider profile

ACC_API_BASE = "https://acc.rollernet.us/api/api.php"
ACC_MANUAL_URL = "https://acc.rollernet.us/"
PROVIDER_BACKENDS = ("api", "ledger")
# Provider selfhosted's backend: facts and changes over SSH on the `relay` group.
RELAYHOST_BACKEND = "relayhost"

# Canonical values of the provider facts (docs/provider-api.md).
DOMAIN_MODES = ("secondary_mx", "mail_mirror", "primary")
USER_TABLE_DEFAULTS = ("allow_any", "deny")
OVERAGE_REPLIES = ("4xx", "5xx")

# What the api backend may ask, by logical name; the profile maps each to the
# provider's action name (null: the API cannot do it, the ledger answers instead).
ACC_READ_ACTIONS = ("domain_get", "usertable_get", "relay_addresses", "queue_list")
ACC_WRITE_ACTIONS = ("domain_set", "hold_set")
# The facts the api backend can read: "<logical action>:<path in the answer's data>".
ACC_FACTS = ("mode", "enabled", "hold", "user_table_default", "relay_cidrs")

# The assumed shape of the ACC API (docs/provider-api.md), as data: a wrong
# guess is corrected in the inventory's `provider.api`, not in code.
DEFAULT_ACC_API: dict[str, Any] = {
    "module": "mail",
    "actions": {name: name for name in ACC_READ_ACTIONS + ACC_WRITE_ACTIONS},
    "facts": {
        "mode": "domain_get:mode",
        "enabled": "domain_get:enabled",
        "hold": "domain_get:hold",
        "user_table_default": "usertable_get:default",
        "relay_cidrs": "relay_addresses:cidrs",
    },
    # Field names inside `d`.
    "request": {"domain": "domain", "enabled": "enabled", "hold": "hold"},
    # Where the envelope keeps its parts (dotted paths).
    "envelope": {"status": "status", "ok": "ok", "data": "data", "error_code": "error.code",
                 "error_message": "error.message"},
    # Error codes with a meaning for us.
    "errors": {"domain_not_found": ["domain_not_found"]},
    # The provider's words for each canonical value.
    "values": {
        "mode": {value: value for value in DOMAIN_MODES},
        "user_table_default": {value: value for value in USER_TABLE_DEFAULTS},
    },
}

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class FrozenMap(Mapping):
    """A read-only, hashable mapping, so the settings stay a frozen, comparable value."""

    def __init__(self, data: Mapping[str, Any] | None = None):
        self._data = {key: _freeze(value) for key, value in (data or {}).items()}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items(), key=lambda item: item[0])))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMap(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


@dataclass(frozen=True)
class AccApiShape:
    """Module, action names and response paths of the ACC API: data, defaults in ``DEFAULT_ACC_API``."""

    module: str
    actions: FrozenMap  # logical name -> provider action name or None
    facts: FrozenMap  # fact -> (logical action, path) or None
    request: FrozenMap
    envelope: FrozenMap
    errors: FrozenMap  # meaning -> tuple of codes
    values: FrozenMap  # fact -> {provider word: canonical value}

    def action(self, logical: str) -> str | None:
        return self.actions.get(logical)

    def fact_source(self, fact: str) -> tuple[str, str] | None:
        """(logical action, path) the fact is read from, or None when the API cannot tell it."""
        source = self.facts.get(fact)
        if source is None or self.action(source[0]) is None:
            return None
        return source


@dataclass(frozen=True)
class ProviderProfile:
    name: str = "rollernet"
    # "api": the provider's account API, with the ledger for what it cannot tell;
    # "ledger": operator-confirmed facts only (changes are printed as manual steps).
    backend: str = "ledger"
    api_base: str = ACC_API_BASE
    user: str | None = None
    # The Vault key (under vault.secret_path) holding the API key; its env
    # stand-in for an emergency is the upper-case name (ROLLERNET_API_KEY).
    key_secret: str = "rollernet_api_key"
    ca_bundle: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    retries: int = 3
    # Where an operator does by hand what the API cannot (printed in manual steps).
    manual_url: str = ACC_MANUAL_URL
    api: AccApiShape = field(default_factory=lambda: _acc_api_shape({}))


def provider_profile(value: Any, backup_provider: str) -> ProviderProfile:
    """The ``provider`` inventory key; absent means the ledger backend for ``backup_mx.provider``."""
    if value is None:
        return _selfhosted_profile({}) if backup_provider == SELFHOSTED else ProviderProfile(name=backup_provider)
    value = _mapping(value, "provider")
    if value.get("name", backup_provider) == SELFHOSTED or (backup_provider == SELFHOSTED and "name" not in value):
        if backup_provider != SELFHOSTED:
            raise ConfigError("backup_mx.provider", f"{backup_provider!r} differs from provider.name 'selfhosted'",
                              "name the same provider profile in both")
        return _selfhosted_profile(value)
    if not value:
        raise ConfigError("provider", "is an empty profile",
                          "set provider.backend ('api' with provider.user, or 'ledger'), or leave `provider` out")
    _known_keys(value, "provider", ("name", "backend", "api_base", "user", "key_secret", "ca_bundle",
                                    "connect_timeout", "read_timeout", "retries", "manual_url", "api"))
    name = value.get("name", backup_provider)
    if name != backup_provider:
        raise ConfigError("provider.name", f"{name!r} differs from backup_mx.provider {backup_provider!r}",
                          "name the same provider profile in both")
    backend = value.get("backend", "ledger")
    if backend not in PROVIDER_BACKENDS:
        raise ConfigError("provider.backend", f"{backend!r} is not a backend", "use 'api' or 'ledger'")
    api_base = value.get("api_base", ACC_API_BASE)
    if not isinstance(api_base, str) or not re.match(r"^https?://[^/\s?#]+[^\s?#]*$", api_base):
        raise ConfigError("provider.api_base", f"{api_base!r} is not a URL without a query string",
                          f"e.g. {ACC_API_BASE}")
    user = value.get("user")
    if backend == "api" and (not isinstance(user, str) or not user.strip()):
        raise ConfigError("provider.user", "missing: the api backend needs the ACC account user name",
                          "set provider.user, or use backend 'ledger'")
    key_secret = value.get("key_secret", "rollernet_api_key")
    if not isinstance(key_secret, str) or not _NAME.match(key_secret):
        raise ConfigError("provider.key_secret", f"{key_secret!r} is not a Vault key name")
    ca_bundle = value.get("ca_bundle")
    if ca_bundle is not None and (not isinstance(ca_bundle, str) or not ca_bundle):
        raise ConfigError("provider.ca_bundle", f"{ca_bundle!r} is not a file path")
    retries = value.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ConfigError("provider.retries", f"{retries!r} is not a retry count (0-10)")
    manual_url = value.get("manual_url", ACC_MANUAL_URL)
    if not isinstance(manual_url, str) or not manual_url:
        raise ConfigError("provider.manual_url", f"{manual_url!r} is not a URL")
    return ProviderProfile(
        name=name, backend=backend, api_base=api_base, user=user, key_secret=key_secret, ca_bundle=ca_bundle,
        connect_timeout=_timeout(value.get("connect_timeout", 5.0), "provider.connect_timeout"),
        read_timeout=_timeout(value.get("read_timeout", 20.0), "provider.read_timeout"),
        retries=retries, manual_url=manual_url,
        api=_acc_api_shape(_mapping(value.get("api") or {}, "provider.api")),
    )


def _selfhosted_profile(value: Mapping[str, Any]) -> ProviderProfile:
    """Provider ``selfhosted``: the relay hosts answer for themselves, so the ACC fields do not apply."""
    for key in value:
        if key != "name":
            raise ConfigError(f"provider.{key}", "does not apply to provider selfhosted (its facts come from the "
                              "relay hosts over SSH)", "leave only provider.name = 'selfhosted'")
    return ProviderProfile(name=SELFHOSTED, backend=RELAYHOST_BACKEND, manual_url="", key_secret="")


def _known_keys(value: Mapping[str, Any], where: str, known: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "is not a known key", f"known keys: {', '.join(known)}")


def _timeout(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
        raise ConfigError(field_name, f"{value!r} is not a number of seconds (0-300)")
    return float(value)


def _acc_api_shape(value: Mapping[str, Any]) -> AccApiShape:
    """The inventory's ``provider.api`` laid over the assumed defaults, key by key."""
    _known_keys(value, "provider.api", tuple(DEFAULT_ACC_API))
    module = value.get("module", DEFAULT_ACC_API["module"])
    if not isinstance(module, str) or not _NAME.match(module):
        raise ConfigError("provider.api.module", f"{module!r} is not a module name")

    def section(name: str, known: tuple[str, ...] | None = None) -> dict[str, Any]:
        given = _mapping(value.get(name) or {}, f"provider.api.{name}")
        if known is not None:
            _known_keys(given, f"provider.api.{name}", known)
        return {**DEFAULT_ACC_API[name], **given}

    actions = section("actions", ACC_READ_ACTIONS + ACC_WRITE_ACTIONS)
    for logical, action in actions.items():
        if action is not None and (not isinstance(action, str) or not _NAME.match(action)):
            raise ConfigError(f"provider.api.actions.{logical}", f"{action!r} is not an action name",
                              "give the provider's name for it, or null if the API cannot do it")
    facts = {}
    for fact, source in section("facts", ACC_FACTS).items():
        where = f"provider.api.facts.{fact}"
        if source is None:
            facts[fact] = None
            continue
        logical, _, path = str(source).partition(":")
        if logical not in ACC_READ_ACTIONS or not _PATH.match(path):
            raise ConfigError(where, f"{source!r} is not '<action>:<path>'",
                              f"e.g. 'domain_get:mode'; actions: {', '.join(ACC_READ_ACTIONS)}")
        facts[fact] = (logical, path)
    request = section("request", ("domain", "enabled", "hold"))
    for key, name in request.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"provider.api.request.{key}", f"{name!r} is not a field name")
    envelope = section("envelope", tuple(DEFAULT_ACC_API["envelope"]))
    for key, path in envelope.items():
        if not isinstance(path, str) or not (_PATH.match(path) or key == "ok"):
            raise ConfigError(f"provider.api.envelope.{key}", f"{path!r} is not a dotted path")
    errors = {}
    for meaning, codes in section("errors", tuple(DEFAULT_ACC_API["errors"])).items():
        codes = [codes] if isinstance(codes, str) else codes
        if not isinstance(codes, (list, tuple)) or not all(isinstance(code, str) and code for code in codes):
            raise ConfigError(f"provider.api.errors.{meaning}", f"{codes!r} is not a list of error codes")
        errors[meaning] = tuple(codes)
    values = {}
    allowed = {"mode": DOMAIN_MODES, "user_table_default": USER_TABLE_DEFAULTS}
    for fact, words in section("values", tuple(allowed)).items():
        words = _mapping(words, f"provider.api.values.{fact}")
        for word, canonical in words.items():
            if canonical not in allowed[fact]:
                raise ConfigError(f"provider.api.values.{fact}[{word!r}]", f"{canonical!r} is not one of "
                                  f"{', '.join(allowed[fact])}")
        values[fact] = dict(words)
    return AccApiShape(module, FrozenMap(actions), FrozenMap(facts), FrozenMap(request), FrozenMap(envelope),
                       FrozenMap(errors), FrozenMap(values))


# ------------------------------------------------------------------ gate ledger

LEDGER_ACCOUNT_FACTS = ("overage", "relay_cidrs")
LEDGER_DOMAIN_FACTS = ("present", "mode", "enabled", "user_table_default", "hold")


@dataclass(frozen=True)
class LedgerEntry:
    """One operator-confirmed fact: its value, when it was confirmed, and the proof."""

    value: Any
    date: datetime.date
    evidence: str

    def describe(self) -> str:
        return f"ledger {self.date.isoformat()}: {self.evidence}"


@dataclass(frozen=True)
class GateLedger:
    overage: LedgerEntry | None = None
    relay_cidrs: LedgerEntry | None = None
    domains: FrozenMap = field(default_factory=FrozenMap)  # domain -> {fact: LedgerEntry}

    def domain_fact(self, domain: str, fact: str) -> LedgerEntry | None:
        return (self.domains.get(domain) or {}).get(fact)


def gate_ledger(value: Any, domains: tuple[Domain, ...]) -> GateLedger:
    """The ``gate_ledger`` inventory key (docs/gates.md); absent means nothing is confirmed."""
    if value is None:
        return GateLedger()
    value = _mapping(value, "gate_ledger")
    _known_keys(value, "gate_ledger", LEDGER_ACCOUNT_FACTS + ("domains",))
    overage = _ledger_entry(value.get("overage"), "gate_ledger.overage")
    if overage is not None and overage.value not in OVERAGE_REPLIES:
        raise ConfigError("gate_ledger.overage.value", f"{overage.value!r} is not one of "
                          f"{', '.join(OVERAGE_REPLIES)}", "'4xx' if over-limit mail is deferred, '5xx' if bounced")
    cidrs = _ledger_entry(value.get("relay_cidrs"), "gate_ledger.relay_cidrs")
    if cidrs is not None:
        cidrs = LedgerEntry(relay_cidrs(cidrs.value, "gate_ledger.relay_cidrs.value"), cidrs.date, cidrs.evidence)
    names = {domain.name for domain in domains}
    per_domain = {}
    for name, facts in _mapping(value.get("domains") or {}, "gate_ledger.domains").items():
        where = f"gate_ledger.domains[{name!r}]"
        if name not in names:
            raise ConfigError(where, "is not a domain of this inventory", f"domains: {', '.join(sorted(names))}")
        facts = _mapping(facts, where)
        _known_keys(facts, where, LEDGER_DOMAIN_FACTS)
        entries = {}
        for fact, raw in facts.items():
            entry = _ledger_entry(raw, f"{where}.{fact}")
            if entry is not None:
                _check_domain_fact(fact, entry.value, f"{where}.{fact}.value")
                entries[fact] = entry
        per_domain[name] = entries
    return GateLedger(overage, cidrs, FrozenMap(per_domain))


def _check_domain_fact(fact: str, value: Any, where: str) -> None:
    if fact in ("present", "enabled", "hold"):
        if not isinstance(value, bool):
            raise ConfigError(where, f"{value!r} is not true or false")
    elif fact == "mode" and value not in DOMAIN_MODES:
        raise ConfigError(where, f"{value!r} is not one of {', '.join(DOMAIN_MODES)}")
    elif fact == "user_table_default" and value not in USER_TABLE_DEFAULTS:
        raise ConfigError(where, f"{value!r} is not one of {', '.join(USER_TABLE_DEFAULTS)}")


def _ledger_entry(value: Any, where: str) -> LedgerEntry | None:
    if value is None:
        return None
    value = _mapping(value, where)
    _known_keys(value, where, ("value", "date", "evidence"))
    if value.get("value") is None:
        raise ConfigError(f"{where}.value", "missing", "record what was confirmed")
    evidence = value.get("evidence")
    if not isinstance(evidence, str) or len(evidence.strip()) < 3:
        raise ConfigError(f"{where}.evidence", f"{evidence!r} is not evidence",
                          "say where it was confirmed, e.g. 'ACC screenshot 2026-07-04' or a support ticket id")
    return LedgerEntry(_freeze(value["value"]), _iso_date(value.get("date"), f"{where}.date"), evidence.strip())


def _iso_date(value: Any, where: str) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            if "T" in value:
                return datetime.datetime.fromisoformat(value).date()
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(where, f"{value!r} is not an ISO date", "write YYYY-MM-DD, e.g. 2026-07-04")
