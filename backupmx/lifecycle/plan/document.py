"""The ``--dry`` plan as documents: Markdown for a pull-request comment, JSON for machines.

Pure: ``PlanData`` (the gate report's rows, the record plan per domain, the file
changes noted while preparing) in, text out. Where the data is gathered and when the
files are written is ``backupmx.lifecycle.deploy.run``'s business; the JSON's shape is
documented in docs/ci.md and docs/plan.schema.json (``SCHEMA_VERSION``).

Secrets never reach a document: the values read in this run are passed in
``secrets`` and every occurrence is replaced by ``*MASKED*`` before rendering (no
row or file should hold one; this is the second lock on that door).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from backupmx.core.plan_log import DOCUMENT, FileDiff
from backupmx.core.report import CHANGE, FAIL, STAGE_ORDER, Check
from backupmx.dns.plan import MXPlan
from backupmx.postfix.transaction import unified_diff

SCHEMA_VERSION = 1
MASK = "*MASKED*"
BLOCKED, CHANGES, NO_CHANGE = "blocked", "changes", "no-change"


@dataclass(frozen=True)
class RecordChange:
    action: str  # create | delete
    type: str
    name: str
    priority: int | None
    content: str


@dataclass(frozen=True)
class DomainChanges:
    """One domain's record plan: the changes, or why it cannot be read or applied."""

    domain: str
    changes: tuple[RecordChange, ...] = ()
    refusal: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanData:
    title: str
    gates: tuple[Check, ...]
    blocked: bool
    domains: tuple[DomainChanges, ...] = ()
    files: tuple[FileDiff, ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)


def domain_changes(domain: str, plan: MXPlan, refusal: str | None = None) -> DomainChanges:
    """A stage-5 MX plan as the documents show it: creates first (the order they are applied in).

    ``refusal``: why the domain's stage 5 refuses (the plan's own, or MTA-STS's).
    """
    changes = tuple(RecordChange("create", "MX", r.name, r.priority, r.host) for r in plan.creates) + \
        tuple(RecordChange("delete", "MX", r.name, r.priority, r.host) for r in plan.deletes)
    return DomainChanges(domain, changes, refusal or plan.refusal, tuple(plan.warnings))


# Planned changes that are neither a record nor a noted file: G1's, enabling a domain this
# tool's rollback disabled again at the provider (or configuring provider selfhosted's relay).
# The row says what it "will" do.
_WILL = re.compile(r"\bwill ([^;(]+?)(?::|;|\(|$)")


def _provider_change(check: Check) -> str:
    found = _WILL.search(check.evidence)
    return found.group(1).strip() if found else check.title


def verdict(data: PlanData) -> dict:
    """``status`` blocked / changes / no-change, and the sentence the run's last lines say.

    ``summary`` counts every kind of change: records, files, and G1's provider changes
    (enabling a domain again after this tool's rollback; a relay host configured), which it names.
    """
    records = sum(len(domain.changes) for domain in data.domains)
    files = len(data.files)
    others = [check for check in data.gates if check.status == CHANGE and check.key == "G1"]
    counts = {"record_changes": records, "file_changes": files, "provider_changes": len(others)}
    if data.blocked:
        failed = next((check for check in data.gates if check.status == FAIL), None)
        why = f": stage {failed.key} ({failed.title}) failed" if failed else ""
        return {"status": BLOCKED, "summary": f"nothing will be changed{why}", **counts}
    changing = records or files or any(check.status == CHANGE for check in data.gates)
    parts = [f"{records} record change(s)", f"{files} file change(s)"]
    if others:
        parts.append(f"{len(others)} provider change(s): {'; '.join(_provider_change(check) for check in others)}")
    summary = ("gates allow the deploy to proceed; " + ", ".join(parts) if changing
               else "gates allow the deploy to proceed; nothing to change")
    return {"status": CHANGES if changing else NO_CHANGE, "summary": summary, **counts}


# --- JSON ---------------------------------------------------------------------------


def _sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def _change_word(diff: FileDiff) -> str:
    if diff.old is None:
        return "create"
    if diff.new is None:
        return "remove"
    return "redo" if diff.old == diff.new else "change"


def _diff_lines(diff: FileDiff) -> list[str]:
    return unified_diff(diff.path, diff.old, diff.new)


def _counts(lines: list[str]) -> tuple[int, int]:
    """Lines added and removed, the ``---``/``+++`` header aside."""
    body = lines[2:]
    return (sum(1 for line in body if line.startswith("+")), sum(1 for line in body if line.startswith("-")))


def _masked(text, secrets: tuple[str, ...]):
    if isinstance(text, str):
        for value in secrets:
            text = text.replace(value, MASK)
        return text
    if isinstance(text, list):
        return [_masked(item, secrets) for item in text]
    if isinstance(text, dict):
        return {key: _masked(value, secrets) for key, value in text.items()}
    return text


def _gate_rows(data: PlanData) -> list[Check]:
    rank = {key: index for index, key in enumerate(STAGE_ORDER)}
    return sorted(data.gates, key=lambda check: rank.get(check.key, len(STAGE_ORDER)))


def document(data: PlanData) -> dict:
    """The plan as a JSON-ready dict (docs/plan.schema.json), secrets masked."""
    files = []
    for diff in data.files:
        lines = _diff_lines(diff)
        added, removed = _counts(lines)
        files.append({
            "host": diff.host, "path": diff.path, "operation": diff.operation, "kind": diff.kind,
            "change": _change_word(diff), "before_sha256": _sha256(diff.old), "after_sha256": _sha256(diff.new),
            "lines_added": added, "lines_removed": removed, "diff": "\n".join(lines) + ("\n" if lines else ""),
        })
    doc = {
        "schema_version": SCHEMA_VERSION,
        "title": data.title,
        "gates": [{"stage": c.key, "title": c.title, "status": c.status, "evidence": c.evidence,
                   "next_step": c.next_step} for c in _gate_rows(data)],
        "records": [{"domain": d.domain, "refusal": d.refusal, "warnings": list(d.warnings),
                     "changes": [{"action": r.action, "type": r.type, "name": r.name, "priority": r.priority,
                                  "content": r.content} for r in d.changes]} for d in data.domains],
        "files": files,
        "verdict": verdict(data),
    }
    return _masked(doc, data.secrets)


def to_json(data: PlanData) -> str:
    return json.dumps(document(data), indent=2, sort_keys=False) + "\n"


# --- Markdown -----------------------------------------------------------------------


def _cell(text) -> str:
    text = "" if text is None else str(text)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return fence


def to_markdown(data: PlanData) -> str:
    """The plan for a pull-request comment: verdict, gate table, record changes, each file diff folded."""
    doc = document(data)
    result = doc["verdict"]
    icon = {BLOCKED: "\u274c", CHANGES: "\U0001f4dd", NO_CHANGE: "\u2705"}[result["status"]]
    out = [f"## {_cell(doc['title'])}", "", f"{icon} **{result['status']}**: {_cell(result['summary'])}", "",
           "### Gates", "", "| stage | check | status | evidence |", "|---|---|---|---|"]
    for gate in doc["gates"]:
        evidence = gate["evidence"] + (f" (next: {gate['next_step']})" if gate["next_step"] and
                                       gate["status"] != "pass" else "")
        status = f"**{gate['status']}**" if gate["status"] == FAIL else gate["status"]
        out.append(f"| {_cell(gate['stage'])} | {_cell(gate['title'])} | {status} | {_cell(evidence)} |")
    out += ["", "### DNS record changes", ""]
    if not doc["records"]:
        out.append("Not read (an earlier stage failed).")
    for domain in doc["records"]:
        out.append(f"#### {_cell(domain['domain'])}")
        out.append("")
        if domain["refusal"]:
            out.append(f"**Refused**: {_cell(domain['refusal'])}")
            out.append("")
        if domain["changes"]:
            out += ["| change | type | name | priority | content |", "|---|---|---|---|---|"]
            out += [f"| {r['action']} | {r['type']} | {_cell(r['name'])} | {r['priority']} | {_cell(r['content'])} |"
                    for r in domain["changes"]]
        else:
            out.append("No change.")
        out += [f"- warning: {_cell(warning)}" for warning in domain["warnings"]]
        out.append("")
    out += ["### File changes", ""]
    if not doc["files"]:
        out.append("No change." if result["status"] != BLOCKED else "Not planned (the run is blocked).")
    for item in doc["files"]:
        what = "generated document" if item["kind"] == DOCUMENT else item["operation"]
        summary = (f"<code>{_html(item['host'])}:{_html(item['path'])}</code>: {item['change']} "
                   f"(+{item['lines_added']} \u2212{item['lines_removed']}; {_html(what)})")
        fence = _fence(item["diff"])
        out += ["<details>", f"<summary>{summary}</summary>", "", f"{fence}diff", item["diff"].rstrip("\n"), fence,
                "", "</details>", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
