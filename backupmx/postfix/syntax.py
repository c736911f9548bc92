"""Postfix's configuration file syntax (postconf(5)), shared by main.cf and master.cf."""

from __future__ import annotations


def is_ignored(line: str) -> bool:
    """Empty, whitespace-only and comment lines: Postfix skips them, even inside a logical line."""
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def logical_lines(lines: list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of every logical line: a line at column 0 and the lines that continue it.

    A line that starts with whitespace continues the logical line before it; ignored lines in
    between do not end it. ``end`` is one past the last continuation, so comments and blank
    lines after an entry stay outside its span.
    """
    spans: list[tuple[int, int]] = []
    start = last = None
    for index, line in enumerate(lines):
        if is_ignored(line):
            continue
        if line[:1] in (" ", "\t"):
            if start is not None:
                last = index
            continue
        if start is not None:
            spans.append((start, last + 1))
        start = last = index
    if start is not None:
        spans.append((start, last + 1))
    return spans
