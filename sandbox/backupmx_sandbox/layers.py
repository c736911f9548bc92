"""Layers of a real primary that the tests switch on one at a time in the sandbox primary.

The base stack (``templates/mailhost/main.cf.j2``) is docker-mailserver's. Each layer
here is what an operator (or docker-mailserver's start-up scripts) adds on top, put
where they put it. Switching edits only the sandbox primary's main.cf with ``postconf
-e`` and reloads Postfix; it is idempotent, and ``off`` restores exactly the base
stack's values. ``backupmx-sandbox layer NAME on|off|status`` and ``layer_on`` (a
context manager for tests) use it.

Layers (the parameter each changes):

- ``policyd_spf``: ``check_policy_service unix:private/policyd-spf`` right after
  ``reject_unauth_destination`` in smtpd_recipient_restrictions, as docker-mailserver
  does with ENABLE_POLICYD_SPF=1 (the master.cf service is always there);
- ``unknown_client_hostname``: ``reject_unknown_client_hostname`` at the end of
  smtpd_client_restrictions, where Postfix documents client checks (after
  docker-mailserver's permit_mynetworks/permit_sasl_authenticated, so the machine's
  own clients stay exempt; with smtpd_delay_reject it bites at RCPT);
- ``rbl_client``: ``reject_rbl_client`` of the sandbox DNSBL after
  reject_unauth_destination in smtpd_recipient_restrictions (not an open relay test);
- ``tight_anvil``: connection count 2, connection and message rate 10 a minute: a
  queue drain of 200 messages from one address trips them;
- ``unknown_policy``: ``check_policy_service inet:127.0.0.1:PORT`` to the sandbox's
  unknown policy service (``unknown_policy``), FIRST after reject_unauth_destination.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from backupmx_sandbox import seed, unknown_policy
from backupmx_sandbox.dmshost import DmsSwitches
from backupmx_sandbox.mailhost import BASE_ANVIL, mailhost_paths
from backupmx_sandbox.world import LOOPBACK, Sandbox

ANCHOR = "reject_unauth_destination"


@dataclass(frozen=True)
class Layer:
    name: str
    # (parameter, restriction): inserted after ANCHOR, or appended if the parameter lacks it.
    restriction: tuple[str, str] | None = None
    # Scalar parameters while on, and what the base stack has for them.
    settings: dict[str, str] = field(default_factory=dict)
    base: dict[str, str] = field(default_factory=dict)


def _layers(policy_port: int) -> dict[str, Layer]:
    # In the order they sit after ANCHOR when several are on: the unknown policy first.
    return {layer.name: layer for layer in [
        Layer("unknown_policy",
              ("smtpd_recipient_restrictions", f"check_policy_service inet:{LOOPBACK}:{policy_port}")),
        Layer("policyd_spf", ("smtpd_recipient_restrictions", "check_policy_service unix:private/policyd-spf")),
        Layer("rbl_client", ("smtpd_recipient_restrictions", f"reject_rbl_client {seed.DNSBL_ZONE}")),
        Layer("unknown_client_hostname", ("smtpd_client_restrictions", "reject_unknown_client_hostname")),
        Layer("tight_anvil", settings={
            "smtpd_client_connection_count_limit": "2",
            "smtpd_client_connection_rate_limit": "10",
            "smtpd_client_message_rate_limit": "10",
        }, base=dict(BASE_ANVIL)),
    ]}


NAMES = list(_layers(0))


class Switches:
    """The layers of one sandbox's primary, read and switched through its main.cf."""

    def __init__(self, sandbox: Sandbox):
        self.config_dir = str(mailhost_paths(sandbox).postfix_config)
        self.layers = _layers(sandbox.port(unknown_policy.PORT_NAME))

    def layer(self, name: str) -> Layer:
        if name not in self.layers:
            raise ValueError(f"no layer {name!r}; layers: {', '.join(self.layers)}")
        return self.layers[name]

    def _get(self, parameter: str) -> str:
        return subprocess.run(["postconf", "-c", self.config_dir, "-h", parameter],
                              capture_output=True, text=True, check=True).stdout.strip()

    def _restrictions(self, parameter: str, pending: dict[str, str] | None = None) -> list[str]:
        value = (pending or {}).get(parameter)
        value = self._get(parameter) if value is None else value
        return [item.strip() for item in value.split(",") if item.strip()]

    def is_on(self, name: str) -> bool:
        layer = self.layer(name)
        if layer.restriction:
            parameter, restriction = layer.restriction
            return restriction in self._restrictions(parameter)
        return all(self._get(key) == value for key, value in layer.settings.items())

    def status(self) -> dict[str, bool]:
        return {name: self.is_on(name) for name in self.layers}

    def switch(self, name: str, on: bool) -> bool:
        """Switch ``name`` on or off; True if main.cf changed (then Postfix was reloaded)."""
        return self.set({name: on})

    def set(self, wanted: dict[str, bool]) -> bool:
        """Switch several layers with one main.cf edit and one reload; True if main.cf changed."""
        changes: dict[str, str] = {}
        for name, on in wanted.items():
            layer = self.layer(name)
            if layer.restriction:
                parameter, restriction = layer.restriction
                items = self._restrictions(parameter, changes)
                if on and restriction not in items:
                    items.insert(self._position(items, name, parameter), restriction)
                    changes[parameter] = ", ".join(items)
                elif not on and restriction in items:
                    items.remove(restriction)
                    changes[parameter] = ", ".join(items)
            for key, value in (layer.settings if on else layer.base).items():
                if self._get(key) != value:
                    changes[key] = value
        if changes:
            subprocess.run(["postconf", "-c", self.config_dir, "-e", *(f"{k} = {v}" for k, v in changes.items())],
                           capture_output=True, text=True, check=True)
            self._cool_down()
            subprocess.run(["postfix", "-c", self.config_dir, "reload"], capture_output=True, text=True, check=True)
        return bool(changes)

    def _cool_down(self) -> None:
        """Date main.cf two seconds back. Postfix re-reads a "hot" main.cf (changed within
        the last second) until it cools down, which costs every Postfix command ~2 s
        after an edit; postconf -e writes the file whole (a rename), so nothing can be
        half-written and the wait buys nothing here."""
        main_cf = Path(self.config_dir) / "main.cf"
        past = time.time() - 2
        os.utime(main_cf, (past, past))

    def _position(self, items: list[str], name: str, parameter: str) -> int:
        """After ANCHOR and after the layers that come before ``name`` (else at the end)."""
        if ANCHOR not in items:
            return len(items)
        position = items.index(ANCHOR) + 1
        earlier = [layer.restriction[1] for layer in self.layers.values()
                   if layer.restriction and layer.restriction[0] == parameter
                   and list(self.layers).index(layer.name) < list(self.layers).index(name)]
        while position < len(items) and items[position] in earlier:
            position += 1
        return position


def switches_for(sandbox: Sandbox) -> Switches | DmsSwitches:
    """The layer switches of this sandbox's primary: main.cf (native) or docker-mailserver's knobs."""
    return DmsSwitches(sandbox) if sandbox.primary == "docker-mailserver" else Switches(sandbox)


@contextlib.contextmanager
def layer_on(sandbox: Sandbox, name: str) -> Iterator[None]:
    """``name`` switched on for the ``with`` block; off again after it unless it was on before."""
    switches = switches_for(sandbox)
    was_on = switches.is_on(name)
    switches.switch(name, True)
    try:
        yield
    finally:
        if not was_on:
            switches.switch(name, False)
