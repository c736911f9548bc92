"""The --dry plan documents as pure functions: PlanData in, Markdown and JSON out (docs/ci.md)."""

from __future__ import annotations

import hashlib
import json

import pytest
from support.plan_documents import details_blocks, gate_table, problems

from backupmx.core.errors import ConfigError
from backupmx.core.plan_log import DOCUMENT, FileDiff, file_changes, note_file_change
from backupmx.core.report import CHANGE, FAIL, PASS, Check
from backupmx.core.settings import BackupMX, Domain, MXHost
from backupmx.dns.plan import MANAGED_MARKER, MXRecord, plan
from backupmx.lifecycle.plan.document import PlanData, document, domain_changes, to_json, to_markdown
from backupmx.lifecycle.plan.output import plan_outputs

ZONE = "viktorbarzin.me"
DOMAIN = Domain(ZONE, ZONE, (MXHost("mail.viktorbarzin.me", 1),))
BACKUP = BackupMX("rollernet", ("mail.rollernet.us", "mail2.rollernet.us"), 20)
SECRET = "s3cr3t-token-value"
GATES = (Check("G4", "relay CIDRs match the provider", PASS, "3 CIDR(s) equal the provider's"),
         Check("0", "inventory data", PASS, "1 domain(s)"),
         Check("5", f"DNS {ZONE}", CHANGE, f"+ MX {ZONE} 20 mail.rollernet.us"))
CIDR = FileDiff("mail", "/etc/postfix/postscreen_access.cidr", None, "192.0.2.0/24 permit\n", "postscreen_whitelist")
MASTER = FileDiff("mail", "/etc/postfix/master.cf", "a\nb\n", "a\nb\n  -o x=|y\n", "postscreen_whitelist")
RUNBOOK = FileDiff("mon", "docs/runbook.md", None, "# Runbook\n```sh\nmailq\n```\n", "local_file", DOCUMENT)


PRIMARY = MXRecord(ZONE, "mail.viktorbarzin.me", 1, id="p")


def fresh_plan() -> PlanData:
    records = plan(DOMAIN, BACKUP, [PRIMARY], record_count=5, quota=200)
    return PlanData(f"backupmx gate report: {ZONE}", GATES, False, (domain_changes(ZONE, records),),
                    (CIDR, MASTER, RUNBOOK))


def test_json_of_a_deploy_with_changes_follows_the_schema_and_holds_every_change():
    doc = json.loads(to_json(fresh_plan()))
    assert problems(doc) == []
    assert doc["schema_version"] == 1
    assert [gate["stage"] for gate in doc["gates"]] == ["0", "G4", "5"]  # stage order, as the terminal
    assert doc["records"][0]["changes"] == [
        {"action": "create", "type": "MX", "name": ZONE, "priority": 20, "content": "mail.rollernet.us"},
        {"action": "create", "type": "MX", "name": ZONE, "priority": 20, "content": "mail2.rollernet.us"}]
    cidr, master, runbook = doc["files"]
    assert cidr["change"] == "create" and cidr["before_sha256"] is None
    assert cidr["after_sha256"] == hashlib.sha256(b"192.0.2.0/24 permit\n").hexdigest()
    assert master["change"] == "change" and (master["lines_added"], master["lines_removed"]) == (1, 0)
    assert master["before_sha256"] == hashlib.sha256(b"a\nb\n").hexdigest()
    assert "+  -o x=|y" in master["diff"].splitlines()
    assert runbook["kind"] == "document"
    assert doc["verdict"] == {"status": "changes", "record_changes": 2, "file_changes": 3, "provider_changes": 0,
                              "summary": "gates allow the deploy to proceed; 2 record change(s), 3 file change(s)"}


def test_markdown_has_the_gate_table_records_and_each_diff_folded():
    text = to_markdown(fresh_plan())
    assert text.startswith(f"## backupmx gate report: {ZONE}\n")
    assert "**changes**: gates allow the deploy to proceed; 2 record change(s), 3 file change(s)" in text
    assert gate_table(text)[0] == ["0", "inventory data", "pass", "1 domain(s)"]
    assert f"| create | MX | {ZONE} | 20 | mail2.rollernet.us |" in text
    blocks = details_blocks(text)
    assert len(blocks) == 3
    assert "master.cf</code>: change (+1 \u22120; postscreen_whitelist)" in blocks[1][0]
    assert "+  -o x=|y" in blocks[1][1]  # inside a code block a pipe stays as it is
    # A diff holding ``` gets a longer fence, so it cannot close the block early.
    assert "````diff" in blocks[2][1] and "generated document" in blocks[2][0]


def test_no_change_plan():
    published = [PRIMARY] + [MXRecord(ZONE, backup, 20, id=backup, comment=MANAGED_MARKER) for backup in BACKUP.hosts]
    records = plan(DOMAIN, BACKUP, published, record_count=7, quota=200)
    data = PlanData("t", (Check("5", f"DNS {ZONE}", PASS, "already published"),), False,
                    (domain_changes(ZONE, records),))
    doc = document(data)
    assert problems(doc) == []
    assert doc["verdict"]["status"] == "no-change" and doc["files"] == []
    text = to_markdown(data)
    assert "**no-change**: gates allow the deploy to proceed; nothing to change" in text
    assert "No change." in text and "<details>" not in text


def test_blocked_plan_names_the_failed_gate_and_its_next_step():
    gates = (Check("G4", "relay CIDRs match the provider", FAIL, "remove 198.51.100.0/24 | add 192.0.2.0/24",
                   "fix relay_cidrs"),)
    data = PlanData("t", gates, True)
    doc = document(data)
    assert problems(doc) == []
    assert doc["verdict"]["status"] == "blocked" and doc["records"] == []
    assert doc["verdict"]["summary"] == ("nothing will be changed: stage G4 (relay CIDRs match the "
                                         "provider) failed")
    text = to_markdown(data)
    # The status word once, not "blocked: BLOCKED".
    assert "**blocked**: nothing will be changed: stage G4" in text and "BLOCKED" not in text
    row = gate_table(text)[0]
    assert row[2] == "**FAIL**" and row[3] == r"remove 198.51.100.0/24 \| add 192.0.2.0/24 (next: fix relay_cidrs)"
    assert "Not read (an earlier stage failed)." in text


def test_secret_values_are_masked_everywhere():
    leaky = FileDiff("mail", "/etc/x", None, f"token={SECRET}\n", "op")
    data = PlanData("t", (Check("1", "secrets", FAIL, f"bad {SECRET}"),), True, (), (leaky,), (SECRET,))
    for text in (to_json(data), to_markdown(data)):
        assert SECRET not in text and "*MASKED*" in text


def test_schema_checker_catches_a_wrong_document():
    doc = json.loads(to_json(fresh_plan()))
    doc["files"][0]["before_sha256"] = "nope"
    doc["verdict"]["status"] = "maybe"
    del doc["gates"][0]["evidence"]
    found = problems(doc)
    assert any("before_sha256" in p for p in found) and any("verdict.status" in p for p in found)
    assert any("missing evidence" in p for p in found)


def test_plan_paths_are_checked_before_anything_is_contacted(tmp_path):
    outputs = plan_outputs({"plan_markdown": str(tmp_path / "plan.md")})
    assert outputs.markdown == tmp_path / "plan.md" and outputs.json is None and outputs
    assert not plan_outputs({})
    for data, words in (({"plan_json": str(tmp_path / "no" / "p.json")}, f"directory {tmp_path / 'no'} does not "
                         "exist"), ({"plan_json": str(tmp_path)}, "is a directory"),
                        ({"plan_markdown": 3}, "3 is not a path")):
        with pytest.raises(ConfigError) as raised:
            plan_outputs(data)
        assert words in str(raised.value) and str(raised.value).startswith("inventory data plan_")


def test_outside_a_pyinfra_run_nothing_is_noted():
    note_file_change("mail", "/etc/x", None, "x\n", "op")
    assert file_changes() == []


def test_the_verdict_counts_enabling_a_domain_again_after_a_rollback():
    # After this tool's rollback, the deploy's only change may be G1's: enable the domain at the provider.
    published = [PRIMARY] + [MXRecord(ZONE, backup, 20, id=backup, comment=MANAGED_MARKER) for backup in BACKUP.hosts]
    g1 = Check("G1", f"provider domain {ZONE}", CHANGE,
               f"{ZONE}: present, mode secondary_mx, user table allow_any, disabled, hold off; will enable {ZONE} "
               "again before stage 5: disabled by this tool's rollback (2026-07-10T10:00:00+00:00, change log), "
               "nothing changed it since (api mail/domain_get)")
    data = PlanData("t", (g1,), False, (domain_changes(ZONE, plan(DOMAIN, BACKUP, published, 7, 200)),))
    doc = document(data)
    assert problems(doc) == []
    assert doc["verdict"] == {
        "status": "changes", "record_changes": 0, "file_changes": 0, "provider_changes": 1,
        "summary": f"gates allow the deploy to proceed; 0 record change(s), 0 file change(s), 1 provider change(s): "
                   f"enable {ZONE} again before stage 5"}
