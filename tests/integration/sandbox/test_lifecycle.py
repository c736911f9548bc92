"""`up` is idempotent and `down` leaves no process and no port behind.

On a world of its own (``.sandbox-lifecycle`` beside the session's, ``world.world_dir``):
it takes down only what it brought up, so it runs anywhere in the session, beside the
other workers' worlds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backupmx_sandbox.mailhost import mailhost_paths
from backupmx_sandbox.supervisor import Supervisor, group_alive
from backupmx_sandbox.world import Sandbox, world_dir

SANDBOX_CLI = str(Path(sys.executable).with_name("backupmx-sandbox"))
pytestmark = pytest.mark.lifecycle


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def sandbox_cli(root: Path, command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BACKUPMX_SANDBOX_DIR": str(root)}
    result = subprocess.run([SANDBOX_CLI, command], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


HYPERSCAN_CACHE = (".hs", ".hsmp", ".hsmc", ".unser")


def seed_rspamd_cache(source: Path, target: Path) -> None:
    """A cold rspamd compiles its hyperscan cache into its DBDIR (about 10 s of CPU). The files are
    named by a hash of what they compile, and every world runs the same rspamd config: a new world
    may start from another's (rspamd checks each file and compiles again whatever does not fit)."""
    if not source.is_dir() or any(target.glob("*.hs")):
        return
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.suffix in HYPERSCAN_CACHE and path.is_file():
            shutil.copy2(path, target / path.name)
            os.chown(target / path.name, path.stat().st_uid, path.stat().st_gid)
    os.chown(target, source.stat().st_uid, source.stat().st_gid)


@pytest.fixture
def own():
    """A world directory of this test's own; whatever of it runs at the end is stopped."""
    root = world_dir("lifecycle")
    sandbox = Sandbox(root=root)
    seed_rspamd_cache(mailhost_paths(Sandbox()).rspamd_db, mailhost_paths(sandbox).rspamd_db)
    yield sandbox
    subprocess.run([SANDBOX_CLI, "down"], capture_output=True, timeout=300,
                   env={**os.environ, "BACKUPMX_SANDBOX_DIR": str(sandbox.root)})


def test_up_twice_then_down_twice_leaves_nothing(own):
    supervisor = Supervisor(own)
    sandbox_cli(own.root, "up")
    before = {name: supervisor.pid(name) for name in supervisor.known()}
    assert before and all(before.values())

    sandbox_cli(own.root, "up")
    assert {name: supervisor.pid(name) for name in supervisor.known()} == before, "second up restarted something"

    first = sandbox_cli(own.root, "down")
    stopped = first.stdout.strip().removeprefix("sandbox down: stopped ").split(", ")
    assert set(before) <= set(stopped), first.stdout
    second = sandbox_cli(own.root, "down")
    assert second.stdout.strip() == "sandbox down: stopped nothing (was not running)", second.stdout

    for name, pid in before.items():
        assert not os.path.exists(f"/proc/{pid}") or supervisor.pid(name) is None, name
    assert not [group for group in before.values() if group_alive(group)]
    open_ports = {name: port for name, port in own.ports().items() if listening(port)}
    assert not open_ports

    sandbox_cli(own.root, "up")
    again = {name: supervisor.pid(name) for name in supervisor.known()}
    assert all(again.values())
    sandbox_cli(own.root, "down")
    assert not {name: port for name, port in own.ports().items() if listening(port)}
