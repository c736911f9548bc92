"""What one operation would change on one host (a mail host, a relay host, a monitoring host), as
data: its files as read (``existing``) and as wanted (``desired``), the changes between them, what
changes in a running container, and the verdict: any problem refuses the plan. Applying it is
its transaction's job (``backupmx.postfix.transaction``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from backupmx.core.errors import BackupMXError
from backupmx.postfix.transaction import FileChange, Transaction, unified_diff


class UnsafeHostPlan(BackupMXError):
    """A host plan whose verdict refuses it was about to be applied."""


@dataclass
class HostPlan:
    """What one operation would do on one host (``existing`` -> ``desired``), and why not if it cannot."""

    label: str
    existing: dict[str, str | None] = field(default_factory=dict)  # the files it would change, as read
    desired: dict[str, str | None] = field(default_factory=dict)  # and as wanted (None: no file)
    files: list[FileChange] = field(default_factory=list)  # the changes between them (and files to redo)
    live: list[str] = field(default_factory=list)  # docker-mailserver: what changes in the running container
    problems: list[str] = field(default_factory=list)  # the verdict: any problem refuses the plan
    refused: list[str] = field(default_factory=list)  # docker-mailserver: files its read-only config dir cannot take
    transaction: Transaction | None = None
    already: str = ""  # what is in place, when nothing changes

    @property
    def changed(self) -> bool:
        return bool(self.files or self.live)

    @property
    def refusal(self) -> str | None:
        return self.problems[0] if self.problems else None

    def raise_if_unsafe(self) -> None:
        if self.refusal is not None:
            raise UnsafeHostPlan(f"{self.label}: {self.refusal}")

    def settle(self, existing: dict[str, str | None], desired: dict[str, str | None],
               interrupted: Sequence[str] = (), stage_dir: str | None = None) -> None:
        """The changes between ``existing`` and ``desired``, and a redo of each file a cut-off
        transaction left (``interrupted``): its daemon may not have what the file says, and
        rewriting the same content runs the whole transaction (validate, reload) again."""
        self.existing, self.desired = existing, desired
        self.files = [FileChange(path, existing[path], desired[path], stage_dir) for path in desired
                      if existing[path] != desired[path]]
        self.files += [FileChange(path, existing[path], existing[path], stage_dir) for path in interrupted
                       if path in desired and existing[path] == desired[path]]

    def summary(self) -> str:
        parts = [f"redo {c.path} (an earlier transaction was cut off: validate and reload again)" if c.old == c.new
                 else f"{'create' if c.old is None else 'remove' if c.new is None else 'change'} {c.path}"
                 for c in self.files]
        return "; ".join(parts + self.live)

    def diff(self) -> list[str]:
        lines = []
        for change in self.files:
            lines.extend(unified_diff(change.path, change.old, change.new))
        lines.extend(f"live: {item}" for item in self.live)
        return lines
