"""The one per-run state holder, and the only module that touches pyinfra's context.

pyinfra prepares a deploy file once per host, in parallel greenlets, and runs the
operation bodies again at execution (only then, under ``-y``). What belongs to the
run rather than to one host's pass (the validated settings, the gate report, what a
host's assessment read or planned for the operations that follow) is kept in the
``RunState`` of the pyinfra ``State`` being run. Whether pyinfra is preparing or
executing, which hosts the run has and how it ended are asked here as well, so
tests/unit/test_context_boundary.py can keep every other module off pyinfra's context.
"""

from __future__ import annotations

import atexit
import signal
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, TypeVar

import click
import gevent.lock
from pyinfra import host
from pyinfra.api import DeployError
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_state

from backupmx.core.errors import BackupMXError
from backupmx.core.inventory_errors import inventory_file, stop_error, stop_message
from backupmx.core.keys import check_inventory_keys
from backupmx.core.paths import checkout_problem
from backupmx.core.provider_choice import RELAY_GROUP
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


# Keyed weakly: a test (or an API user) may make many States in one process.
_runs: weakref.WeakKeyDictionary[Any, RunState] = weakref.WeakKeyDictionary()


def run_state() -> RunState:
    """The ``RunState`` of the pyinfra run in progress, made on first use."""
    return _runs.setdefault(ctx_state.get(), RunState())


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
    inventory = inventory if inventory is not None else ctx_state.get().inventory
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
    if inventory is None:
        state = ctx_state.get()
        inventory = getattr(state, "inventory", None) if state is not None else None
    overrides = inventory.get_override_data() if inventory is not None else {}
    return stop_error(stop_message(error, inventory_file(inventory), overrides, host_name))


def check_before_connecting(check: Callable[[Any, Any], None], deploys_dir: Path) -> None:
    """Run ``check(inventory, limit)`` as soon as pyinfra's CLI has loaded the inventory, before it connects.

    Called from ``config.py``, which the CLI loads before the inventory; pyinfra has no
    hook between loading the inventory and connecting, so the run's ``State.init`` (on
    this run's state only) calls ``check`` first. Only a run of a deploy in
    ``deploys_dir``: ``debug-inventory``, facts and ad hoc commands are left alone. Before
    anything, the backupmx imported must be that checkout's own (``paths.checkout_problem``).
    """
    state = ctx_state.get()
    if state is None or not _runs_a_deploy_of(deploys_dir):
        return
    problem = checkout_problem(deploys_dir.parent)
    if problem:
        raise stop_error(problem)
    init = state.init

    def check_then_init(inventory, config=None, initial_limit=None):
        check(inventory, initial_limit)
        return init(inventory, config, initial_limit=initial_limit)

    state.init = check_then_init


def _runs_a_deploy_of(deploys_dir: Path) -> bool:
    context = click.get_current_context(silent=True)
    operations = context.params.get("operations", ()) if context is not None else ()
    return any(str(op).endswith(".py") and Path(op).resolve().parent == deploys_dir.resolve() for op in operations)


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


# --- where pyinfra is ----------------------------------------------------------------


def in_a_run() -> bool:
    """A pyinfra run is in progress (not a bare call of an operation's body, as a unit test makes)."""
    return ctx_state.get() is not None


def executing() -> bool:
    """pyinfra is executing the operations (not preparing them)."""
    state = ctx_state.get()
    return state is not None and state.is_executing


def executing_after_preparing() -> bool:
    """Executing, and the operation bodies already ran while preparing (not under ``-y``).

    What a body showed or planned then is not shown or reused again: execution may
    come long after (a prompt), and the --dry review already printed it.
    """
    state = ctx_state.get()
    return state is not None and state.is_executing and state.should_check_for_changes()


def relay_group() -> list | None:
    """The hosts of the inventory's ``relay`` group (whatever --limit says); None outside a pyinfra run."""
    state = ctx_state.get()
    if state is None:
        return None
    return list(state.inventory.get_group(RELAY_GROUP, []))


def inventory_host(name: str):
    """The inventory's host ``name`` (whatever --limit says); None if it has none or outside a run."""
    state = ctx_state.get()
    if state is None:
        return None
    return state.inventory.get_host(name, None)


def active_host_names() -> set[str]:
    """The hosts still taking part in the run (connected, not failed)."""
    return {target.name for target in ctx_state.get().inventory.get_active_hosts()}


def failed_host_names() -> set[str]:
    """The hosts pyinfra gave up on in this run (unreachable, or an operation failed)."""
    return {target.name for target in getattr(ctx_state.get(), "failed_hosts", set()) or ()}


# --- the end of the run ----------------------------------------------------------------


@dataclass(frozen=True)
class OperationEnd:
    """How one operation of the run ended, per host (as pyinfra's results table counts it)."""

    name: str
    changed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    not_run: tuple[str, ...] = ()  # its host failed (or the run stopped) before it


@dataclass(frozen=True)
class RunEnd:
    """How the pyinfra run ended, as an at-exit report sees it."""

    executed: bool  # execution started: not a --dry review, not stopped while preparing
    interrupted: bool = False  # stopped by Ctrl-C (SIGINT): what ran may be partial
    failed_hosts: frozenset[str] = frozenset()
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    operations: tuple[OperationEnd, ...] = ()  # in the run's order; only when executed

    def group(self, name: str) -> frozenset[str]:
        return self.groups.get(name, frozenset())


def at_exit(report: Callable[[RunEnd], None]) -> None:
    """Call ``report`` with the run's ``RunEnd`` at interpreter exit, whatever happened.

    pyinfra stops running a failed host's operations, so a report printed by the
    last operation could be missing; at exit every outcome is known.
    """
    state_ref = weakref.ref(ctx_state.get())
    _exit_non_zero_on_interrupt()
    atexit.register(lambda: report(_run_end(state_ref())))


# Exit status of a run stopped by Ctrl-C (SIGINT), as a shell reports one: 128 + 2.
EXIT_INTERRUPTED = 130
_interrupt = {"seen": False, "installed": False}


def _exit_non_zero_on_interrupt() -> None:
    """pyinfra's CLI answers Ctrl-C with "Exiting upon user request!" and exit 0, so a cancelled
    CI job or an interrupted rollback would read as success: the same message, exit 130."""
    if _interrupt["installed"]:
        return
    previous = signal.getsignal(signal.SIGINT)
    if getattr(previous, "__module__", "") != "pyinfra_cli.main":
        return  # not the pyinfra CLI (pyinfra's API in a test): leave SIGINT alone

    def interrupted(signum, frame):
        _interrupt["seen"] = True
        click.echo("Exiting upon user request!")
        sys.exit(EXIT_INTERRUPTED)

    try:
        signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread
        return
    _interrupt["installed"] = True


def _run_end(state) -> RunEnd:
    if state is None:
        return RunEnd(executed=False, interrupted=_interrupt["seen"])
    executed = state.current_stage >= StateStage.Execute
    return RunEnd(
        executed=executed,
        interrupted=_interrupt["seen"],
        failed_hosts=frozenset(target.name for target in state.failed_hosts),
        groups={name: frozenset(target.name for target in targets)
                for name, targets in state.inventory.groups.items()},
        operations=_operation_ends(state) if executed else (),
    )


def _operation_ends(state) -> tuple[OperationEnd, ...]:
    """Each operation's hosts by outcome, read as pyinfra's own results table reads them."""
    ends = []
    try:
        order = state.get_op_order()
    except Exception:  # an order pyinfra cannot give (a run stopped early): no per-operation view
        return ()
    for op_hash in order:
        changed, failed, not_run = [], [], []
        for target in state.inventory.iter_activated_hosts():
            if op_hash not in state.ops[target]:
                continue
            meta = state.ops[target][op_hash].operation_meta
            if not meta.is_complete():
                not_run.append(target.name)
            elif not meta.did_succeed(_raise_if_not_complete=False):
                failed.append(target.name)
            elif meta.did_change():
                changed.append(target.name)
        names = ", ".join(sorted(state.op_meta[op_hash].names)) or op_hash
        ends.append(OperationEnd(names, tuple(changed), tuple(failed), tuple(not_run)))
    return tuple(ends)


# From the moment a deploy file imports this module (pyinfra loads it while preparing).
_exit_non_zero_on_interrupt()
