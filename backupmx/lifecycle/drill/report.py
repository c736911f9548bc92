"""Step 8 of the failover drill: the report printed at the end, whatever happened (docs/failover-drill.md).

One row per step and per message (``Drill.report``), the steps never reached marked
skipped, then the times (wall time, how long the primary was down, primary-up to the
last message delivered) and the verdict, which says first if the primary may still be down.
"""

from __future__ import annotations

import shlex

from backupmx.core.report import CHANGE, FAIL, SKIP, WARN, Check
from backupmx.lifecycle.drill.run import STEP_TITLES, Drill


def skip_rest(drill: Drill, reason: str) -> None:
    """Rows for the steps the drill never reached: its plan rows (made while preparing) and the missing ones."""
    for index, check in enumerate(drill.report.checks):
        if check.status == CHANGE:  # the plan made while preparing: never reached
            drill.report.checks[index] = Check(check.key, check.title, SKIP, reason)
    have = {c.key for c in drill.report.checks}
    for key, title in STEP_TITLES.items():
        if key not in have:
            drill.add(key, title, SKIP, reason)


def render(drill: Drill) -> str:
    drill.finished = drill.finished or drill.clock()
    lines = [drill.report.render().rsplit("\n", 1)[0]]
    wall = drill.finished - drill.started
    last = [p.delivered_at for p in drill.probes if p.delivered_at]
    timing = f"  wall time {wall:.1f} s"
    if drill.up_at and drill.down_at:
        timing += f"; primary down {drill.up_at - drill.down_at:.1f} s"
    if drill.up_at and last and len(last) == len(drill.probes):
        timing += f"; primary-up to last message delivered {max(last) - drill.up_at:.1f} s"
    lines.append(timing)
    if drill.primary_down:
        lines.append(f"  => FAILED and THE PRIMARY MAY STILL BE DOWN: run "
                     f"`{shlex.join(drill.failover.start_command)}` on {drill.host_name}")
    elif drill.report.blocked:
        failed = next(c for c in drill.report.checks if c.status == FAIL)
        lines.append(f"  => DRILL FAILED at step {failed.key} ({failed.title}); the primary is up")
    elif any(c.status == WARN for c in drill.report.checks):
        lines.append("  => drill passed: the backups queued every message and delivered it; primary up; "
                     "read the warn rows")
    else:
        lines.append("  => drill passed: the backups queued every message and delivered it cleanly; primary up")
    return "\n".join(lines)
