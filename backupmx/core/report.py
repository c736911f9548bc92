"""The gate report: every stage and gate with pass / fail / warn and its evidence.

Printed once per run before anything changes, also under ``--dry``, so a
reviewer sees why a deploy will or will not go ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, FAIL, WARN, SKIP, TODO = "pass", "FAIL", "warn", "skip", "todo"
CHANGE = "change"  # passes its checks and will change something
BLOCKING = {FAIL}
# The order rows are shown in, whatever order the hosts' passes added them.
# "3r": provider selfhosted's relay stage (a relay host left out of the run), before the mail hosts'.
STAGE_ORDER = ["0", "1", "G1", "G2", "G3", "G4", "2", "3r", "3", "4", "5", "6"]


@dataclass(frozen=True)
class Check:
    key: str  # "0", "1", "G1" ...
    title: str
    status: str
    evidence: str
    next_step: str | None = None


@dataclass
class Report:
    title: str
    checks: list[Check] = field(default_factory=list)

    def add(self, key: str, title: str, status: str, evidence: str, next_step: str | None = None) -> Check:
        check = Check(key, title, status, evidence, next_step)
        self.checks.append(check)
        return check

    def put(self, key: str, title: str, status: str, evidence: str, next_step: str | None = None) -> Check:
        """Add a row, or replace the row of the same key and title (a plan row by its outcome)."""
        check = Check(key, title, status, evidence, next_step)
        for index, row in enumerate(self.checks):
            if (row.key, row.title) == (key, title):
                self.checks[index] = check
                return check
        self.checks.append(check)
        return check

    def in_order(self) -> list[Check]:
        """The rows in stage order, as they are shown."""
        return sorted(self.checks, key=_stage_rank)

    @property
    def blocked(self) -> bool:
        return any(check.status in BLOCKING for check in self.checks)

    def render(self) -> str:
        key_width = max([len(c.key) for c in self.checks] + [5])
        title_width = max([len(c.title) for c in self.checks] + [5])
        lines = [self.title, f"  {'stage':<{key_width}}  {'check':<{title_width}}  {'status':<6}  evidence"]
        for check in self.in_order():
            lines.append(f"  {check.key:<{key_width}}  {check.title:<{title_width}}  {check.status:<6}  {check.evidence}")
            if check.next_step and check.status != PASS:
                lines.append(f"  {'':<{key_width}}  {'':<{title_width}}  {'':<6}  next: {check.next_step}")
        verdict = "BLOCKED: nothing will be changed" if self.blocked else "gates allow the deploy to proceed"
        lines.append(f"  => {verdict}")
        return "\n".join(lines)


def _stage_rank(check: Check) -> int:
    return STAGE_ORDER.index(check.key) if check.key in STAGE_ORDER else len(STAGE_ORDER)
