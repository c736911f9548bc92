"""Per-domain run locks on the control machine: two changing runs never interleave.

A deploy that changes things (``deploys/backupmx.py``, ``deploys/rollback.py``)
takes an exclusive ``fcntl.flock`` on ``<state_dir>/locks/<domain>.lock`` for every
domain of its inventory, in sorted order (no deadlock between two inventories
sharing a domain), before its first stage that reads state to change it, and
holds it until the process exits (the kernel drops a flock when its holder dies,
so a crashed run never leaves a stale lock). The holder writes who it is into the
file, so the second run fails at once with one line naming pid, user@host, deploy
and start time; with ``--data lock_wait=N`` it waits up to N seconds instead.

``--dry`` runs take no lock: they change nothing, and a review must stay possible
while a deploy runs. The lock is on the control machine only: two operators on
two controllers are not serialised by it (docs/reliability.md).
"""

from __future__ import annotations

import datetime
import fcntl
import getpass
import json
import os
import socket
import time
from pathlib import Path

from backupmx.core.errors import BackupMXError
from backupmx.core.progress import Progress

MAX_WAIT_SECONDS = 3600
POLL_SECONDS = 0.2

# Locks held by this process: path -> open file (kept open until exit).
_held: dict[str, object] = {}


class LockBusy(BackupMXError):
    """Another run holds the lock of a domain."""


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def parse_wait(value) -> float:
    """``--data lock_wait=N``: seconds to wait for a busy lock (0, the default: fail at once)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT_SECONDS:
        raise BackupMXError(f"--data lock_wait={value!r}: a number of seconds 0-{MAX_WAIT_SECONDS}")
    return float(value)


def lock_path(state_dir: str, domain: str) -> Path:
    return Path(state_dir) / "locks" / f"{domain}.lock"


def _holder(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "another run (holder unknown)"
    return (f"pid {info.get('pid')} on {info.get('who')} ({info.get('deploy')}) since {info.get('since')}")


def acquire(state_dir: str, domains: list[str], deploy: str, wait: float = 0.0,
            sleep=time.sleep, clock=time.monotonic, log=None) -> list[Path]:
    """Lock every domain (sorted); raise ``LockBusy`` naming the holder if one stays busy past ``wait``.

    ``log``: where a longer wait says whom it waits for (``backupmx.core.progress``).
    """
    taken: list[Path] = []
    for domain in sorted(set(domains)):
        path = lock_path(state_dir, domain)
        if str(path) in _held:
            taken.append(path)
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 (held open until exit)
        except OSError as error:
            raise BackupMXError(f"lock {path}: cannot open ({error.strerror}); check state_dir") from None
        deadline = clock() + wait
        progress = None
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() >= deadline:
                    holder = _holder(handle)
                    handle.close()
                    if progress is not None:
                        progress.end()
                    waited = f" after waiting {wait:.0f}s" if wait else ""
                    raise LockBusy(f"{domain} is locked by {holder}{waited}: another backupmx run is changing it; "
                                   f"let it finish (or run again with --data lock_wait=SECONDS); lock file {path}"
                                   ) from None
                if progress is None:
                    progress = Progress(f"lock {domain}: waiting for {_holder(handle)} to finish", wait,
                                        log or (lambda line: None), clock=clock)
                progress.update()
                sleep(POLL_SECONDS)
        if progress is not None:
            progress.end()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "who": who(), "deploy": deploy,
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }))
        handle.flush()
        _held[str(path)] = handle
        taken.append(path)
    return taken


def release_all() -> None:
    """Drop every lock this process holds (tests; a CLI run just exits)."""
    for handle in _held.values():
        try:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
        except (OSError, ValueError):
            pass
    _held.clear()
