"""main.cf values as ``postconf`` prints them, and Postfix's list syntax.
"""

from __future__ import annotations

import re
from typing import Iterable

from backupmx.core.errors import BackupMXError
from backupmx.postfix.syntax import is_ignored, logical_lines


def parse_postconf_main(lines: Iterable[str]) -> dict[str, str]:
    values = {}
    for line in lines:
        name, sep, value = line.partition(" = ")
        if not sep:
            name, sep, value = line.partition(" =")
        if sep:
            values[name.strip()] = value.strip()
    return values


def postfix_list(value: str) -> list[str]:
    """The entries of a Postfix list parameter (separated by commas and/or whitespace)."""
    return [entry for entry in re.split(r"[\s,]+", value or "") if entry]




# --- editing main.cf ----------------------------------------------------------


class MainCfError(BackupMXError):
    """main.cf cannot be edited safely (the parameter is not written out where we look)."""


_ENTRY = re.compile(r"[^\s,]+")


def _definition(lines: list[str], name: str) -> tuple[int, int] | None:
    """The span of the last ``name = ...`` logical line (the one Postfix uses)."""
    found = None
    for start, end in logical_lines(lines):
        if re.match(re.escape(name) + r"[ \t]*=", lines[start]):
            found = (start, end)
    return found


def _entry_positions(lines: list[str], span: tuple[int, int]) -> list[tuple[int, int, int, str]]:
    """Every list entry of a definition as (line, start, end, text), comments skipped."""
    positions = []
    for index in range(*span):
        if is_ignored(lines[index]):
            continue
        offset = lines[index].index("=") + 1 if index == span[0] else 0
        for match in _ENTRY.finditer(lines[index], offset):
            positions.append((index, match.start(), match.end(), match.group(0)))
    return positions


def with_list_entry(main_cf: str, name: str, entries: list[str], index: int, token: str) -> str:
    """main.cf with ``token`` added to the list ``name`` right before its entry ``index``.

    ``entries`` is the list as ``postconf`` reads it; main.cf must write the same
    entries out (no ``$other`` parameter in between), or this refuses. Everything
    else in the file, the list's own layout included, is kept.
    """
    lines = main_cf.splitlines(keepends=True)
    span = _definition(lines, name)
    positions = _entry_positions(lines, span) if span else []
    if [entry for *_, entry in positions] != entries:
        raise MainCfError(f"main.cf does not write {name} out as Postfix reads it (a $parameter in it?); "
                          f"add `{token}` before {entries[index]} in it by hand and re-run")
    line, start, _, _ = positions[index]
    lines[line] = f"{lines[line][:start]}{token}, {lines[line][start:]}"
    return "".join(lines)


def without_list_entry(main_cf: str, name: str, token: str) -> str:
    """main.cf with every ``token`` entry taken out of the list ``name`` (and the separator after it)."""
    lines = main_cf.splitlines(keepends=True)
    span = _definition(lines, name)
    if span is None:
        return main_cf
    token = re.escape(token)
    # The entry and the separator after it; or, last on its line, the separator before it.
    followed = re.compile(r"(?<![^\s,=])" + token + r"[ \t]*,?[ \t]*(?=[^\s,])")
    last = re.compile(r"[ \t]*,?[ \t]*(?<![^\s,=])" + token + r"[ \t]*,?[ \t]*(?=\r?\n|$)")
    for index in range(*span):
        if not is_ignored(lines[index]):
            lines[index] = last.sub("", followed.sub("", lines[index]))
    return "".join(lines)
