"""An MX plan as text: the record-level diff ``--dry`` and the reports show, and a summary."""

from __future__ import annotations

from backupmx.dns.plan import MXPlan


def diff(plan: MXPlan) -> list[str]:
    """``+``/``-`` lines, creates first (the order they are applied in)."""
    return [f"+ {r.render()}" for r in plan.creates] + [f"- {r.render()}" for r in plan.deletes]


def summary(plan: MXPlan) -> str:
    """The diff, or why the plan is refused, or that nothing changes; then one ``!`` line per warning."""
    verdict = plan.verdict
    if verdict.refusal is not None:
        lines = [f"MX {plan.domain.name}: REFUSED: {verdict.refusal}"]
    elif plan.changed:
        lines = diff(plan)
    else:
        lines = [f"MX {plan.domain.name}: no change"]
    return "\n".join(lines + [f"! {warning}" for warning in verdict.warnings])
