"""The one module that reaches into pyinfra's internals, its CLI and the process: a pyinfra
upgrade is this file's work (docs/architecture.md, "The pyinfra glue").

Its surface, and what each part borrows:

- where the run is: ``in_a_run``, ``executing``, ``executing_after_preparing``,
  ``current_run_key``, ``current_inventory``, ``inventory_host``, ``active_host_names``,
  ``failed_host_names`` (pyinfra's ``ctx_state`` and ``State`` attributes);
- the command line: ``dry_run``, ``deploy_file``, ``inventory_file``, ``runs_a_deploy_in``
  (pyinfra keeps no flag for ``--dry`` and no inventory path: ``sys.argv`` and click's
  parameters), ``keep_bytecode`` (the CLI's ``sys.dont_write_bytecode``),
  ``quick_operation_order`` (``pyinfra.api.operation``'s ``get_operation_order_from_stack``),
  ``before_connecting`` (wraps this run's ``State.init``: pyinfra has no hook between
  loading the inventory and connecting), ``one_line_error`` (pyinfra_cli's ``CliError``,
  printed as it is);
- the end of the run: ``at_exit`` with a ``RunEnd`` (``atexit``; the results pyinfra's
  own table reads: ``State.ops``, ``op_meta``, ``get_op_order``), ``EXIT_INTERRUPTED``
  (SIGINT answered with 130 instead of the CLI's 0), ``exit_now`` (``os._exit``: the only
  way to set the status once the CLI has exited);
- signals: ``flagging_signals`` (SIGINT/SIGTERM call a function instead of stopping),
  ``stop_the_run`` (a signal's exit raised in the main greenlet, not the one it lands in);
- the SSH connection: ``ssh_connected`` (the connector's paramiko client),
  ``print_output`` (pyinfra's printer of a command's combined output).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import greenlet
import pyinfra
from pyinfra.api import DeployError
from pyinfra.api import operation as pyinfra_operation
from pyinfra.api.state import StateStage
from pyinfra.api.util import PYINFRA_INSTALL_DIR, print_host_combined_output
from pyinfra.context import ctx_state

# --- where the run is -----------------------------------------------------------------


def in_a_run() -> bool:
    """A pyinfra run is in progress (not a bare call of an operation's body, as a unit test makes)."""
    return ctx_state.get() is not None


def current_run_key() -> Any:
    """An object that stands for the run in progress (its ``State``), for per-run values keyed weakly."""
    return ctx_state.get()


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


def current_inventory():
    """The inventory of the run in progress; None outside a run."""
    state = ctx_state.get()
    return getattr(state, "inventory", None) if state is not None else None


def inventory_host(name: str):
    """The inventory's host ``name`` (whatever --limit says); None if it has none or outside a run."""
    inventory = current_inventory()
    return inventory.get_host(name, None) if inventory is not None else None


def active_host_names() -> set[str]:
    """The hosts still taking part in the run (connected, not failed)."""
    return {target.name for target in current_inventory().get_active_hosts()}


def failed_host_names() -> set[str]:
    """The hosts pyinfra gave up on in this run (unreachable, or an operation failed)."""
    return {target.name for target in getattr(ctx_state.get(), "failed_hosts", set()) or ()}


# --- the command line -------------------------------------------------------------------


def dry_run() -> bool:
    """Whether the pyinfra CLI was started with ``--dry`` (pyinfra keeps no flag for it)."""
    return "--dry" in sys.argv[1:]


def deploy_file() -> str:
    """The deploy file this process runs (``deploys/backupmx.py``), or the program's name outside one."""
    files = [arg for arg in sys.argv[1:] if arg.endswith(".py") and arg.startswith("deploys/")]
    return files[0] if files else Path(sys.argv[0]).name


def inventory_file(inventory) -> str | None:
    """The inventory file of this pyinfra run, as given on its command line; None if none (API, a host list).

    pyinfra keeps no path, but names a group after the file (``inventory/production.py``: ``production``).
    """
    groups = set(getattr(inventory, "groups", None) or ())
    for arg in sys.argv[1:]:
        if arg.endswith(".py") and Path(arg).stem in groups and Path(arg).is_file():
            return arg
    return None


def runs_a_deploy_in(deploys_dir: Path) -> bool:
    """The pyinfra CLI was asked to run a deploy file of ``deploys_dir`` (not facts, not an ad hoc command)."""
    context = click.get_current_context(silent=True)
    operations = context.params.get("operations", ()) if context is not None else ()
    return any(str(op).endswith(".py") and Path(op).resolve().parent == deploys_dir.resolve() for op in operations)


def keep_bytecode() -> None:
    """Let the project's modules keep their compiled bytecode (``__pycache__``) across runs.

    pyinfra's CLI turns writing it off for the whole process (a deploy file's directory
    gets no ``__pycache__``; deploy, config and inventory files are compiled by the CLI
    itself either way), so every module a run imports after an edit, or in a fresh
    checkout, was compiled from source on every run: about a hundred modules, a tenth
    of a no-op run's CPU.
    """
    sys.dont_write_bytecode = False


def quick_operation_order() -> None:
    """Give pyinfra the order of each operation call without reading the source of every frame.

    pyinfra's CLI orders operations (and names them, in their hash) by the line numbers of
    the calling frames, from ``inspect.stack()``, which opens the source of each frame of the
    stack to quote a line nobody reads: a few milliseconds per operation call, most of the
    order's cost. ``operation_order`` gives the same numbers from the frames alone.
    """
    pyinfra_operation.get_operation_order_from_stack = operation_order


def operation_order(state) -> list[int]:
    """``pyinfra.api.util.get_operation_order_from_stack``'s answer: the line numbers of the calling
    frames from the deploy file inwards, pyinfra's own frames left out."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    first = 0
    if state.current_deploy_filename:  # no frame of it: pyinfra keeps only its own frame, which it leaves out
        first = next((index for index, frame in enumerate(frames)
                      if frame.f_code.co_filename == state.current_deploy_filename), len(frames))
    numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    return numbers + [frame.f_lineno for frame in frames[first:]
                      if not frame.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)]


def before_connecting(check: Callable[[Any, Any], None]) -> bool:
    """Make the run in progress call ``check(inventory, limit)`` once its inventory is loaded, before it
    connects to any host; False outside a run.

    pyinfra has no hook there, so this run's ``State.init`` (this state's only) calls ``check`` first.
    """
    state = ctx_state.get()
    if state is None:
        return False
    init = state.init

    def check_then_init(inventory, config=None, initial_limit=None):
        check(inventory, initial_limit)
        return init(inventory, config, initial_limit=initial_limit)

    state.init = check_then_init
    return True


def one_line_error(message: str) -> DeployError:
    """A ``DeployError`` that pyinfra's CLI prints as one line, "pyinfra error: <message>".

    Under the CLI it is also pyinfra_cli's ``CliError``, which the CLI shows as it is
    instead of naming the code it came from. pyinfra_cli is only asked for when the
    CLI has loaded it (importing it patches the standard library for gevent).
    """
    cli = sys.modules.get("pyinfra_cli.exceptions")
    if cli is None:
        return DeployError(message)
    return _one_line_class(cli.CliError)(message)


_one_line_classes: dict[type, type] = {}


def _one_line_class(cli_error: type) -> type:
    if cli_error not in _one_line_classes:
        def __init__(self, message: str) -> None:
            cli_error.__init__(self, message)

        _one_line_classes[cli_error] = type("StopError", (DeployError, cli_error), {
            "__init__": __init__, "__str__": lambda self: self.message, "__module__": __name__})
    return _one_line_classes[cli_error]


# --- the end of the run -------------------------------------------------------------------


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


def exit_now(code: int) -> None:
    """End the process with ``code`` from an at-exit report.

    pyinfra's CLI has already called ``sys.exit(0)`` when at-exit handlers run; only
    ``os._exit`` can still change the status, so flush what the others would.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


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
        stop_the_run(EXIT_INTERRUPTED)

    try:
        signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread
        return
    _interrupt["installed"] = True
    # Registered before any at-exit report, so it runs after them all.
    atexit.register(_end_an_interrupted_run)


def stop_the_run(code: int) -> None:
    """``sys.exit(code)`` in the run's main greenlet, wherever the signal handler runs.

    Python runs a signal handler in whichever greenlet is current. Under gevent that may
    be a host's greenlet or an SSH transport's thread (a greenlet too), and a SystemExit
    raised there ends only it: threading drops a thread's SystemExit without a word. The
    run then went on, its next operation waiting forever on the dead transport.
    """
    current = main = greenlet.getcurrent()
    while main.parent is not None:
        main = main.parent
    if current is main:
        sys.exit(code)
    main.throw(SystemExit(code))


def _end_an_interrupted_run() -> None:
    """A run stopped by Ctrl-C ends here, once its reports are printed, before the interpreter's
    finalization: that would wake the greenlets the interrupt left waiting on a host or a probe,
    and gevent answers with "greenlet is being finalized" tracebacks, or a wait that never ends."""
    if _interrupt["seen"]:
        exit_now(EXIT_INTERRUPTED)


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


# --- signals --------------------------------------------------------------------------------


@contextlib.contextmanager
def flagging_signals(flag: Callable[[str], None]) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM call ``flag(signal name)`` instead of stopping the process;
    the previous handlers come back after. Outside the main thread nothing is changed."""
    def handle(signum, frame) -> None:
        flag(signal.Signals(signum).name)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handle)
        except ValueError:  # not the main thread: nothing to guard
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- the SSH connection -----------------------------------------------------------------------


def ssh_connected(host) -> bool:
    """Whether the host's SSH transport is still up (other connectors: assumed so)."""
    client = getattr(host.connector, "client", None)
    if client is None or not hasattr(client, "get_transport"):
        return True
    transport = client.get_transport()
    return transport is not None and transport.is_active()


def print_output(host, output) -> None:
    """A command's output as pyinfra prints it for a failed operation (stdout and stderr, in order)."""
    print_host_combined_output(host, output)


# From the moment a deploy file imports this module (pyinfra loads it while preparing).
_exit_non_zero_on_interrupt()
