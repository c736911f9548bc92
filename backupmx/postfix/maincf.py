"""main.cf values as ``postconf`` prints them, and Postfix's list syntax.
"""

from __future__ import annotations

import re
from typing import Iterable


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


