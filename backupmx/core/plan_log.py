"""What a ``--dry`` review would change in files, kept per run for the plan documents.

The operations that show a file diff while preparing (the mail host's and the relay
host's transactions, the monitoring files, the rendered docs) also note it here;
``backupmx.lifecycle.plan.document`` renders the notes with the gate report and the
record changes as Markdown and JSON (docs/ci.md). Notes are kept only while
preparing: at execution nothing is planned any more.
"""

from __future__ import annotations

from dataclasses import dataclass

from backupmx.core.context import run_value
from backupmx.core.pyinfra_glue import executing, in_a_run

CONFIG, DOCUMENT = "config", "document"  # a file to review / a generated page


@dataclass(frozen=True)
class FileDiff:
    """One file an operation would change: ``old`` None creates it, ``new`` None removes it."""

    host: str
    path: str
    old: str | None
    new: str | None
    operation: str  # the operation's label: rspamd_exemption, monitoring_files, local_file ...
    kind: str = CONFIG


def note_file_change(host: str, path: str, old: str | None, new: str | None, operation: str,
                     kind: str = CONFIG) -> None:
    """Keep one planned file change for the run's plan documents (while preparing only)."""
    if executing() or not in_a_run():
        return
    notes = run_value("plan_file_changes", list)
    diff = FileDiff(host, path, old, new, operation, kind)
    if diff not in notes:  # an operation body runs more than once
        notes.append(diff)


def file_changes() -> list[FileDiff]:
    """The planned file changes of the run so far, in the order they were noted."""
    return list(run_value("plan_file_changes", list)) if in_a_run() else []
