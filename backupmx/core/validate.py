"""Field validators of inventory data: each takes a value and the field's path and returns it
validated, or raises ``ConfigError`` naming the field and the fix.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any, Iterable, Mapping

from backupmx.core.errors import ConfigError

# Whitelisting a network wider than this in postscreen would exempt a large part
# of the internet from DNSBL and pregreet tests.
WIDEST_PREFIX = {4: 16, 6: 32}

# How alike (difflib's ratio) a key must be to one of ours to count as its typo:
# catches a dropped or added letter (domain, relay_cidr, mail_host) without taking
# unrelated short keys for ours.
NEAR_MISS_RATIO = 0.8
# Shorter keys are too often alike by chance (old, hold): only case and - count there.
NEAR_MISS_LENGTH = 5


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def local_path(value: Any, field_name: str) -> str:
    """An absolute path on the control machine, or "" when not set."""
    if value is None:
        return ""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or value.endswith("/.."):
        raise ConfigError(field_name, f"{value!r} is not an absolute path", "e.g. /var/lib/backupmx")
    return value


def lookup(data: Mapping[str, Any], key: str) -> Any:
    # pyinfra's HostData answers attribute access and .get(); plain dicts only .get().
    return data.get(key) if hasattr(data, "get") else getattr(data, key, None)


def keys_of(data: Mapping[str, Any]) -> Iterable[str]:
    # pyinfra's HostData lists its merged keys only through .dict().
    return data.dict() if callable(getattr(data, "dict", None)) else data


def required(data: Mapping[str, Any], key: str) -> Any:
    value = lookup(data, key)
    if value is None:
        raise ConfigError(key, "missing", f"set `{key}` in the inventory (see docs/configuration.md)")
    return value


def mapping(value: Any, field_name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, f"must be a mapping, got {type(value).__name__}")
    return value


def nonempty_list(value: Any, field_name: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(field_name, f"must be a list, got {type(value).__name__}")
    if not value:
        raise ConfigError(field_name, "is empty")
    return list(value)


def hostname(value: Any, field_name: str, fix: str | None = None) -> str:
    """A DNS host name as Cloudflare stores it: lowercase A-labels, no trailing dot.

    ``fix`` is added to the message when the value is no host name at all (say what
    the field should name).
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field_name, f"must be a host name, got {value!r}", fix)
    canonical = value.strip().rstrip(".").lower()
    try:
        canonical = canonical.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(field_name, f"{value!r} is not a valid host name", fix) from None
    if canonical != value:
        raise ConfigError(field_name, f"{value!r} is not in canonical form", f"write {canonical!r}")
    labels = value.split(".")
    if len(labels) < 2 or len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(field_name, f"{value!r} is not a valid host name", fix)
    if all(label.isdigit() for label in labels):
        raise ConfigError(field_name, f"{value!r} is an IP address; an MX must name a host")
    if labels[-1].isdigit() or len(labels[-1]) < 2:
        # No top-level domain is all digits (RFC 3696 2) or one letter: a typo or half an address.
        raise ConfigError(field_name, f"{value!r} is not a valid host name", fix)
    return value


def priority(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(field_name, f"{value!r} is not an MX preference (a whole number 0-65535)")
    return value



def relay_cidrs(value: Any, field_name: str = "relay_cidrs") -> tuple[IPNetwork, ...]:
    """Parse and vet the provider's relay networks (IPv4 and IPv6)."""
    networks = []
    for index, raw in enumerate(nonempty_list(value, field_name)):
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



def endpoint(value: Any, field_name: str) -> str:
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



def bounded_seconds(value: Any, field_name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3600:
        raise ConfigError(field_name, f"{value!r} is not a number of seconds (1-3600)")
    return value


def known_keys(value: Mapping[str, Any], where: str, known: tuple[str, ...]) -> None:
    """Refuse a key that is not in ``known``: a mistyped key would silently leave its default in force."""
    unknown = sorted(set(value) - set(known), key=str)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"{where}.{key}" if where else str(key), "is not a known key",
                          f"{hint}known keys: {', '.join(known)}")


def near_miss(key: str, known: tuple[str, ...], squash: str = "-") -> str | None:
    """The key of ``known`` that ``key`` is a likely typo of: the same up to case and ``-``, or nearly the same.

    ``squash``: the characters a typo may add or swap (``-`` is read as ``_``; with
    more, each is dropped from both sides before comparing: ``self-hosted`` is ``selfhosted``).
    """
    normal = key.lower().replace("-", "_")
    if normal in known:
        return normal
    if squash != "-":
        squashed = {re.sub(f"[{re.escape(squash + '_')}]", "", name): name for name in known}
        meant = squashed.get(re.sub(f"[{re.escape(squash + '_')}]", "", key.lower()))
        if meant:
            return meant
    if len(normal) < NEAR_MISS_LENGTH:
        return None
    close = difflib.get_close_matches(normal, known, n=1, cutoff=NEAR_MISS_RATIO)
    return close[0] if close else None


def timeout_seconds(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
        raise ConfigError(field_name, f"{value!r} is not a number of seconds (0-300)")
    return float(value)


_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_SAFE_PATH = re.compile(r"^/[^\s'\"\\$`]*$")


def host_port(value: Any, field_name: str, what: str = "host:port", fix: str | None = None) -> str:
    """``host:port`` (a name or an IPv4 address, or ``[v6]:port``) that a probe connects to."""
    match = _HOST_PORT.match(value) if isinstance(value, str) else None
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(field_name, f"{value!r} is not {what}", fix)
    return value


def host_path(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not _SAFE_PATH.match(value) or "//" in value:
        raise ConfigError(field_name, f"{value!r} is not an absolute path without spaces or quotes")
    return value.rstrip("/") or "/"


def command(value: Any, field_name: str, allow_empty: bool = False) -> tuple[str, ...]:
    """A command as its argv (run without a shell): a list of non-empty strings."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(field_name, f"must be a command as a list of strings, got {value!r}")
    if not value and not allow_empty:
        raise ConfigError(field_name, "is empty")
    if not all(value):
        raise ConfigError(field_name, f"{list(value)!r} has an empty argument",
                          "one argument per string, e.g. [\"systemctl\", \"reload\", \"postfix\"]")
    return tuple(value)


def cidr_strings(relay_cidrs) -> list[str]:
    """Relay networks (validated ``IPNetwork`` values or their text) as text, in order."""
    return [str(cidr) for cidr in relay_cidrs]
