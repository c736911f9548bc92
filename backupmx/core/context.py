"""The one per-run state holder over pyinfra's context.

pyinfra prepares a deploy file once per host, in parallel greenlets, and runs it
again at execution. What belongs to the run, not to a host (the validated settings,
the gate report, plan caches), is kept here per pyinfra ``State``.
"""

from __future__ import annotations

import weakref
from typing import Callable, TypeVar

import gevent.lock
from pyinfra.api import DeployError
from pyinfra.context import ctx_state

from backupmx.core.errors import BackupMXError
from backupmx.core.settings import RELAY_GROUP, Settings, check_inventory_keys, load_settings

T = TypeVar("T")
# pyinfra prepares hosts in parallel greenlets; a greenlet switches out during the
# Vault read, so making a per-run object must be serialised or each host would get its own.
_runs_lock = gevent.lock.BoundedSemaphore()


def once_per_state(registry: weakref.WeakKeyDictionary, data, make: Callable[[Settings], T]) -> T:
    """The object ``registry`` holds for the pyinfra state being prepared, made on first use.

    Stage 0 (inventory data validated into ``Settings``) happens here, once, for
    every deploy: bad data becomes one ``DeployError`` line before anything is
    contacted. Serialised, because hosts are prepared in parallel greenlets.
    """
    state = ctx_state.get()
    with _runs_lock:
        made = registry.get(state)
        if made is None:
            try:
                check_inventory_keys(state.inventory)
                settings = load_settings(data, inventory_relays(state.inventory))
            except BackupMXError as error:
                raise DeployError(str(error)) from None
            made = registry[state] = make(settings)
    return made


def inventory_relays(inventory) -> dict[str, object]:
    """The inventory's ``relay`` group as ``{name: relayhost data}``: every host, whatever --limit says."""
    return {target.name: target.data.get("relayhost") for target in inventory.get_group(RELAY_GROUP, [])}


def settings_of(data) -> Settings:
    """Stage 0 for a deploy that needs no run: ``data`` validated, with the inventory's relay hosts."""
    inventory = ctx_state.get().inventory
    check_inventory_keys(inventory)
    return load_settings(data, inventory_relays(inventory))


