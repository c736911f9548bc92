"""`up` is idempotent and `down` leaves no process and no port behind.

Runs last (see conftest): it takes the session's world down.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backupmx_sandbox.supervisor import Supervisor, group_alive

SANDBOX_CLI = str(Path(sys.executable).with_name("backupmx-sandbox"))
pytestmark = pytest.mark.lifecycle


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def sandbox_cli(command: str) -> subprocess.CompletedProcess:
    result = subprocess.run([SANDBOX_CLI, command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_up_twice_then_down_twice_leaves_nothing(world, sandbox):
    supervisor = Supervisor(sandbox)
    before = {name: supervisor.pid(name) for name in supervisor.known()}
    assert before and all(before.values())

    sandbox_cli("up")
    assert {name: supervisor.pid(name) for name in supervisor.known()} == before, "second up restarted something"

    first = sandbox_cli("down")
    stopped = first.stdout.strip().removeprefix("sandbox down: stopped ").split(", ")
    assert set(before) <= set(stopped), first.stdout
    second = sandbox_cli("down")
    assert second.stdout.strip() == "sandbox down: stopped nothing (was not running)", second.stdout

    for name, pid in before.items():
        assert not os.path.exists(f"/proc/{pid}") or supervisor.pid(name) is None, name
    assert not [group for group in before.values() if group_alive(group)]
    open_ports = {name: port for name, port in sandbox.ports().items() if listening(port)}
    assert not open_ports

    sandbox_cli("up")
    again = {name: supervisor.pid(name) for name in supervisor.known()}
    assert all(again.values())
    sandbox_cli("down")
    assert not {name: port for name, port in sandbox.ports().items() if listening(port)}
