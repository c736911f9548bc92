"""Two changing runs against the same domain never interleave (backupmx.core.lock).

The CLI tests start one real deploy, wait until it holds the domain's lock, and
start a second: without ``lock_wait`` it fails at once with one line naming the
holder; with ``--data lock_wait=N`` it waits and runs only after the first ended.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from backupmx.core import lock
from backupmx_sandbox.seed import DOMAIN
from providerkit import output, pyinfra, start_pyinfra


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


def test_second_deploy_fails_at_once_naming_the_holder(fresh):
    first = start_pyinfra("deploys/backupmx.py")
    try:
        holder = wait_until_locked_by(fresh, first.pid)
        began = time.monotonic()
        second = pyinfra("deploys/backupmx.py", timeout=60)
        took = time.monotonic() - began
        first_still_running = first.poll() is None
    finally:
        out, err = first.communicate(timeout=120)
    text = output(second)
    assert second.returncode != 0
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1, text
    assert f"{DOMAIN} is locked by pid {first.pid}" in errors[0] and holder["who"] in errors[0], errors[0]
    assert "Traceback" not in text and "Starting operation" not in text
    assert first_still_running and took < 10
    assert first.returncode == 0, out + err


def test_rollback_during_a_deploy_is_refused_too(fresh):
    first = start_pyinfra("deploys/backupmx.py")
    try:
        wait_until_locked_by(fresh, first.pid)
        second = pyinfra("deploys/rollback.py", "--limit", "controller", timeout=60)
    finally:
        out, err = first.communicate(timeout=120)
    assert second.returncode != 0 and f"{DOMAIN} is locked by pid {first.pid}" in output(second)
    assert first.returncode == 0, out + err


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
    first = start_pyinfra("deploys/backupmx.py")
    try:
        wait_until_locked_by(fresh, first.pid)
        change = pyinfra("deploys/maintenance.py", "--limit", "controller", "--data", "hold=on", timeout=60)
        status = pyinfra("deploys/maintenance.py", "--limit", "controller", "--data", "hold=status", timeout=60)
    finally:
        out, err = first.communicate(timeout=120)
    assert change.returncode != 0 and f"{DOMAIN} is locked by pid {first.pid}" in output(change), output(change)
    assert "Traceback" not in output(change)
    assert status.returncode == 0, output(status)
    assert first.returncode == 0, out + err


def test_dry_run_needs_no_lock(fresh):
    first = start_pyinfra("deploys/backupmx.py")
    try:
        wait_until_locked_by(fresh, first.pid)
        review = pyinfra("deploys/backupmx.py", dry=True, timeout=120)
    finally:
        first.communicate(timeout=120)
    assert review.returncode == 0, output(review)
