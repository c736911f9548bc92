"""The --dry plan as documents (docs/ci.md): ``--data plan_markdown=PATH plan_json=PATH`` for a
deploy with changes, a no-op and a failed gate; the JSON checked against docs/plan.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.plan_documents import details_blocks, gate_table, problems

from backupmx.monitoring.settings import FILES
from support.mailhost import pristine_state, restore
from support.providers import acc_writes, admin, cloudflare_writes, output, pyinfra, secret_values


@pytest.fixture
def stage6_absent(fresh):
    """Stage 6 as before the first deploy: the sandbox's monitoring files and rendered pages removed."""
    root = Path(fresh["root"])
    for path in [root / "monitoring" / name for name in FILES] + [root / "docs" / "runbook.md",
                                                                  root / "docs" / "architecture.md"]:
        path.unlink(missing_ok=True)


def deploy(*args: str, dry: bool = False):
    return pyinfra("deploys/backupmx.py", *args, dry=dry)


def dry_with_plan(tmp_path, *args: str):
    markdown, plan_json = tmp_path / "plan.md", tmp_path / "plan.json"
    result = deploy("--data", f"plan_markdown={markdown}", "--data", f"plan_json={plan_json}", *args, dry=True)
    return result, markdown.read_text(), json.loads(plan_json.read_text())


def no_secrets(world, *texts: str) -> None:
    for value in secret_values(world):
        assert all(value not in text for text in texts)


def test_a_deploy_with_changes(fresh, stage6_absent, tmp_path):
    world = fresh
    restore(world, pristine_state(world))  # the mail host as before any deploy: its files are in the plan
    result, markdown, doc = dry_with_plan(tmp_path)
    assert result.returncode == 0, output(result)
    assert problems(doc) == []
    assert doc["verdict"]["status"] == "changes"
    assert {(gate["stage"], gate["status"]) for gate in doc["gates"] if gate["stage"].startswith("G")} == \
        {("G1", "pass"), ("G2", "pass"), ("G3", "pass"), ("G4", "pass")}
    [domain] = doc["records"]
    assert domain["domain"] == world["zone"] and domain["refusal"] is None
    assert sorted((c["action"], c["type"], c["priority"], c["content"]) for c in domain["changes"]) == \
        [("create", "MX", 20, "mail.rollernet.us"), ("create", "MX", 20, "mail2.rollernet.us")]
    files = {(item["operation"], item["path"].rsplit("/", 1)[1]): item for item in doc["files"]}
    master = files[("postscreen_whitelist", "master.cf")]
    assert master["change"] == "change" and master["before_sha256"] != master["after_sha256"]
    assert files[("postscreen_whitelist", "postscreen_access.cidr")]["before_sha256"] is None
    assert {name for operation, name in files if operation == "monitoring_files"} == \
        {"blackbox-backupmx.yml", "backupmx-alerts.rules.yml", "prometheus-backupmx.yml"}
    # The Markdown: the same gates as the terminal's report, the records, one folded diff per file.
    assert "**changes**: gates allow the deploy to proceed; 2 record change(s)" in markdown
    assert [row[0] for row in gate_table(markdown)] == [gate["stage"] for gate in doc["gates"]]
    assert f"| create | MX | {world['zone']} | 20 | mail2.rollernet.us |" in markdown
    assert len(details_blocks(markdown)) == len(doc["files"])
    assert any("master.cf</code>: change" in summary and "postscreen_access_list" in body
               for summary, body in details_blocks(markdown))
    # The terminal: the generated pages as one line each, their full diff only in the plan.
    terminal = output(result)
    summaries = [line for line in terminal.splitlines() if "local_file: " in line]
    assert len(summaries) == 2 and all(f"(full diff: in the plan {tmp_path / 'plan.md'}, or --data "
                                       "full_docs_diff=true)" in line for line in summaries), terminal
    assert "# Runbook: backup MX" not in terminal and "# Runbook: backup MX" in markdown
    no_secrets(world, markdown, json.dumps(doc), terminal)
    assert acc_writes(world) == [] and cloudflare_writes(world) == []


def test_full_docs_diff_shows_the_pages_in_the_terminal(fresh, stage6_absent):
    result = deploy("--data", "full_docs_diff=true", dry=True)
    assert result.returncode == 0, output(result)
    assert "+# Runbook: backup MX for viktorbarzin.me" in output(result)
    assert "full diff:" not in output(result)


def test_a_no_op_after_the_deploy(fresh, stage6_absent, tmp_path):
    world = fresh
    applied = deploy()
    assert applied.returncode == 0, output(applied)
    result, markdown, doc = dry_with_plan(tmp_path)
    assert result.returncode == 0, output(result)
    assert problems(doc) == []
    assert doc["verdict"] == {"status": "no-change", "summary": "gates allow the deploy to proceed; nothing to "
                              "change", "record_changes": 0, "file_changes": 0, "provider_changes": 0}
    assert doc["files"] == [] and doc["records"][0]["changes"] == []
    assert all(gate["status"] in ("pass", "warn") for gate in doc["gates"]), doc["gates"]
    assert "**no-change**" in markdown and "<details>" not in markdown
    no_secrets(world, markdown, json.dumps(doc))


@pytest.mark.parametrize("acc_state,gate,words", [
    ({"relay_cidrs": ["192.0.2.0/24"]}, "G4", "remove 198.51.100.0/24, 2001:db8:2::/48"),
    ({"enabled": False}, "G1", "disabled"),
], ids=["cidr-mismatch", "domain-disabled"])
def test_a_failed_gate(fresh, tmp_path, acc_state, gate, words):
    world = fresh
    admin(world, "state", acc_state)
    result, markdown, doc = dry_with_plan(tmp_path)
    assert result.returncode != 0 and "Traceback" not in output(result), output(result)
    assert problems(doc) == []
    assert doc["verdict"]["status"] == "blocked"
    assert doc["verdict"]["summary"].startswith(f"nothing will be changed: stage {gate} ")
    failed = [g for g in doc["gates"] if g["status"] == "FAIL"]
    assert [g["stage"] for g in failed] == [gate] and words in failed[0]["evidence"]
    assert doc["files"] == [] and doc["records"] == []
    assert any(row[0] == gate and row[2] == "**FAIL**" for row in gate_table(markdown)), markdown
    assert "**blocked**: nothing will be changed" in markdown and "BLOCKED" not in markdown
    no_secrets(world, markdown, json.dumps(doc))


def test_a_plan_path_in_a_missing_directory_is_one_line(world, tmp_path):
    result = deploy("--data", f"plan_json={tmp_path}/nowhere/plan.json", dry=True)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text
    assert f"inventory data plan_json: directory {tmp_path}/nowhere does not exist; create it or name another " \
           "path" in text
