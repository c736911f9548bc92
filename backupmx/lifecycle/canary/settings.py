"""The canary's ``canary`` inventory data of the mail host, validated (docs/canary.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backupmx.core.errors import ConfigError
from backupmx.core.settings import Settings
from backupmx.core.validate import hostname, known_keys, local_path

KNOWN = ("maildir", "recipient", "sender_domain", "dkim_key", "dkim_selector", "send_from", "helo",
         "wait_seconds", "settle_seconds", "poll_seconds", "metrics_file")
DEFAULT_RECIPIENT = "backupmx-canary@{domain}"
DEFAULTS = {"wait_seconds": 120.0, "settle_seconds": 20.0, "poll_seconds": 2.0}
LIMITS = {"wait_seconds": 1800.0, "settle_seconds": 1800.0, "poll_seconds": 60.0}
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_MAILDIR = re.compile(r"^/[^\s'\"\\$`]*$")


@dataclass(frozen=True)
class CanarySettings:
    maildir: str  # on the mail host (in the container for docker-mailserver)
    recipients: tuple[tuple[str, str], ...]  # (domain, the canary address of that domain)
    sender_domain: str
    helo: str
    send_from: str | None = None  # an inventory host name; None: the mail host itself
    dkim_key: str | None = None  # a path on the control machine
    dkim_selector: str | None = None
    wait_seconds: float = 120.0
    settle_seconds: float = 20.0
    poll_seconds: float = 2.0
    metrics_file: str | None = None  # on the control machine

    def recipient(self, domain: str) -> str:
        return dict(self.recipients)[domain]

    @property
    def signed(self) -> bool:
        return self.dkim_key is not None


def load_canary(data: Any, settings: Settings) -> CanarySettings:
    """Validate ``host.data.canary`` for one mail host; one ``ConfigError`` line on bad data."""
    if not isinstance(data, Mapping):
        raise ConfigError("canary", "missing" if data is None else f"must be a mapping, got {type(data).__name__}",
                          "set `canary` on the mail host, at least its maildir (docs/canary.md)")
    known_keys(data, "canary", KNOWN)
    domains = [domain.name for domain in settings.domains]
    maildir = data.get("maildir")
    if not isinstance(maildir, str) or not _MAILDIR.match(maildir):
        raise ConfigError("canary.maildir", "missing" if maildir is None else f"{maildir!r} is not an absolute path",
                          "the Maildir the canary address delivers to, on the mail host (in the container for "
                          "docker-mailserver)")
    values: dict[str, Any] = {"maildir": maildir.rstrip("/")}
    values["recipients"] = tuple((domain, _recipient(data.get("recipient", DEFAULT_RECIPIENT), domain, domains))
                                 for domain in domains)
    values["sender_domain"] = hostname(data.get("sender_domain", domains[0]), "canary.sender_domain",
                                       "a domain that resolves, whose DKIM key signs the canary")
    values["helo"] = hostname(data.get("helo", settings.domains[0].primary_mx[0].host), "canary.helo",
                              "the sending host's fully qualified name")
    send_from = data.get("send_from")
    if send_from is not None and (not isinstance(send_from, str) or not send_from):
        raise ConfigError("canary.send_from", f"{send_from!r} is not an inventory host name",
                          "name a host of this inventory with outbound port 25, or leave it out (the mail host)")
    values["send_from"] = send_from
    key, selector = data.get("dkim_key"), data.get("dkim_selector")
    if key is not None:
        values["dkim_key"] = local_path(key, "canary.dkim_key")
        if not isinstance(selector, str) or not re.match(r"^[A-Za-z0-9._-]+$", selector):
            raise ConfigError("canary.dkim_selector", "missing" if selector is None else f"{selector!r} is not a "
                              "DKIM selector", "the selector whose TXT record publishes canary.dkim_key's public key")
        values["dkim_selector"] = selector
    elif selector is not None:
        raise ConfigError("canary.dkim_selector", "set without canary.dkim_key", "add the key or drop the selector")
    for name, default in DEFAULTS.items():
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= LIMITS[name]:
            raise ConfigError(f"canary.{name}", f"{value!r} is not a number of seconds (0-{LIMITS[name]:.0f})")
        values[name] = float(value)
    if data.get("metrics_file") is not None:
        values["metrics_file"] = local_path(data["metrics_file"], "canary.metrics_file")
    return CanarySettings(**values)


def _recipient(value: Any, domain: str, domains: list[str]) -> str:
    """The canary address of ``domain``: ``{domain}`` in the value stands for it."""
    if not isinstance(value, str):
        raise ConfigError("canary.recipient", f"{value!r} is not an address", "e.g. backupmx-canary@{domain}")
    address = value.replace("{domain}", domain)
    local, at, at_domain = address.rpartition("@")
    if not at or not _LOCAL_PART.match(local) or at_domain.lower() != domain:
        where = "" if len(domains) == 1 else " (several domains: write {domain} for the domain part)"
        raise ConfigError("canary.recipient", f"{value!r} is not an address at {domain}{where}",
                          "e.g. backupmx-canary@{domain}, delivered to canary.maildir")
    return address
