"""The apply transaction of every file change on a host: stage, validate, swap, reload,
restore the previous files on any failure; and the diff ``--dry`` shows.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from backupmx.postfix.shell import read_file_argv

# --- the apply transaction ----------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    """One file on the host to change: ``new`` None removes it; ``old`` is what the plan saw."""

    path: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Transaction:
    label: str
    files: tuple[FileChange, ...] = ()
    # docker-mailserver: files of the running container the live commands change
    # (copied aside first), and the commands, as (what, argv).
    live_files: tuple[tuple[str, ...], ...] = ()  # (argv prefix into the container..., path)
    live_commands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    postfix_check: tuple[str, ...] = ()
    rspamd_configtest: tuple[str, ...] = ()
    # (argv, expected stdout; "" = no answer)
    probes: tuple[tuple[tuple[str, ...], str], ...] = ()
    reloads: tuple[tuple[str, ...], ...] = ()


_HELPERS = r"""
bmx_say() { printf 'backupmx: %s: %s\n' "$BMX_LABEL" "$1" >&2; }
bmx_norm() { tr '\r' '\n' | awk '{ gsub(/^[ \t]+|[ \t]+$/, "") } NF && !seen[$0]++'; }
bmx_join() { awk 'NR > 1 { printf " | " } { printf "%s", $0 } END { print "" }' | cut -c1-600; }
bmx_new_lines() { { grep -vxF -f "$1" "$2" || true; } | bmx_join; }
""".strip()


# Linux refuses any single exec argument above 128 KiB (MAX_ARG_STRLEN), and over
# SSH the whole command is one argument of the login shell: a script carrying
# file contents inline must stay well below it. Larger contents are uploaded
# first (``staged``) and only their checksums travel in the script.
INLINE_SCRIPT_LIMIT = 48 * 1024


def transaction_script(tx: Transaction, staged: Mapping[str, str] | None = None) -> str:
    """The shell that applies ``tx`` on the mail host, all or nothing.

    ``staged`` maps a file's path to a file on the host already holding its new
    content (uploaded by the operation when the script would be too large to
    carry it inline, see ``INLINE_SCRIPT_LIMIT``); the script checks its sha256
    before anything is swapped and removes it on every exit.

    1. Check each file still holds what the plan saw (no edit slipped in between),
       and each staged upload holds exactly the new content.
    2. Write every new file next to its target (``.backupmx-new``), copy the old
       one aside (``cp -p`` to ``.backupmx-old``), rename the new one in: each
       replace is atomic, and readers see either the old or the new file.
    3. Validate: ``postfix check`` and ``rspamadm configtest`` must print nothing
       they did not print before the change (both exit 0 on some real errors: a
       misspelled parameter only warns), and every postmap probe must answer as
       expected.
    4. On any failure: put the old files back by rename (byte for byte), remove
       files that did not exist, reload nothing, print one line, exit 1.
    5. Otherwise reload, then drop the copies.
    """
    q = shlex.quote
    names = ", ".join([Path(change.path).name for change in tx.files]
                      + [f"{Path(live[-1]).name} in the container" for live in tx.live_files]) or "nothing"
    head = [
        "set -u",
        "umask 022",
        f"BMX_LABEL={q(tx.label)}",
        _HELPERS,
    ]
    staged = {change.path: staged[change.path] for change in tx.files
              if staged and change.new is not None and change.path in staged}
    if staged:
        # The uploads go whatever happens: success, refusal or restore.
        head.append(f"trap {q('rm -f ' + shlex.join(staged.values()))} EXIT")
    head += [
        "BMX_T=$(mktemp -d) || { bmx_say 'cannot make a temporary directory'; exit 1; }",
        ": >\"$BMX_T/pc0\"; : >\"$BMX_T/rt0\"",
    ]
    restore, cleanup = ["bmx_restore() {"], ["bmx_cleanup() {"]
    # Every "swapped" flag exists from the start: bmx_restore reads them all (set -u).
    steps = [" ".join([f"BMX_S{i}=0" for i in range(len(tx.files))] + [f"BMX_L{i}=0" for i in range(len(tx.live_files))])
             or ":"]

    # 1. Nothing changed since the plan.
    for change in tx.files:
        reader = shlex.join(read_file_argv(change.path))
        if change.old is None:
            steps.append(f"if {reader} >/dev/null 2>&1; then bmx_say {q(change.path + ' appeared since it was read; re-run')}; "
                         "rm -rf \"$BMX_T\"; exit 1; fi")
        else:
            steps.append(f"[ \"$({reader} 2>/dev/null | sha256sum | cut -d' ' -f1)\" = {_sha256(change.old)} ] || "
                         f"{{ bmx_say {q(change.path + ' changed since it was read; re-run')}; rm -rf \"$BMX_T\"; exit 1; }}")
    for path, upload in staged.items():
        new = next(change.new for change in tx.files if change.path == path)
        steps.append(f"[ \"$(sha256sum 2>/dev/null <{q(upload)} | cut -d' ' -f1)\" = {_sha256(new)} ] || "
                     f"{{ bmx_say {q('the uploaded new content of ' + path + ' is incomplete; re-run')}; "
                     "rm -rf \"$BMX_T\"; exit 1; }")
    # Baselines: what the checks print before the change.
    if tx.postfix_check:
        steps.append(f"{shlex.join(tx.postfix_check)} </dev/null 2>&1 | bmx_norm >\"$BMX_T/pc0\"")
    if tx.rspamd_configtest:
        steps.append(f"{shlex.join(tx.rspamd_configtest)} </dev/null 2>&1 | bmx_norm | grep -vx 'syntax OK' >\"$BMX_T/rt0\"")

    # 2. Stage, set aside, swap.
    for index, change in enumerate(tx.files):
        flag, target = f"BMX_S{index}", q(change.path)
        new_path, old_path = q(change.path + ".backupmx-new"), q(change.path + ".backupmx-old")
        restore.append(f"  if [ \"${flag}\" = 1 ]; then if [ -e {old_path} ]; then mv -f {old_path} {target}; "
                       f"else rm -f {target}; fi; fi; rm -f {new_path}")
        cleanup.append(f"  rm -f {old_path}")
        steps.append(f"rm -f {old_path} {new_path}")
        if change.new is not None:
            if change.path in staged:
                source = f"cat -- {q(staged[change.path])}"
            else:
                source = f"printf %s {base64.b64encode(change.new.encode('utf-8', 'surrogateescape')).decode()} | base64 -d"
            steps.append(f"mkdir -p {q(str(Path(change.path).parent))} && {source} >{new_path} "
                         f"|| bmx_fail {q('cannot write ' + change.path + '.backupmx-new')}")
            steps.append(f"if [ -e {target} ]; then chmod --reference={target} {new_path} && "
                         f"chown --reference={target} {new_path}; else chmod 644 {new_path}; fi "
                         f"|| bmx_fail {q('cannot set owner and mode of ' + change.path + '.backupmx-new')}")
        steps.append(f"if [ -e {target} ]; then cp -p {target} {old_path} || bmx_fail {q('cannot copy ' + change.path + ' aside')}; fi")
        steps.append(f"{flag}=1")
        if change.new is None:
            steps.append(f"rm -f {target} || bmx_fail {q('cannot remove ' + change.path)}")
        else:
            steps.append(f"mv -f {new_path} {target} || bmx_fail {q('cannot rename ' + change.path + '.backupmx-new into place')}")

    # docker-mailserver: the running container's own copies.
    for index, live in enumerate(tx.live_files):
        into, path = list(live[:-1]), live[-1]
        flag, old_path = f"BMX_L{index}", q(path + ".backupmx-old")
        aside = shlex.join(into + ["sh", "-c", 'rm -f "$1"; if [ -e "$2" ]; then cp -p "$2" "$1"; fi', "sh",
                                   path + ".backupmx-old", path])
        back = shlex.join(into + ["sh", "-c", 'if [ -e "$1" ]; then mv -f "$1" "$2"; else rm -f "$2"; fi', "sh",
                                  path + ".backupmx-old", path])
        steps.append(f"{aside} || bmx_fail {q('cannot copy ' + path + ' aside in the container')}")
        steps.append(f"{flag}=1")
        restore.append(f"  if [ \"${flag}\" = 1 ]; then {back}; fi")
        cleanup.append(f"  {shlex.join(into + ['rm', '-f', path + '.backupmx-old'])}")
    for what, argv in tx.live_commands:
        steps.append(f"BMX_O=$({shlex.join(argv)} </dev/null 2>&1) || "
                     f"bmx_fail \"{_dq(what)} failed: $(printf '%s\\n' \"$BMX_O\" | bmx_norm | bmx_join)\"")

    # 3. Validate.
    if tx.postfix_check:
        steps.append(f"{shlex.join(tx.postfix_check)} </dev/null 2>&1 | bmx_norm >\"$BMX_T/pc1\"")
        steps.append("BMX_NEW=$(bmx_new_lines \"$BMX_T/pc0\" \"$BMX_T/pc1\")")
        steps.append("[ -z \"$BMX_NEW\" ] || bmx_fail \"postfix check warns after the change: $BMX_NEW\"")
    if tx.rspamd_configtest:
        steps.append(f"BMX_O=$({shlex.join(tx.rspamd_configtest)} </dev/null 2>&1); BMX_RC=$?")
        steps.append("printf '%s\\n' \"$BMX_O\" | bmx_norm | grep -vx 'syntax OK' >\"$BMX_T/rt1\"")
        steps.append("BMX_NEW=$(bmx_new_lines \"$BMX_T/rt0\" \"$BMX_T/rt1\")")
        steps.append("if [ \"$BMX_RC\" != 0 ] || [ -n \"$BMX_NEW\" ]; then bmx_fail \"rspamadm configtest fails after "
                     "the change (exit $BMX_RC): $(printf '%s\\n' \"$BMX_O\" | bmx_norm | bmx_join)\"; fi")
    for argv, expected in tx.probes:
        address = argv[-2] if len(argv) >= 2 else "?"
        steps.append(f"BMX_O=$({shlex.join(argv)} </dev/null 2>\"$BMX_T/pe\"); BMX_E=$(bmx_norm <\"$BMX_T/pe\" | bmx_join)")
        if expected:
            steps.append(f"{{ [ \"$BMX_O\" = {q(expected)} ] && [ -z \"$BMX_E\" ]; }} || bmx_fail \"postmap probe: "
                         f"{_dq(address)} should answer {_dq(expected)}, got '$BMX_O' $BMX_E\"")
        else:
            steps.append(f"{{ [ -z \"$BMX_O\" ] && [ -z \"$BMX_E\" ]; }} || bmx_fail \"postmap probe: {_dq(address)} "
                         "(outside every relay network) should get no answer, got '$BMX_O' $BMX_E\"")

    # 5. Reload; the copies go once the new files are in force.
    for argv in tx.reloads:
        # The new files are validated and stay: the copies aside are of no use any more.
        steps.append(f"BMX_O=$({shlex.join(argv)} </dev/null 2>&1) || {{ bmx_cleanup; rm -rf \"$BMX_T\"; bmx_say \"the new files passed "
                     f"validation and are in place, but {_dq(shlex.join(argv))} failed: $(printf '%s\\n' \"$BMX_O\" | bmx_norm | bmx_join); "
                     "the running service may still have the old configuration: fix it, reload it, then re-run\"; exit 1; }")
    steps.append("bmx_cleanup")
    steps.append("rm -rf \"$BMX_T\"")
    restore += ["  :", "}"]
    cleanup += ["  :", "}"]
    fail = ("bmx_fail() { bmx_restore; rm -rf \"$BMX_T\"; "
            f"bmx_say \"$1; previous files restored byte for byte ({_dq(names)}), nothing reloaded; "
            "fix the cause, review with --dry, then re-run\"; exit 1; }")
    return "\n".join(head + restore + cleanup + [fail] + steps) + "\n"


def _dq(text: str) -> str:
    """Text safe inside a double-quoted shell string."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


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


