"""The failover drill's ``failover`` inventory data of the mail host, validated (docs/failover-drill.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backupmx.core.errors import ConfigError
from backupmx.core.validate import command, host_port, hostname, known_keys
from backupmx.lifecycle.drill.messages import LARGE_BYTES
from backupmx.mailhost.model import MailHost

DEFAULTS = {"probes": 3, "window_seconds": 30, "queue_seconds": 15, "up_seconds": 30, "drain_seconds": 40,
            "poll_seconds": 0.5}
KNOWN = ("stop_command", "start_command", "maildir", "sender_domain", "dkim_key", "dkim_selector", "recipient",
         "probes", "window_seconds", "queue_seconds", "up_seconds", "drain_seconds", "poll_seconds", "up_check",
         "large_message_bytes", "spam_message")


@dataclass(frozen=True)
class FailoverSettings:
    stop_command: tuple[str, ...]
    start_command: tuple[str, ...]
    maildir: str
    sender_domain: str
    dkim_key: str
    dkim_selector: str
    recipient: str
    up_check: str  # "ip:port" on the mail host that must accept once the primary is back
    probes: int = 3
    window_seconds: float = 30
    queue_seconds: float = 15
    up_seconds: float = 30
    drain_seconds: float = 40
    poll_seconds: float = 0.5
    large_message_bytes: int = LARGE_BYTES  # 0: no large message
    spam_message: bool = True
    large_off: str = ""  # why there is no large message when the data did not say 0


def load_failover(data: Any, mailhost: MailHost, domain: str, metered: str = "") -> FailoverSettings:
    """Validate ``host.data.failover`` for one mail host; flavour defaults for docker-mailserver.

    ``metered``: the provider's name when it has a budget (docs/budget.md): then the large
    message is off unless ``large_message_bytes`` asks for one.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("failover", "missing" if data is None else f"must be a mapping, got {type(data).__name__}",
                          "set `failover` on the mail host (docs/failover-drill.md)")
    known_keys(data, "failover", KNOWN)
    values: dict[str, Any] = {}
    if mailhost.is_docker:
        stop = data.get("stop_command", [mailhost.docker, "stop", str(mailhost.container)])
        start = data.get("start_command", [mailhost.docker, "start", str(mailhost.container)])
    else:
        for key in ("stop_command", "start_command"):
            if key not in data:
                raise ConfigError(f"failover.{key}", "missing", "the native flavour needs the command that stops "
                                  "(starts) the primary mail path, e.g. [systemctl, stop, postfix]")
        stop, start = data["stop_command"], data["start_command"]
    values["stop_command"] = command(stop, "failover.stop_command")
    values["start_command"] = command(start, "failover.start_command")
    for key in ("maildir", "sender_domain", "dkim_key", "dkim_selector"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"failover.{key}", "missing" if value is None else f"{value!r} is not a string",
                              "docs/failover-drill.md")
        values[key] = value
    if not values["maildir"].startswith("/"):
        raise ConfigError("failover.maildir", "must be an absolute path on the mail host (in the container)")
    hostname(values["sender_domain"], "failover.sender_domain", "the test sender's domain, whose SPF does not list "
             "the relays (docs/failover-drill.md)")
    recipient = data.get("recipient", f"failover-drill@{domain}")
    if not isinstance(recipient, str) or "@" not in recipient:
        raise ConfigError("failover.recipient", f"{recipient!r} is not an address")
    values["recipient"] = recipient
    up_check = data.get("up_check", mailhost.smtp_probe)
    values["up_check"] = host_port(up_check, "failover.up_check", what="ip:port",
                                   fix="the listener (as reachable on the mail host) that must accept once the "
                                       "primary is back")
    for key, default in DEFAULTS.items():
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"failover.{key}", f"{value!r} is not a positive number")
        values[key] = int(value) if key == "probes" else float(value)
    if values["probes"] > 50:
        raise ConfigError("failover.probes", "at most 50 probes")
    large = data.get("large_message_bytes", 0 if metered else LARGE_BYTES)
    if metered and "large_message_bytes" not in data:
        values["large_off"] = (f"off by default: {metered} is metered (provider.budget); set "
                               "failover.large_message_bytes to send one within this tool's share")
    if isinstance(large, bool) or not isinstance(large, int) or not 0 <= large <= 200_000_000:
        raise ConfigError("failover.large_message_bytes", f"{large!r} is not a size in bytes (0 to 200000000)",
                          f"e.g. {LARGE_BYTES}; 0 sends no large message")
    values["large_message_bytes"] = large
    spam = data.get("spam_message", True)
    if not isinstance(spam, bool):
        raise ConfigError("failover.spam_message", f"{spam!r} is not true or false")
    values["spam_message"] = spam
    return FailoverSettings(**values)


