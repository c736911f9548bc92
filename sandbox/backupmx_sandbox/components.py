"""The sandbox's parts, in start order.

Each part is a module with ``services(sandbox) -> list[Service]`` (what to run;
writing its config files on the way) and ``world(sandbox) -> dict`` (the keys it
contributes to ``world.json``). A part may ask ``sandbox.port(name)`` for another
part's port: ports are allocated by name, so order only matters for readiness.
The mail host is the native one or the real docker-mailserver (``Sandbox.primary``).
"""

from __future__ import annotations

from types import ModuleType

from backupmx_sandbox import dmshost, dnsapi, mailhost, provider, relayhost, unknown_policy, vault
from backupmx_sandbox.world import Sandbox

MAIL_HOSTS = {"native": mailhost, "docker-mailserver": dmshost}


def parts(sandbox: Sandbox) -> list[ModuleType]:
    # The unknown policy service starts before the docker-mailserver mail host, whose
    # namespace forwards its port; native Postfix asks it only when a layer is on.
    return [dnsapi, vault, unknown_policy, MAIL_HOSTS[sandbox.primary], provider, relayhost]


def service_names(sandbox: Sandbox) -> list[str]:
    return [name for part in parts(sandbox) for name in part.SERVICE_NAMES]
