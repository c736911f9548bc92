"""The apply transaction of every file change on a host: stage, validate, swap, reload,
restore the previous files on any failure; and the diff ``--dry`` shows.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

from backupmx.core.templates import render
from backupmx.postfix.shell import read_file_argv

# --- the apply transaction ----------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    """One file on the host to change: ``new`` None removes it; ``old`` is what the plan saw.

    ``stage_dir``: the file is in a tree a watcher acts on by itself (docker-mailserver's
    changedetector copies ``rspamd/`` into the container and restarts rspamd on any
    change there). Its new and old copies are then kept in ``stage_dir``, outside that
    tree, and it is put in place last, after validation and the reloads, so the
    watcher only ever sees validated content, once.
    """

    path: str
    old: str | None
    new: str | None
    stage_dir: str | None = None

    @property
    def last(self) -> bool:
        return self.stage_dir is not None

    def copies(self) -> tuple[str, str]:
        """Where the new content is staged and the old file set aside while the transaction runs."""
        base = f"{self.stage_dir}/{Path(self.path).name}" if self.stage_dir else self.path
        return base + ".backupmx-new", base + ".backupmx-old"


class LiveCommand(NamedTuple):
    """docker-mailserver: a command that changes the running container (``what`` names it in errors);
    ``stdin_from``: a file it reads on standard input (a ``FileChange``'s path: its new content)."""

    what: str
    argv: tuple[str, ...]
    stdin_from: str | None = None


@dataclass(frozen=True)
class Transaction:
    label: str
    files: tuple[FileChange, ...] = ()
    # docker-mailserver: files of the running container the live commands change
    # (copied aside first), and the commands.
    live_files: tuple[tuple[str, ...], ...] = ()  # (argv prefix into the container..., path)
    live_commands: tuple[LiveCommand | tuple, ...] = ()
    postfix_check: tuple[str, ...] = ()
    rspamd_configtest: tuple[str, ...] = ()
    # (argv, expected stdout; "" = no answer)
    probes: tuple[tuple[tuple[str, ...], str], ...] = ()
    reloads: tuple[tuple[str, ...], ...] = ()
    # A command that succeeds once the watcher of the ``stage_dir`` files is idle: waited
    # for before anything changes, and after the watched files are in place.
    settle: tuple[str, ...] = ()


# Linux refuses any single exec argument above 128 KiB (MAX_ARG_STRLEN), and over
# SSH the whole command is one argument of the login shell: a script carrying
# file contents inline must stay well below it. Larger contents are uploaded
# first (``staged``) and only their checksums travel in the script.
INLINE_SCRIPT_LIMIT = 48 * 1024
# How long the transaction waits for docker-mailserver's changedetector (it polls every 2 s).
SETTLE_SECONDS = 60


def transaction_script(tx: Transaction, staged: Mapping[str, str] | None = None) -> str:
    """The shell program that applies ``tx`` on the host, all or nothing (``templates/transaction.sh.j2``
    says what it does, step by step).

    ``staged`` maps a file's path to a file on the host already holding its new
    content (uploaded by the operation when the script would be too large to
    carry it inline, see ``INLINE_SCRIPT_LIMIT``); the script checks its sha256
    before anything is swapped and removes it on every exit.
    """
    q = shlex.quote
    uploads = {change.path: staged[change.path] for change in tx.files
               if staged and change.new is not None and change.path in staged}
    files = [_file_step(index, change, uploads.get(change.path)) for index, change in enumerate(tx.files)]
    new_copies = {change.path: change.copies()[0] for change in tx.files}
    names = ", ".join([Path(change.path).name for change in tx.files]
                      + [f"{Path(live[-1]).name} in the container" for live in tx.live_files]) or "nothing"
    flags = " ".join([f"BMX_S{i}=0" for i in range(len(tx.files))] + [f"BMX_L{i}=0" for i in range(len(tx.live_files))])
    return render(
        "transaction.sh.j2",
        label=tx.label, names=names, flags=flags or ":", files=files, last_files=[f for f in files if f["last"]],
        uploads=list(uploads.values()), settle=[q(arg) for arg in tx.settle], settle_seconds=SETTLE_SECONDS,
        live_files=[_live_step(live) for live in tx.live_files],
        live_commands=[{"what": command.what, "argv": shlex.join(command.argv),
                        "stdin": q(new_copies.get(command.stdin_from, command.stdin_from or "/dev/null"))}
                       for command in map(lambda entry: LiveCommand(*entry), tx.live_commands)],
        postfix_check=shlex.join(tx.postfix_check), rspamd_configtest=shlex.join(tx.rspamd_configtest),
        probes=[{"argv": shlex.join(argv), "expected": expected, "address": argv[-2] if len(argv) >= 2 else "?"}
                for argv, expected in tx.probes],
        reloads=[{"argv": shlex.join(argv), "shown": shlex.join(argv)} for argv in tx.reloads],
    )


def _file_step(index: int, change: FileChange, upload: str | None) -> dict:
    new_copy, old_copy = change.copies()
    if change.new is None:
        source = ""
    elif upload:
        source = f"cat -- {shlex.quote(upload)}"
    else:
        source = f"printf %s {base64.b64encode(change.new.encode('utf-8', 'surrogateescape')).decode()} | base64 -d"
    return {
        "index": index, "path": change.path, "target": shlex.quote(change.path), "last": change.last,
        "new": change.new, "new_copy": shlex.quote(new_copy), "new_copy_raw": new_copy,
        "old_copy": shlex.quote(old_copy), "new_dir": shlex.quote(str(Path(new_copy).parent)),
        "reader": shlex.join(read_file_argv(change.path)), "upload": upload, "source": source,
        "old_sha": None if change.old is None else _sha256(change.old),
        "new_sha": None if change.new is None else _sha256(change.new),
    }


def _live_step(live: tuple[str, ...]) -> dict:
    """A container file set aside (``cp -p`` beside it), put back, and its copy dropped."""
    into, path = list(live[:-1]), live[-1]
    aside = shlex.join(into + ["sh", "-c", 'rm -f "$1"; if [ -e "$2" ]; then cp -p "$2" "$1"; fi', "sh",
                               path + ".backupmx-old", path])
    back = shlex.join(into + ["sh", "-c", 'if [ -e "$1" ]; then mv -f "$1" "$2"; else rm -f "$2"; fi', "sh",
                              path + ".backupmx-old", path])
    return {"path": path, "aside": aside, "back": back, "drop": shlex.join(into + ["rm", "-f", path + ".backupmx-old"])}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# --- diffs --------------------------------------------------------------------


def unified_diff(path: str, old: str | None, new: str | None) -> list[str]:
    """A unified diff of one file (``/dev/null`` for a file created or removed)."""
    old_lines = (old or "").splitlines(keepends=True)
    new_lines = (new or "").splitlines(keepends=True)
    lines = difflib.unified_diff(old_lines, new_lines, fromfile=path if old is not None else "/dev/null",
                                 tofile=path if new is not None else "/dev/null", n=2)
    return [line.rstrip("\r\n") for line in lines]


