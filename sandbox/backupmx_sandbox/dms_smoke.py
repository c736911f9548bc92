"""Start a built docker-mailserver image once and check that its core services run.

The container is isolated (``--network none``, DMS bound to ``lo``) with the optional
layers off, the way a sandbox world starts it before turning layers on per test.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from backupmx_sandbox.dms_podman import cache_dir, podman

HOSTNAME = "mail.example.test"
# DMS waits for a first account before it starts Dovecot; password "smoke".
ACCOUNT = ("smoke@example.test|{SHA512-CRYPT}$6$backupmxsmoke$8wn7hcNzoNVsYNkClOvkdzRXearM6R4w4732bYaxy"
           "FgRUIRLvz/Sjuh2AGCndYl5HvQB6Pi7PetGUWWXaqBkH0")
ENV = {
    "NETWORK_INTERFACE": "lo", "ENABLE_RSPAMD": "1", "ENABLE_AMAVIS": "0", "ENABLE_CLAMAV": "0",
    "ENABLE_FAIL2BAN": "0", "ENABLE_POSTGREY": "0", "ENABLE_OPENDKIM": "0", "ENABLE_OPENDMARC": "0",
    "ENABLE_POLICYD_SPF": "0", "SPOOF_PROTECTION": "0", "PERMIT_DOCKER": "none", "ENABLE_UPDATE_CHECK": "0",
}
UP_LINE = "is up and running"
MUST_RUN = ("postfix", "rspamd", "changedetector")


def run_smoke(image: str, log: Callable[[str], None] = print, timeout: float = 180.0) -> float:
    """Seconds from ``podman run`` to DMS's "is up and running"; raises RuntimeError (one
    line) when it does not come up, or Postfix, rspamd or the changedetector is not right.
    The container is always removed."""
    name = f"bmx-dms-smoke-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="smoke-config-", dir=cache_dir(), ignore_cleanup_errors=True) as config:
        (Path(config) / "postfix-accounts.cf").write_text(ACCOUNT + "\n")
        started = time.monotonic()
        podman("run", "-d", "--name", name, "--network", "none", "--hostname", HOSTNAME,
               *(f"--env={key}={value}" for key, value in ENV.items()),
               "-v", f"{config}:/tmp/docker-mailserver", image)
        try:
            up = _wait_until_up(name, started, timeout)
            log(f"dms smoke: {name} up in {up:.1f} s")
            for line in _check_services(name):
                log(f"dms smoke: {line}")
        finally:
            podman("rm", "-f", "-t", "2", name, check=False)
    return up


def _wait_until_up(name: str, started: float, timeout: float) -> float:
    while time.monotonic() - started < timeout:
        logs = podman("logs", name, check=False)
        if UP_LINE in logs.stdout + logs.stderr:
            return time.monotonic() - started
        if podman("container", "inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
            said = (logs.stdout + logs.stderr).strip().splitlines()
            raise RuntimeError(f"DMS container {name} exited before it was up: {said[-1] if said else 'no output'}")
        time.sleep(0.5)
    raise RuntimeError(f"DMS container {name} not up after {timeout:.0f} s (see `podman logs {name}`)")


def _check_services(name: str) -> list[str]:
    """What was checked, one line each."""
    version = _exec(name, "postconf", "mail_version")
    configtest = _exec(name, "rspamadm", "configtest")
    status = podman("exec", name, "supervisorctl", "status", check=False).stdout
    running = {line.split()[0] for line in status.splitlines() if " RUNNING " in line}
    missing = [program for program in MUST_RUN if program not in running]
    if missing:
        raise RuntimeError(f"DMS container {name}: not RUNNING under supervisord: {', '.join(missing)}")
    return [version, f"rspamadm configtest: {configtest}", "RUNNING: " + " ".join(sorted(running))]


def _exec(name: str, *command: str) -> str:
    """The command's last line: its verdict on stdout, its complaint on stderr when it failed."""
    result = podman("exec", name, *command, check=False)
    said = result.stdout.strip().splitlines()
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip().splitlines()
        raise RuntimeError(f"DMS container {name}: {' '.join(command)} exited {result.returncode}: "
                           f"{said[-1] if said else 'no output'}")
    return said[-1] if said else ""
