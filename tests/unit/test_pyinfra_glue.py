"""The pyinfra glue (backupmx.core.pyinfra_glue) against pyinfra's own State and a real process:
where the run is, the command line, the end of the run, signals. No host contacted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

from pyinfra.api import DeployError, Inventory
from pyinfra.api.state import StateStage

from backupmx.core import pyinfra_glue as glue
from support.pyinfra_state import make_state, on, reset


def teardown_function():
    reset()


def test_where_pyinfra_is():
    assert not glue.in_a_run() and not glue.executing() and not glue.executing_after_preparing()
    assert glue.current_inventory() is None and glue.inventory_host("mx1") is None
    state = make_state()
    on(state, "mx1")
    assert glue.in_a_run() and glue.inventory_host("mx2").name == "mx2" and glue.inventory_host("nope") is None
    state.is_executing = True
    state.check_for_changes = False  # -y: the bodies run only now
    assert glue.executing() and not glue.executing_after_preparing()
    state.check_for_changes = True
    assert glue.executing_after_preparing()
    state.failed_hosts.add(state.inventory.get_host("mx2"))
    assert glue.failed_host_names() == {"mx2"}


def test_the_command_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "production.py").write_text("")
    monkeypatch.setattr(sys, "argv", ["pyinfra", "inventory/production.py", "deploys/rollback.py", "--dry"])
    inventory = Inventory((["mx1"], {}), production=(["mx1"], {}))
    assert glue.dry_run() and glue.deploy_file() == "deploys/rollback.py"
    assert glue.inventory_file(inventory) == "inventory/production.py"
    monkeypatch.setattr(sys, "argv", ["pyinfra", "mx1.example.org", "deploys/backupmx.py", "-y"])
    assert not glue.dry_run() and glue.inventory_file(inventory) is None  # a host list, no file


def test_the_run_end_as_the_at_exit_report_sees_it(monkeypatch):
    registered, ends = [], []
    monkeypatch.setattr(glue.atexit, "register", registered.append)
    review, live = make_state(), make_state()
    on(review, "mx1")
    glue.at_exit(ends.append)
    on(live, "mx1")
    glue.at_exit(ends.append)
    live.current_stage = StateStage.Execute
    live.failed_hosts.add(live.inventory.get_host("mx2"))
    for report in registered:
        report()
    assert [(end.executed, end.failed_hosts) for end in ends] == [(False, frozenset()), (True, {"mx2"})]
    assert ends[0].group("relay") == {"relay1"} and ends[0].group("nothing") == frozenset()


def test_exit_now_sets_the_status_after_the_program_exited_zero():
    program = ("import atexit, sys\nfrom backupmx.core.pyinfra_glue import exit_now\n"
               "atexit.register(lambda: exit_now(2))\nprint('report', flush=False)\nsys.exit(0)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "report\n")  # and what was printed is not lost


def test_signals_only_flag_while_inside_and_come_back_after():
    flagged = []
    before = signal.getsignal(signal.SIGTERM)
    with glue.flagging_signals(flagged.append):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert flagged == ["SIGTERM", "SIGINT"]  # and the process is still here
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_line_is_a_deploy_error():
    assert isinstance(glue.one_line_error("relay1: no route"), DeployError)


INTERRUPTED_RUN = '''
import atexit, os, signal, sys, weakref
import gevent
from gevent.event import Event

def pyinfra_handler(signum, frame):  # stands in for the pyinfra CLI's own handler
    print("exit 0 by pyinfra", flush=True)
    sys.exit(0)
pyinfra_handler.__module__ = "pyinfra_cli.main"
signal.signal(signal.SIGINT, pyinfra_handler)

import backupmx.core.pyinfra_glue  # a deploy file's import puts the project's handler in place

class Waiting:
    """A host's greenlet left waiting by the interrupt; its clean-up would run at finalization."""
    def __del__(self):
        print("finalization ran", flush=True)

atexit.register(lambda: print("report", flush=True))
left = [Waiting() for _ in range(3)]
waits = [gevent.spawn(Event().wait) for _ in left]
gevent.spawn_later(0.1, os.kill, os.getpid(), signal.SIGINT)
gevent.joinall(waits)
'''


def test_an_interrupted_run_exits_130_right_after_its_reports():
    """Ctrl-C: pyinfra's message, the at-exit reports, exit 130, and nothing after them (the
    interpreter's finalization would wake the greenlets the interrupt left waiting)."""
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_RUN], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (
        glue.EXIT_INTERRUPTED, "Exiting upon user request!\nreport\n", "")


INTERRUPTED_IN_A_THREAD = '''
from gevent import monkey
monkey.patch_all()  # as pyinfra does: threads (paramiko's SSH transports) become greenlets
import atexit, os, signal, sys, threading, time
import gevent

def pyinfra_handler(signum, frame):
    sys.exit(0)
pyinfra_handler.__module__ = "pyinfra_cli.main"
signal.signal(signal.SIGINT, pyinfra_handler)

import backupmx.core.pyinfra_glue

atexit.register(lambda: print("report", flush=True))

def transport():  # busy in Python code when Ctrl-C comes: the handler runs in this greenlet
    os.kill(os.getpid(), signal.SIGINT)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass

thread = threading.Thread(target=transport)
thread.start()
thread.join()
gevent.sleep(0.2)
print("the run went on after the interrupt", flush=True)
'''


def test_a_ctrl_c_that_lands_in_an_ssh_transports_thread_stops_the_run():
    """Seen in the kill sweep: a rollback went on after "Exiting upon user request!" (the exit had
    ended only the transport's thread) and then waited forever on the dead connection."""
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_IN_A_THREAD], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (
        glue.EXIT_INTERRUPTED, "Exiting upon user request!\nreport\n", "")


def test_keep_bytecode_undoes_the_clis_switch(monkeypatch):
    """pyinfra's CLI sets sys.dont_write_bytecode; the project's modules keep their __pycache__ anyway."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    glue.keep_bytecode()
    assert sys.dont_write_bytecode is False


def orders_from(depth: int, state, is_cli: bool) -> tuple[list[int], list[int]]:
    """pyinfra's operation order and the glue's, asked from the same frame ``depth`` calls down."""
    if depth:
        return orders_from(depth - 1, state, is_cli)
    import pyinfra
    from pyinfra.api.util import get_operation_order_from_stack

    cli, pyinfra.is_cli = pyinfra.is_cli, is_cli
    try:
        return get_operation_order_from_stack(state), glue.operation_order(state)
    finally:
        pyinfra.is_cli = cli


def test_the_operation_order_is_pyinfras_without_reading_sources():
    """The line numbers pyinfra orders and hashes operations by: the same list, from the deploy file in."""
    deploy = SimpleNamespace(current_deploy_filename=__file__, current_op_file_number=7)
    for state in (deploy, SimpleNamespace(current_deploy_filename=None, current_op_file_number=0),
                  SimpleNamespace(current_deploy_filename="/not/a/frame.py", current_op_file_number=3)):
        for is_cli in (True, False):
            pyinfras, ours = orders_from(5, state, is_cli)
            assert ours == pyinfras, (state, is_cli)
    assert len(orders_from(5, deploy, True)[1]) > 6  # the op file's number and a line per frame from this file in
    assert orders_from(2, deploy, True)[1] != orders_from(3, deploy, True)[1]  # the depth shows: it can fail
