"""The docker-mailserver world of the tests: a sandbox of its own whose mail host is the real
docker-mailserver 15.1.0 container (``backupmx-sandbox up --primary docker-mailserver``).

It lives beside the session's native world (``<its directory>-dms``), is brought up once
by ``tests/cli/dms/conftest.py`` and taken down at the end unless it was up already (or
``BACKUPMX_KEEP_SANDBOX`` is set). The image is built by ``make test`` before pytest
starts (``make dms-image``), so no test waits for a build.

``inside(world)`` points this process and every command it starts (the pyinfra CLI
through ``inventory/sandbox.py``) at that world.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from backupmx_sandbox.dmshost import TEMPLATES
from backupmx_sandbox.world import sandbox_root

SANDBOX_CLI = str(Path(sys.executable).with_name("backupmx-sandbox"))
SANDBOX_DIR = "BACKUPMX_SANDBOX_DIR"


def dms_root() -> Path:
    return Path(f"{sandbox_root()}-dms")


def sandbox_cli(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([SANDBOX_CLI, *args], env={**os.environ, SANDBOX_DIR: str(root)}, capture_output=True,
                          text=True, timeout=timeout, check=False)


@contextmanager
def inside(world: dict):
    """This process and its children see ``world`` as the sandbox (``BACKUPMX_SANDBOX_DIR``)."""
    before = os.environ.get(SANDBOX_DIR)
    os.environ[SANDBOX_DIR] = world["root"]
    try:
        yield world
    finally:
        if before is None:
            os.environ.pop(SANDBOX_DIR, None)
        else:
            os.environ[SANDBOX_DIR] = before


def in_container(world: dict, *argv: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``argv`` run in the docker-mailserver container (``world["primary"]["exec"]``)."""
    return subprocess.run([*world["primary"]["exec"], *argv], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def recreate(world: dict) -> float:
    """The container removed and run again from the image (a pod rollout); seconds until DMS is up."""
    started = time.monotonic()
    done = subprocess.run(world["primary"]["recreate"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic() - started


def mail_log(world: dict) -> str:
    """docker-mailserver's mail.log (Postfix, rspamd, Dovecot), on the host's volume."""
    path = Path(world["primary"]["mail_log"])
    return path.read_text(errors="replace") if path.exists() else ""


def changedetector_log(world: dict) -> str:
    return in_container(world, "cat", "/var/log/supervisor/changedetector.log").stdout


# The files a deploy writes into the config dir (docs/mailhost.md, "docker-mailserver").
DEPLOYED_FILES = ("postscreen_access.cidr", "rspamd/override.d/settings.conf")


def pristine(world: dict, restart: bool = True) -> bool:
    """The config dir as the sandbox wrote it (no file of a deploy, user-patches.sh without our
    block); the container recreated if anything had to change (``restart``: else the caller's
    next recreate takes it). True if anything did."""
    config = Path(world["primary"]["config_dir"])
    changed = False
    for name in DEPLOYED_FILES:
        if (config / name).exists():
            (config / name).unlink()
            changed = True
    sandbox_patches = (TEMPLATES / "user-patches.sh").read_text()
    if (config / "user-patches.sh").read_text() != sandbox_patches:
        (config / "user-patches.sh").write_text(sandbox_patches)
        changed = True
    if changed and restart:
        recreate(world)
    return changed
