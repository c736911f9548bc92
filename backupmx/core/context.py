"""The one per-run state holder, and stage 0 of every run.

pyinfra prepares a deploy file once per host, in parallel greenlets, and runs the
operation bodies again at execution (only then, under ``-y``). What belongs to the
run rather than to one host's pass (the validated settings, the gate report, what a
host's assessment read or planned for the operations that follow) is kept in the
``RunState`` of the run in progress. Where pyinfra is (preparing or executing), which
hosts the run has and how it ended are asked of ``backupmx.core.pyinfra_glue``, the one
module that reaches into pyinfra (tests/unit/test_context_boundary.py keeps it so).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Callable, Hashable, TypeVar

import gevent.lock
from pyinfra import host
from pyinfra.api import DeployError

from backupmx.core.errors import BackupMXError
from backupmx.core.inventory_errors import stop_message
from backupmx.core.keys import check_inventory_keys
from backupmx.core.paths import checkout_problem
from backupmx.core.provider_choice import RELAY_GROUP
from backupmx.core.pyinfra_glue import (
    before_connecting,
    current_inventory,
    current_run_key,
    executing,
    in_a_run,
    inventory_file,
    one_line_error,
    runs_a_deploy_in,
)
from backupmx.core.settings import Settings, load_settings
from backupmx.core.ssh_pins import check_host_key_pin

T = TypeVar("T")
# pyinfra prepares hosts in parallel greenlets; a greenlet switches out during the
# Vault read, so making a per-run value must be serialised or each host would get its own.
_making = gevent.lock.BoundedSemaphore()


class RunState:
    """What one pyinfra run keeps between its hosts' passes and between preparing and executing."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        # (host name, key) -> what that host's pass read or planned while preparing.
        self.memory: dict[tuple[str, Hashable], Any] = {}

    def value(self, name: str, make: Callable[[], T]) -> T:
        """The run's value ``name``, made by ``make`` on first use: once, whichever host asks first.

        ``make`` runs under the one lock, so it must not ask for another run value.
        """
        with _making:
            if name not in self.values:
                self.values[name] = make()
            return self.values[name]


# Keyed weakly by the run: a test (or an API user) may make many runs in one process.
_runs: weakref.WeakKeyDictionary[Any, RunState] = weakref.WeakKeyDictionary()


def run_state() -> RunState:
    """The ``RunState`` of the pyinfra run in progress, made on first use."""
    return _runs.setdefault(current_run_key(), RunState())


def run_value(name: str, make: Callable[[], T]) -> T:
    """The run's value ``name`` (a ``Run``, a ``Rollback``...), made by ``make`` on first use."""
    return run_state().value(name, make)


def once_per_run(name: str, data, make: Callable[[Settings], T]) -> T:
    """The run's value ``name``, made on first use by ``make`` from the validated settings.

    Stage 0 (inventory data validated into ``Settings``) happens here, once, for
    every deploy: bad data becomes one ``DeployError`` line before anything is
    contacted.
    """
    def made() -> T:
        try:
            settings = settings_of(data)
        except BackupMXError as error:
            raise deploy_error(error) from None
        return make(settings)

    return run_value(name, made)


def settings_of(data, inventory=None) -> Settings:
    """Stage 0: ``data`` validated (every host's keys too), with the inventory's relay hosts."""
    inventory = inventory if inventory is not None else current_inventory()
    check_inventory_keys(inventory)
    return load_settings(data, inventory_relays(inventory))


def stage_zero(inventory, limit=None) -> None:
    """Stage 0 before pyinfra connects (``check_before_connecting``): the run's settings, as the
    deploys will load them (from the first host in ``limit``), every host's top-level keys, and
    the known_hosts file each host to connect to pins its key in."""
    hosts = [target for target in inventory if limit is None or target in limit] or list(inventory)
    if not hosts:
        return
    try:
        settings_of(hosts[0].data, inventory)
    except BackupMXError as error:
        raise deploy_error(error, inventory=inventory) from None
    for target in hosts:
        try:
            check_host_key_pin(target.data, target.name)
        except BackupMXError as error:
            raise deploy_error(error, target.name, inventory=inventory) from None


def deploy_error(error: BackupMXError, host_name: str | None = None, inventory=None) -> DeployError:
    """``error`` as the one line the run stops with; bad inventory data names the inventory
    file and the line its key is on, or ``--data KEY`` (``backupmx.core.inventory_errors``)."""
    inventory = inventory if inventory is not None else current_inventory()
    overrides = inventory.get_override_data() if inventory is not None else {}
    return one_line_error(stop_message(error, inventory_file(inventory), overrides, host_name))


def check_before_connecting(check: Callable[[Any, Any], None], deploys_dir: Path) -> None:
    """Run ``check(inventory, limit)`` as soon as pyinfra's CLI has loaded the inventory, before it connects.

    Called from ``config.py``, which the CLI loads before the inventory. Only a run of a
    deploy in ``deploys_dir``: ``debug-inventory``, facts and ad hoc commands are left
    alone. Before anything, the backupmx imported must be that checkout's own
    (``paths.checkout_problem``).
    """
    if not in_a_run() or not runs_a_deploy_in(deploys_dir):
        return
    problem = checkout_problem(deploys_dir.parent)
    if problem:
        raise one_line_error(problem)
    before_connecting(check)


def inventory_relays(inventory) -> dict[str, object]:
    """The inventory's ``relay`` group as ``{name: relayhost data}``: every host, whatever --limit says."""
    return {target.name: target.data.get("relayhost") for target in inventory.get_group(RELAY_GROUP, [])}


# --- what a host's pass keeps for its operations ----------------------------------------


def remember(key: Hashable, value) -> None:
    """Keep ``value`` for the current host's operations while preparing; at execution nothing is kept."""
    if not executing():
        run_state().memory[(host.name, key)] = value


def recall(key: Hashable, keep: bool = False, default=None):
    """What ``remember`` kept under ``key`` for the current host, taken (``keep``: left for
    the pass's other readers); ``default`` if nothing. Whether a value made while
    preparing may still be used is the caller's decision (``executing()``)."""
    memory = run_state().memory
    if keep:
        return memory.get((host.name, key), default)
    return memory.pop((host.name, key), default)


# --- the run's hosts ---------------------------------------------------------------------


def relay_group() -> list | None:
    """The hosts of the inventory's ``relay`` group (whatever --limit says); None outside a pyinfra run."""
    inventory = current_inventory()
    return None if inventory is None else list(inventory.get_group(RELAY_GROUP, []))
