"""The per-domain lock itself (backupmx.core.lock), across processes: released when its
holder dies, waited for when asked. Two deploys against the sandbox: tests/cli/test_concurrency.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from backupmx.core import lock
from support.providers import PROJECT_ROOT

HOLD = """
import sys, time
from backupmx.core import lock
lock.acquire(sys.argv[1], ["a.example", "b.example"], "test")
print("held", flush=True)
time.sleep(30)
"""


def test_lock_is_released_when_its_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=PROJECT_ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.LockBusy, match=rf"a\.example is locked by pid {holder.pid} on "):
            lock.acquire(str(tmp_path), ["b.example", "a.example"], "test")
        began = time.monotonic()
        with pytest.raises(lock.LockBusy, match="after waiting 1s"):
            lock.acquire(str(tmp_path), ["a.example"], "test", wait=1)
        assert time.monotonic() - began >= 0.9  # it did wait (how long at most is bench/'s)
    finally:
        holder.kill()
        holder.wait()
    try:
        assert len(lock.acquire(str(tmp_path), ["a.example", "b.example"], "test")) == 2
    finally:
        lock.release_all()


@pytest.mark.parametrize("value", [-1, "10", True, 99999])
def test_lock_wait_must_be_seconds(value):
    with pytest.raises(lock.BackupMXError, match="lock_wait"):
        lock.parse_wait(value)
