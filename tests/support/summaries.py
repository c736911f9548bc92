"""Tables a test shows the reader at the end of the run (the fault matrix, the kill points).

``summary`` prints them into the test's captured output between two marker lines;
tests/conftest.py picks them out of every report (in a parallel run the controller
hears every worker's) and shows them after the results.
"""

from __future__ import annotations

SUMMARY_START, SUMMARY_END = "<<< backupmx summary: ", ">>> end of backupmx summary"


def summary(title: str, lines: list[str]) -> None:
    """Show ``lines`` under ``title`` at the end of the run (call it from a test or its fixtures)."""
    print(f"\n{SUMMARY_START}{title}\n" + "\n".join(lines) + f"\n{SUMMARY_END}", flush=True)


def summaries_in(content: str) -> list[tuple[str, str]]:
    """The (title, text) of each summary in captured output."""
    found = []
    for block in content.split(SUMMARY_START)[1:]:
        title, _, rest = block.partition("\n")
        found.append((title, rest.split(SUMMARY_END, 1)[0].rstrip("\n")))
    return found
