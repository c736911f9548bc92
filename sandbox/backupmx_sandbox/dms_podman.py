"""Running podman the way it works on the project's machines, and where its work lives.

The machines have cgroup v1 ("hybrid"), where crun fails, and a hard RLIMIT_NOFILE
that podman's default ulimits exceed; a containers.conf of our own fixes both for
every podman call without flags. ``dms_image`` re-exports ``cache_dir`` and
``podman_env``: that is where callers should take them from.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONTAINERS_CONF = """\
# Written by backupmx_sandbox (dms_podman.py); rewritten when it differs.
[containers]
# podman's default nofile ulimit is above what this machine lets root raise it to.
default_ulimits = []

[engine]
# crun refuses cgroup v1 hybrid mode; runc runs there.
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def cache_dir() -> Path:
    """Where built images' inputs, build logs and podman's config live: never the checkout.

    ``$BACKUPMX_CACHE_DIR`` if set, else ``/var/cache/backupmx-sandbox`` for root and
    ``~/.cache/backupmx-sandbox`` for anyone else. Created on first use.
    """
    chosen = os.environ.get("BACKUPMX_CACHE_DIR")
    if chosen:
        path = Path(chosen)
    elif os.geteuid() == 0:
        path = Path("/var/cache/backupmx-sandbox")
    else:
        path = Path.home() / ".cache" / "backupmx-sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def podman_env() -> dict[str, str]:
    """``os.environ`` plus ``CONTAINERS_CONF`` naming the containers.conf this module keeps."""
    conf = cache_dir() / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        tmp = conf.with_name(conf.name + ".tmp")
        tmp.write_text(CONTAINERS_CONF)
        os.replace(tmp, conf)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with ``podman_env()``, capturing text output unless told otherwise.

    With ``check`` a non-zero exit raises RuntimeError carrying podman's own last line,
    which names the cause far better than the exit status does.
    """
    if shutil.which("podman") is None:
        raise RuntimeError("podman is not installed (`make demo` does without it): `make dms-image` installs it "
                           "and builds the docker-mailserver image")
    kwargs.setdefault("capture_output", "stdout" not in kwargs and "stderr" not in kwargs)
    result = subprocess.run(["podman", *args], env=podman_env(), text=True, **kwargs)
    if check and result.returncode != 0:
        said = (result.stderr or result.stdout or "").strip().splitlines()
        raise RuntimeError(f"podman {args[0]} failed ({result.returncode}): {said[-1] if said else 'no output'}")
    return result


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``cache_dir()/NAME.lock``: two sessions (or a test
    suite's workers) asking for the same image build it once, not twice at once."""
    with open(cache_dir() / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# Progress chatter of debootstrap and podman build: never the reason a step failed.
_NOISE = re.compile(
    r"^(STEP \d+/\d+|--> |COMMIT|Storing signatures|Copying (blob|config)|Writing manifest"
    r"|Successfully tagged|I: |[0-9a-f]{64}$)"
)
# podman build's closing line only names the step; the line before it says why.
_TRAILER = re.compile(r"(error )?building at STEP|exit status \d+$")


def last_meaningful_line(log_file: Path) -> str:
    """The line of a build log most likely to say why it failed."""
    lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln and not _NOISE.match(ln)]
    if not lines:
        return "no output"
    if _TRAILER.search(lines[-1]) and len(lines) > 1:
        return f"{lines[-2]} ({lines[-1]})"
    return lines[-1]


def run_logged(argv: list[str], log_file: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run ``argv`` with all its output in ``log_file``; on failure raise one RuntimeError
    line naming ``what`` failed, the log file, and the log's last meaningful line."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        returncode = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env).returncode
    if returncode != 0:
        raise RuntimeError(f"{what} failed (exit {returncode}), log {log_file}: {last_meaningful_line(log_file)}")
