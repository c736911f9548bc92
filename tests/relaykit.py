"""The sandbox's self-hosted relay host: its Postfix configuration directory, file by file, and
putting it back (shared by the self-hosted pipeline and the canary tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from backupmx.core.relayhost import load_relayhost


def relay_dir(world) -> Path:
    return Path(load_relayhost(world["selfhosted"]["relayhost"]).postfix_config_dir)


def relay_files(world) -> dict[str, bytes]:
    """The relay Postfix's configuration directory, file by file (what the relay stage may change)."""
    root = relay_dir(world)
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and not path.is_symlink()}


def restore_relay(world, files: dict[str, bytes]) -> None:
    root = relay_dir(world)
    now = relay_files(world)
    if now == files:
        return
    for name in set(now) - set(files):
        (root / name).unlink()
    for name, content in files.items():
        if now.get(name) != content:
            (root / name).write_bytes(content)
    subprocess.run(["postfix", "-c", str(root), "reload"], capture_output=True, timeout=60, check=False)
