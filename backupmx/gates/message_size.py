"""Gate G2 for provider ``selfhosted``: every relay takes the largest message a primary takes.

A smaller limit answers 552 (5xx) to mail the primary would accept: during an
outage that is a bounce the primary would never have sent. The sizes are Postfix's
``message_size_limit`` as read while preparing (``None``: not read); the mail hosts'
come from ``operations.mailhost_proof.report_mailhost``, the relays' from ``assess_relayhost``.
"""

from __future__ import annotations

from collections.abc import Mapping

from backupmx.core.relayhost import refuses_what_the_primary_takes
from backupmx.core.report import FAIL, PASS, WARN, Check

TITLE = "relay takes the primary's largest message"


def message_size_rows(primary_sizes: Mapping[str, int | None], relay_sizes: Mapping[str, int | None]) -> list[Check]:
    """One G2 row per relay host (none without relay hosts), or one warning if no primary's size was read."""
    if not relay_sizes:
        return []
    read = {name: size for name, size in primary_sizes.items() if size is not None}
    if not read:
        return [Check("G2", TITLE, WARN, "the primary's message_size_limit was not read (no mail host in this run, "
                      "or its Postfix did not answer)", "run with the mail hosts")]
    largest = 0 if 0 in read.values() else max(read.values())
    primary = f"primary {_size(largest)} ({', '.join(sorted(read))})"
    rows = []
    for name, size in sorted(relay_sizes.items()):
        if size is None:
            rows.append(Check("G2", TITLE, WARN, f"{name}: its message_size_limit was not read; {primary}",
                              f"set relayhost.message_size_limit = {largest} for {name}"))
        elif refuses_what_the_primary_takes(size, largest):
            rows.append(Check("G2", TITLE, FAIL, f"{name}: message_size_limit {_size(size)} < {primary}: the "
                              f"backup would answer 552 (5xx) to mail the primary takes, a bounce during an outage",
                              f"set relayhost.message_size_limit = {largest} for {name} in the inventory, then "
                              f"run again"))
        else:
            rows.append(Check("G2", TITLE, PASS, f"{name}: message_size_limit {_size(size)}, {primary}"))
    return rows


def _size(size: int) -> str:
    return "no limit" if size == 0 else f"{size} bytes"
