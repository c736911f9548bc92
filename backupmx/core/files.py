"""Files on the control machine: replaced atomically (a reader sees the old file or the new one), or
appended to a line at a time (a log several runs write: each line whole)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def write_atomically(path: str | Path, text: str) -> None:
    """``text`` to ``path`` through a temporary file beside it; an existing file keeps its mode."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".backupmx-new")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        if target.exists():
            shutil.copymode(target, temporary)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def append_json_line(path: str | Path, entry: dict) -> OSError | None:
    """``entry`` as one JSON line at the end of ``path`` (mode 640), in one ``write`` of an O_APPEND
    file, so lines of runs writing at once never interleave; the error, when it could not be written."""
    target = Path(path)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as error:
        return error
    return None
