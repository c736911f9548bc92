"""The last lines of deploys/backupmx.py: the verdict and what changed (or would), as the rollback ends.

The gate report comes first, before anything changes; after it pyinfra prints every
diff and its own results table. These lines come after all that, at exit (whatever
stopped the run), so the outcome is what the operator reads last:

* a ``--dry`` review: each planned change (the report's ``change`` rows, the
  monitoring files and pages), then the plan's verdict (``plan.document.verdict``);
* a blocked run: the failed rows, then "BLOCKED: nothing will be changed";
* an executed run: each operation that changed something, failed, or did not run
  (pyinfra's own per-host outcome), then "deploy complete", "nothing to change" or
  "DEPLOY INCOMPLETE" naming the first failure.

Pure: the run's report, plan and outcome in, lines out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from backupmx.core.plan_log import FileDiff
from backupmx.core.pyinfra_glue import EXIT_INTERRUPTED, RunEnd
from backupmx.core.report import CHANGE, FAIL, Report
from backupmx.lifecycle.plan.document import BLOCKED, NO_CHANGE, PlanData, verdict

# Stage 6's operations (the monitoring files and the rendered pages): they have no row of their own.
STAGE_6_OPERATIONS = ("monitoring_files", "local_file")
# Operations that only order the run (boundaries): never "changed" news.
QUIET_PREFIXES = ("Stages 3-4 finished", "Stage 5 finished")
# The proofs (stage 4, the relay stage): "Stage 4: prove the whitelist ...".
PROOF = ": prove "


def summary_lines(title: str, report: Report, plan: PlanData, end: RunEnd, printed: bool,
                  applied: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """The run's last lines, under ``title``. ``printed``: the gate report was shown (the run got
    that far); ``applied``: per domain, the record changes stage 5 made."""
    lines = [""] + _lines(title, report, plan, end, printed, applied or {})
    return lines


def _lines(title, report, plan, end, printed, applied) -> list[str]:
    if end.interrupted:
        return [f"{title} (INTERRUPTED by Ctrl-C)", f"  => DEPLOY INTERRUPTED: what ran may be partial; run it again (review first with --dry); "
                      f"exit {EXIT_INTERRUPTED}"]
    if not printed:
        return [title, "  => STOPPED before the gate report (the error above says why): nothing was changed"]
    if not end.executed:
        return _review(title, report, plan)
    return _executed(title, end, applied)


def _review(title: str, report: Report, plan: PlanData) -> list[str]:
    result = verdict(plan)
    if result["status"] == BLOCKED:
        lines = [f"{title} (nothing was changed)"]
        lines += [_row(check) for check in report.in_order() if check.status == FAIL]
        return lines + [f"  => BLOCKED: {result['summary']}"]
    lines = [f"{title} (review: nothing was changed)"]
    lines += [_row(check, "would: ") for check in report.in_order() if check.status == CHANGE]
    lines += _stage_6_files(plan.files)
    return lines + [f"  => {result['summary']}" + ("" if result["status"] == NO_CHANGE else
                                                    "; run it without --dry to apply")]


def _executed(title: str, end: RunEnd, applied: Mapping[str, Iterable[str]]) -> list[str]:
    lines = [f"{title} (what this run did)"]
    first_failure = None
    changed = 0
    for operation in end.operations:
        if operation.name.startswith(QUIET_PREFIXES):
            continue
        if operation.failed:
            first_failure = first_failure or operation
            lines.append(f"  failed:  {operation.name} ({', '.join(operation.failed)}): see its lines above")
        if operation.not_run:
            lines.append(f"  not run: {operation.name} ({', '.join(operation.not_run)})")
        if operation.changed and PROOF in operation.name:
            # A proof runs as a Python callback, which pyinfra always counts as a change.
            lines.append(f"  proven:  {operation.name} ({', '.join(operation.changed)})")
        elif operation.changed:
            changed += 1
            detail = _applied_detail(operation.name, applied)
            lines.append(f"  changed: {operation.name} ({', '.join(operation.changed)}){detail}")
    if first_failure is not None or end.failed_hosts:
        where = (f"{first_failure.name} failed on {', '.join(first_failure.failed)}" if first_failure
                 else f"host(s) {', '.join(sorted(end.failed_hosts))} failed")
        lines.append(f"  => DEPLOY INCOMPLETE: {where}; what follows it did not run. Fix it and run again: "
                     f"it changes only what is left")
    elif changed:
        lines.append("  => deploy complete: every stage ran; a second run changes nothing")
    else:
        lines.append("  => nothing to change: everything is as the inventory wants it")
    return lines


def files_summary_lines(title: str, end: RunEnd, files: Iterable[FileDiff]) -> list[str]:
    """The last lines of a deploy that only writes files (deploys/monitoring.py): under ``--dry``
    each file it would change and the verdict; else what its operations did."""
    if end.interrupted:
        return ["", f"{title} (INTERRUPTED by Ctrl-C)", "  => INTERRUPTED: what ran may be partial; run it again "
                f"(exit {EXIT_INTERRUPTED})"]
    if end.executed:
        lines = _executed(title, end, {})
        return [""] + lines[:-1] + [lines[-1].replace("every stage ran", "every file is in place")]
    planned = [f"  would: {_file_change(diff)} on {diff.host}" for diff in files]
    verdict = (f"{len(planned)} file change(s); run it without --dry to apply" if planned
               else "nothing to change: every file is as rendered")
    return ["", f"{title} (review: nothing was changed)", *planned, f"  => {verdict}"]


def _file_change(diff: FileDiff) -> str:
    word = "create" if diff.old is None else "remove" if diff.new is None else "change"
    return f"{word} {diff.path}"


def _applied_detail(name: str, applied: Mapping[str, Iterable[str]]) -> str:
    for domain, changes in applied.items():
        if name.startswith("Stage 5") and name.endswith(f" {domain}") and changes:
            return ": " + "; ".join(changes)
    return ""


def _stage_6_files(files: Iterable[FileDiff]) -> list[str]:
    by_host: dict[str, list[str]] = {}
    for diff in files:
        if diff.operation in STAGE_6_OPERATIONS:
            by_host.setdefault(diff.host, []).append(_file_change(diff))
    return [f"  6   monitoring on {host}: would: {'; '.join(changes)}" for host, changes in by_host.items()]


def _row(check, prefix: str = "") -> str:
    return f"  {check.key:<3} {check.title}: {prefix}{check.evidence}"
