"""docker-mailserver: what stage 3 changes in the running container, as ``user-patches.sh`` would at
its next start (``postconf`` in the container), so the change is live now and stays after a restart.

All of it goes in one ``docker exec`` (``live_command``): a ``postconf`` per change, in order,
stopping at the first that fails.
"""

from __future__ import annotations

import shlex
from typing import Mapping

from backupmx.mailhost.layers import (
    HOOK,
    RELAY_SMTPD_SERVICE,
    RELAY_SMTPD_TYPE,
    RelayLayers,
    hook_lists,
    hooked_value,
    unhooked_value,
)
from backupmx.mailhost.model import MailHost
from backupmx.postfix.maincf import postfix_list
from backupmx.postfix.mastercf import Listener
from backupmx.postfix.transaction import LiveCommand

Change = tuple[str, tuple[str, ...]]  # (what, postconf argv in the container)


def postconf_argv(mailhost: MailHost, *args: str) -> tuple[str, ...]:
    return ("postconf", "-c", mailhost.postfix_config_dir, *args)


def listener_changes(mailhost: MailHost, listener: Listener, options: Mapping[str, str | None]) -> list[Change]:
    """The listener's ``-o`` overrides as wanted (None: taken away)."""
    changes = []
    for option, value in options.items():
        current = listener.params.get(option)
        name = f"{mailhost.service_key}/{option}"
        if value is None and current is not None:
            changes.append((f"postconf -PX {name}", postconf_argv(mailhost, "-PX", name)))
        elif value is not None and current != value:
            changes.append((f"postconf -P {name}={value}", postconf_argv(mailhost, "-P", f"{name}={value}")))
    return changes


def hook_changes(mailhost: MailHost, main: Mapping[str, str], layers: RelayLayers | None) -> list[Change]:
    """main.cf's lists with the hook where ``layers`` wants it (None: taken out), written as they were."""
    changes = []
    hooked = layers.lists if layers is not None else {}
    for name in hook_lists(main):
        current = main.get(name, "")
        value = hooked_value(current, hooked[name][1]) if name in hooked else unhooked_value(current)
        if postfix_list(value) != postfix_list(current):
            changes.append((f"postconf -e {name}", postconf_argv(mailhost, "-e", f"{name}={value}")))
    if changes and hooked:
        changes.insert(0, (f"postconf -e {HOOK}=", postconf_argv(mailhost, "-e", f"{HOOK}=")))
    elif changes:
        changes.append((f"postconf -X {HOOK}", postconf_argv(mailhost, "-X", HOOK)))
    return changes


def relay_service_changes(mailhost: MailHost, services: Mapping[str, Listener],
                          relay_service: Listener | None) -> list[Change]:
    """The relay smtpd service made (or taken away) as user-patches.sh makes it at start."""
    current = services.get(f"{RELAY_SMTPD_SERVICE}/{RELAY_SMTPD_TYPE}")
    if relay_service is None:
        return [] if current is None else [(f"postconf -MX {current.key}", postconf_argv(mailhost, "-MX", current.key))]
    if current is not None and current.entry() == relay_service.entry() and dict(current.params) == dict(relay_service.params):
        return []
    key = relay_service.key
    changes = [(f"postconf -M {key}", postconf_argv(mailhost, "-M", f"{key}={relay_service.entry()}"))]
    for name, value in relay_service.params.items():
        changes.append((f"postconf -P {key}/{name}", postconf_argv(mailhost, "-P", f"{key}/{name}={value}")))
    return changes


def live_command(mailhost: MailHost, changes: list[Change]) -> LiveCommand:
    """Every change in one ``docker exec``, in order, stopping at the first that fails."""
    script = "\n".join(shlex.join(argv) for _, argv in changes)
    return LiveCommand(f"postconf in container {mailhost.container}", tuple(mailhost.in_target(["sh", "-ec", script])))
