"""The sandbox's parts, in start order.

Each part is a module with ``services(sandbox) -> list[Service]`` (what to run;
writing its config files on the way) and ``world(sandbox) -> dict`` (the keys it
contributes to ``world.json``). A part may ask ``sandbox.port(name)`` for another
part's port: ports are allocated by name, so order only matters for readiness.
"""

from __future__ import annotations

from backupmx_sandbox import dnsapi, mailhost, provider, relayhost, unknown_policy, vault
from backupmx_sandbox.world import Sandbox

ORDER = [dnsapi, vault, mailhost, unknown_policy, provider, relayhost]


def service_names(sandbox: Sandbox) -> list[str]:
    return [name for component in ORDER for name in component.SERVICE_NAMES]
