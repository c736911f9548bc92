"""The provider a run uses: the chosen entry of ``providers`` laid over the data, and with
provider ``selfhosted`` the relay hosts as the backup MX hosts and the relay CIDRs.
"""

from __future__ import annotations

from typing import Any, Mapping

from backupmx.core.errors import ConfigError
from backupmx.core.keys import SETTINGS_KEYS
from backupmx.core.profile import SELFHOSTED
from backupmx.core.relayhost import load_relayhost
from backupmx.core.validate import (
    known_keys,
    lookup,
    mapping,
)

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
    chosen = lookup(data, "provider")
    providers = _providers(lookup(data, "providers"))
    if not isinstance(chosen, str):
        return data
    if providers is None:
        raise ConfigError("provider", f"{chosen!r} names a provider but the inventory has no `providers` map",
                          "define providers.<name> (docs/configuration.md), or give the profile itself")
    if chosen not in providers:
        names = ", ".join(sorted(providers)) or "none"
        raise ConfigError("provider", f"{chosen!r} is not in `providers` (defined: {names})",
                          "pass one of those, or add it (docs/configuration.md)")
    entry = providers[chosen]
    profile = entry.get("provider", {"name": chosen})
    if isinstance(profile, str):
        raise ConfigError(f"providers.{chosen}.provider", "must be a profile (a mapping), not a name")
    profile = mapping(profile, f"providers.{chosen}.provider")
    merged = {key: lookup(data, key) for key in SETTINGS_KEYS}
    merged.update(entry)
    merged["provider"] = profile
    if "relay_cidrs" not in entry and profile.get("name", chosen) == SELFHOSTED:
        # The other provider's CIDRs must not leak into a selfhosted run: there
        # they are derived from the relay hosts unless this entry lists them.
        merged["relay_cidrs"] = None
    return {key: value for key, value in merged.items() if value is not None}


def _providers(value: Any) -> Mapping[str, Any] | None:
    """``providers``, each entry kept to its own keys whether chosen or not: a typo must not wait for the switch."""
    if value is None:
        return None
    value = mapping(value, "providers")
    for name, entry in value.items():
        known_keys(mapping(entry, f"providers.{name}"), f"providers.{name}", PROVIDER_KEYS)
    return value


def relay_group_names(relays: Mapping[str, Any] | None) -> list[str]:
    if not relays:
        raise ConfigError(RELAY_GROUP, "provider selfhosted needs the inventory group `relay` (the relay hosts "
                          "this tool configures) and it is missing or empty",
                          "add relay = [(host, {'relayhost': {...}})] (docs/provider-selfhosted.md)")
    return sorted(relays)


def load_relay_hosts(relays: Mapping[str, Any]) -> dict[str, Any]:
    """Each relay host's validated ``relayhost`` data (``backupmx.core.relayhost.RelayHost``)."""
    loaded = {}
    for name in sorted(relays):
        if relays[name] is None:
            raise ConfigError(f"relay[{name!r}].relayhost", "missing",
                              "give each relay host its `relayhost` data (docs/selfhosted-relay.md)")
        loaded[name] = load_relayhost(relays[name])
    return loaded


def relay_addresses(relays: Mapping[str, Any]) -> list[str]:
    """The relay hosts' public addresses (``relayhost.public_addresses``), as host networks."""
    networks: list[str] = []
    for relay in relays.values():
        for network in relay.relay_cidrs:
            if str(network) not in networks:
                networks.append(str(network))
    return networks


def relay_backup_mx(value: Any, relays: Mapping[str, Any]) -> Any:
    """backup_mx for selfhosted: its hosts are the relay hosts' names (derived when not listed)."""
    value = dict(mapping(value, "backup_mx"))
    names = [relay.hostname for relay in relays.values()]
    hosts = value.get("hosts")
    if hosts is None:
        value["hosts"] = names
    elif not isinstance(hosts, (list, tuple)) or sorted(hosts) != sorted(names):
        raise ConfigError("backup_mx.hosts", f"{value['hosts']!r} are not the relay hosts' names {names!r}",
                          "list exactly the relayhost.hostname of each `relay` host, or leave hosts out")
    return value
