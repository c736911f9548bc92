"""The capture protocol of the facts: the read-only script they run on a host and the
parser of what it prints (every value base64-encoded on one line).
"""

from __future__ import annotations

import base64
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# The capture protocol of the facts: every value crosses as one "name field value"
# line, command output and file contents base64-encoded, so nothing is lost or
# mistaken for a separator; the script itself always exits 0. One scratch directory
# serves the whole script, and an empty output is printed without running base64: a
# read of forty captures starts about a hundred processes fewer on the host.
CAPTURE_PRELUDE = r"""
BMX_T=$(mktemp -d) || { printf 'bmx rc 125\n'; exit 0; }
bmx_b64() {
  if [ -s "$2" ]; then printf '%s %s %s\n' "$bmx_n" "$1" "$(base64 -w0 <"$2")"; else printf '%s %s\n' "$bmx_n" "$1"; fi
}
bmx_cap() {
  bmx_n=$1; shift
  "$@" <"${BMX_STDIN:-/dev/null}" >"$BMX_T/$bmx_n.o" 2>"$BMX_T/$bmx_n.e"; bmx_rc=$?
  printf '%s rc %s\n' "$bmx_n" "$bmx_rc"
  bmx_b64 out "$BMX_T/$bmx_n.o"
  bmx_b64 err "$BMX_T/$bmx_n.e"
  return 0
}
bmx_in() {
  bmx_k=$1; bmx_names=$2; shift 2
  "$@" </dev/null >"$BMX_T/$bmx_k.o" 2>"$BMX_T/$bmx_k.e"; bmx_rc=$?
  cat "$BMX_T/$bmx_k.o"
  [ "$bmx_rc" -eq 0 ] && return 0
  for bmx_n in $bmx_names; do printf '%s rc %s\n%s out\n' "$bmx_n" "$bmx_rc" "$bmx_n"; bmx_b64 err "$BMX_T/$bmx_k.e"; done
  return 0
}
""".strip()

READ_FILE = 'if [ -f "$1" ]; then cat -- "$1"; else exit 3; fi'
ABSENT = 3


def read_file_argv(path: str) -> list[str]:
    return ["sh", "-c", READ_FILE, "sh", path]


@dataclass
class Captured:
    rc: int
    out: str
    err: str
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.err.strip()

    def problem(self) -> str:
        text = one_line(self.err or self.out)
        return f"exit {self.rc}: {text}" if text else f"exit {self.rc}"


def in_target(container: str | None, docker: str, argv: Sequence[str], stdin: bool = False) -> list[str]:
    """``argv`` as run in ``container`` through ``docker exec`` (``-i``: with ``stdin``); as is without one.
    ``MailHost.in_target`` for a mail host; the facts, which take plain arguments, call this;
    ``capture_script`` runs a read's commands of one container through one exec."""
    if not container:
        return list(argv)
    return [docker, "exec", *(["-i"] if stdin else []), container, *argv]


def exec_target(argv: Sequence[str]) -> tuple[tuple[str, str], list[str]] | None:
    """``((docker, container), the argv run there)`` for an ``in_target`` command; None for any other."""
    argv = list(argv)
    if len(argv) < 4 or argv[1] != "exec":
        return None
    at = 3 if argv[2] == "-i" else 2
    if len(argv) <= at + 1 or argv[at].startswith("-"):
        return None
    return (argv[0], argv[at]), argv[at + 1:]


def capture_script(commands: Sequence[tuple[str, Sequence[str]]], stdin: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None, parallel: bool = False) -> str:
    """A read-only script that runs each (name, argv) and prints its capture lines.

    ``stdin`` maps a name to text fed to that command on standard input;
    ``labels`` maps a name to a value echoed back with it (e.g. the path read).
    ``parallel``: the commands run concurrently (for independent reads that wait
    on daemons, like stage 4's probes); each one's lines are collected in a file
    of its own and printed in the given order, so the output is the same.

    The commands of one container (``in_target``'s ``docker exec``) run inside it as
    one script of their own, through a single ``docker exec``: each exec starts the
    container engine's CLI and its runtime (for podman about a tenth of a second of
    CPU), and a read of docker-mailserver has a few dozen. If that exec fails, each
    of its captures carries its exit status and its error.
    """
    counts = Counter(name for name, _ in commands)
    for name in counts:
        if not re.match(r"^[A-Za-z0-9_]+$", name) or counts[name] > 1:
            raise ValueError(f"capture name {name!r}: letters, digits and _, once per script")
    inside: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
    here = []
    for name, argv in commands:
        target = exec_target(argv)
        if target is None:
            here.append((name, list(argv)))
        else:
            inside.setdefault(target[0], []).append((name, target[1]))
    jobs = [[line] for line in _capture_lines(here, stdin, labels)]
    for index, ((docker, container), contained) in enumerate(inside.items()):
        names_inside = [name for name, _ in contained]
        script = capture_script(contained, {n: t for n, t in (stdin or {}).items() if n in names_inside},
                                {n: t for n, t in (labels or {}).items() if n in names_inside}, parallel)
        jobs.append([f"bmx_in x{index} {shlex.quote(' '.join(names_inside))} "
                     f"{shlex.join([docker, 'exec', container, 'sh', '-c', script])}"])
    parts = [CAPTURE_PRELUDE]
    for index, job in enumerate(jobs):
        if parallel:
            parts.append(f"( {'; '.join(job)} ) >\"$BMX_T/{index:04d}.lines\" &")
        else:
            parts.extend(job)
    if parallel:
        parts.append("wait; cat \"$BMX_T\"/*.lines 2>/dev/null")
    parts.append("rm -rf \"$BMX_T\"")
    return "\n".join(parts) + "\n"


def _capture_lines(commands, stdin, labels) -> list[str]:
    """One shell line per command: its label, its standard input, its capture."""
    found = []
    for name, argv in commands:
        lines = []
        if labels and name in labels:
            lines.append(f"printf '%s label %s\\n' {name} {base64.b64encode(labels[name].encode()).decode()}")
        if stdin and name in stdin:
            encoded = base64.b64encode(stdin[name].encode()).decode()
            lines.append(f"BMX_STDIN=\"$BMX_T/{name}.i\"; printf %s {encoded} | base64 -d >\"$BMX_STDIN\"; "
                         f"bmx_cap {name} {shlex.join(argv)}; BMX_STDIN=")
        else:
            lines.append(f"bmx_cap {name} {shlex.join(argv)}")
        found.append("; ".join(lines))
    return found


def parse_captures(lines: Iterable[str]) -> dict[str, Captured]:
    raw: dict[str, dict[str, str]] = {}
    for line in lines:
        parts = line.strip().split(" ", 2)
        if len(parts) < 2:
            continue
        name, field_name = parts[0], parts[1]
        raw.setdefault(name, {})[field_name] = parts[2] if len(parts) > 2 else ""
    captured = {}
    for name, fields in raw.items():
        try:
            rc = int(fields.get("rc", "125"))
        except ValueError:
            rc = 125
        captured[name] = Captured(rc, _decode(fields.get("out", "")), _decode(fields.get("err", "")),
                                  _decode(fields.get("label", "")))
    return captured


def _decode(value: str) -> str:
    try:
        return base64.b64decode(value.encode()).decode("utf-8", "surrogateescape")
    except (ValueError, UnicodeDecodeError):
        return ""


def one_line(text: str, limit: int = 400) -> str:
    seen, parts = set(), []
    for line in (text or "").replace("\r", "\n").splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.add(line)
            parts.append(line)
    joined = " | ".join(parts)
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."


def file_content(captured: Captured | None) -> tuple[bool, str | None, str | None]:
    """(readable, content or None if absent, error) from a ``read_file_argv`` capture."""
    if captured is None:
        return False, None, "not read"
    if captured.rc == 0:
        return True, captured.out, None
    if captured.rc == ABSENT and not captured.err.strip():
        return True, None, None
    return False, None, captured.problem()


