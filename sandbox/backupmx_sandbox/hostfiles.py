"""Pieces every sandbox host is built from: its config files written so that ``up`` never
undoes the product's work (``install_file``), its directories owned as the daemons
demand, Jinja2 templates, and whether a TCP port listens yet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from backupmx_sandbox.world import LOOPBACK

log = logging.getLogger(__name__)


# --- writing files ------------------------------------------------------------


def render_template(template: str, templates: Path, **values) -> str:
    env = Environment(
        loader=FileSystemLoader(templates),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(template).render(**values)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` unless someone else has edited the file since we wrote it.

    The digest of what we last wrote sits in ``.<name>.sandbox-sha256`` next to it.
    A file that no longer matches it was changed by the product (e.g. the relay
    whitelist in master.cf) and is left alone, so ``up`` never reverts a deploy.
    """
    stamp = path.with_name(f".{path.name}.sandbox-sha256")
    wanted = text.encode()
    if path.exists():
        current = path.read_bytes()
        if current == wanted:
            _ensure_mode(path, mode)
            return
        if not stamp.exists() or stamp.read_text().strip() != _digest(current):
            log.info("mailhost: keeping %s (changed since the sandbox wrote it; delete it to reset)", path)
            return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(wanted)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    stamp.write_text(_digest(wanted) + "\n")


def _ensure_mode(path: Path, mode: int) -> None:
    if path.stat().st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def private_dir(path: Path, owner: str | int, group: str | int, mode: int = 0o750) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, owner, group)
    os.chmod(path, mode)
    return path


def root_dir(path: Path, mode: int = 0o755) -> Path:
    """A root-owned directory that is not group/world-writable (sshd and Postfix check)."""
    return private_dir(path, 0, 0, mode)


# --- readiness --------------------------------------------------------------------


def listening(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP socket listens on host:port, read from /proc without connecting.

    Connecting would cost a log line per poll (sshd "[preauth]", postscreen "lost
    connection" while it waits for a PROXY header); /proc/net/tcp shows LISTEN
    sockets (state 0A) directly.
    """
    wanted = f"{_proc_ipv4(host)}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(fields[1] == wanted and fields[3] == "0A" for fields in (line.split() for line in lines))


def _proc_ipv4(host: str) -> str:
    return "".join(f"{int(octet):02X}" for octet in reversed(host.split(".")))
