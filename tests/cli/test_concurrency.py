"""Two changing runs against the same domain never interleave (backupmx.core.lock).

The CLI tests start one real deploy, wait until it holds the domain's lock, and
start a second: without ``lock_wait`` it fails at once with one line naming the
holder; with ``--data lock_wait=N`` it waits and runs only after the first ended.
Where the second must meet a held lock, the first is paused (SIGSTOP) while it
holds it: on a busy machine the first could otherwise end before the second
starts, and "fails at once" is shown by the second ending while the lock is
still held, not by a wall-clock bound.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backupmx.core import lock
from backupmx_sandbox.seed import DOMAIN
from support.providers import output, pyinfra, start_pyinfra


def lock_file(world) -> Path:
    return lock.lock_path(str(Path(world["root"]) / "state"), DOMAIN)


def wait_until_locked_by(world, pid: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            holder = json.loads(lock_file(world).read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") == pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took the lock {lock_file(world)}")


@dataclass(frozen=True)
class Holder:
    """A deploy that holds the domain's lock: its pid and what it wrote into the lock file."""

    pid: int
    lock: dict


@contextmanager
def paused_holder(world):
    """A deploy paused while it holds the domain's lock; resumed and run to its end after."""
    first = start_pyinfra("deploys/backupmx.py")
    try:
        holder = Holder(first.pid, wait_until_locked_by(world, first.pid))
        os.kill(first.pid, signal.SIGSTOP)
        try:
            yield holder
        finally:
            os.kill(first.pid, signal.SIGCONT)
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err


def test_second_deploy_fails_at_once_naming_the_holder(fresh):
    with paused_holder(fresh) as first:
        # Were the second to wait for the lock, it would wait on a paused holder until its timeout.
        second = pyinfra("deploys/backupmx.py", timeout=60)
    text = output(second)
    assert second.returncode != 0
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1, text
    assert f"{DOMAIN} is locked by pid {first.pid}" in errors[0] and first.lock["who"] in errors[0], errors[0]
    assert "Traceback" not in text and "Starting operation" not in text


def test_rollback_during_a_deploy_is_refused_too(fresh):
    with paused_holder(fresh) as first:
        second = pyinfra("deploys/rollback.py", "--limit", "controller", timeout=60)
    assert second.returncode != 0 and f"{DOMAIN} is locked by pid {first.pid}" in output(second)


def test_lock_wait_makes_the_second_run_wait_for_the_first(fresh):
    first = start_pyinfra("deploys/backupmx.py")
    try:
        wait_until_locked_by(fresh, first.pid)
        second = start_pyinfra("deploys/backupmx.py", "--data", "lock_wait=120")
        out2, err2 = second.communicate(timeout=180)
        second_ended = time.monotonic()
    finally:
        out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, out1 + err1
    assert second.returncode == 0, out2 + err2
    # The second run's stages ran after the first ended: the first published the
    # records, so the second found nothing to do in DNS.
    assert "backup MX records already published" in out2, out2
    assert second_ended > 0


def test_hold_change_during_a_deploy_is_refused_but_status_reads(fresh):
    with paused_holder(fresh) as first:
        change = pyinfra("deploys/maintenance.py", "--limit", "controller", "--data", "hold=on", timeout=60)
        status = pyinfra("deploys/maintenance.py", "--limit", "controller", "--data", "hold=status", timeout=60)
    assert change.returncode != 0 and f"{DOMAIN} is locked by pid {first.pid}" in output(change), output(change)
    assert "Traceback" not in output(change)
    assert status.returncode == 0, output(status)


def test_dry_run_needs_no_lock(fresh):
    with paused_holder(fresh):
        review = pyinfra("deploys/backupmx.py", dry=True, timeout=120)
    assert review.returncode == 0, output(review)
