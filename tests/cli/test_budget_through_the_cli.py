"""The provider's budget (issue #22) through the pyinfra CLI, in the sandbox: the drill and the canary keep to
this tool's share of Roller Network's free tier, --dry shows what they would spend, the gate report says how long
an outage the quota covers (docs/budget.md).

The sandbox inventory gives its fake Roller Network no budget (the suite sends more in a day than the free
tier allows in a week); every run here gives it back with ``--data provider=...`` (the profile without
``budget``: the free tier) and keeps its spend ledger in a state dir of its own (``--data state_dir=...``).
Pure parts: tests/unit/test_budget.py.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
from pathlib import Path

import pytest

from support.mailhost import start_postfix_if_down
from support.providers import PROJECT_ROOT, output, provider_data, pyinfra, relayed_ids, report_row

CANARY, DRILL, DEPLOY = "deploys/canary.py", "deploys/failover_test.py", "deploys/backupmx.py"
LARGE = 1_500_000  # one large message fits this tool's 2.5 MB of the free tier's 10 MB; a second does not


def mailhost_data() -> dict:
    """The sandbox inventory's data of its mail host (it reads .sandbox/world.json)."""
    spec = importlib.util.spec_from_file_location("sandbox_inventory_budget", PROJECT_ROOT / "inventory" / "sandbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.mailhosts[0][1])


def free_tier(world, state_dir: Path, **budget) -> list[str]:
    """``--data`` for Roller Network's free tier (``budget`` laid over it) and a spend ledger in ``state_dir``."""
    profile = provider_data(world) if not budget else provider_data(world, budget=budget)
    return ["--data", profile, "--data", "state_dir=" + json.dumps(str(state_dir))]


def ledger(state_dir: Path) -> list[dict]:
    path = state_dir / "spend.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "pyinfra error" in line]


@pytest.fixture(scope="module")
def published(world):
    """The live state the drill and the canary need: stages 3-5 applied (whitelist live, backup MX in DNS)."""
    result = pyinfra(DEPLOY)
    assert result.returncode == 0, output(result)
    return world


@pytest.fixture
def budget_world(published, sandbox):
    yield published
    start_postfix_if_down(published, sandbox)


# --- --dry: what they would spend, what is left -------------------------------------------------


def test_dry_runs_show_what_they_would_spend_and_what_is_left(budget_world, tmp_path):
    before = relayed_ids(budget_world)
    canary = pyinfra(CANARY, *free_tier(budget_world, tmp_path), dry=True, timeout=120)
    text = output(canary)
    assert canary.returncode == 0, text
    assert (f"canary: would spend 2 messages, about 4 KB, of rollernet's budget for {budget_world['zone']}: "
            "50 messages / 2.5 MB left of this tool's 50 messages / 2.5 MB (a quarter of 200 messages / 10 MB per 7 "
            "days); after this run 48 messages / 2.5 MB") in text
    drill = pyinfra(DRILL, *free_tier(budget_world, tmp_path), dry=True, timeout=120)
    text = output(drill)
    assert drill.returncode == 0, text
    assert ("failover 3: would send no large message: off by default: rollernet is metered (provider.budget)"
            in text), text
    assert (f"failover 3: would spend 4 messages, about 8 KB, of rollernet's budget for {budget_world['zone']}: "
            "50 messages / 2.5 MB left") in text
    assert relayed_ids(budget_world) == before and ledger(tmp_path) == []  # nothing sent, nothing counted


# --- the drill ------------------------------------------------------------------------------------


def test_two_drills_in_a_row_stay_within_the_budget_and_the_second_says_why_it_sends_less(budget_world, tmp_path):
    failover = {**mailhost_data()["failover"], "large_message_bytes": LARGE}
    args = [*free_tier(budget_world, tmp_path), "--data", "failover=" + json.dumps(failover)]
    first = pyinfra(DRILL, *args, timeout=180)
    text = output(first)
    assert first.returncode == 0 and "=> drill passed" in text, text
    assert re.search(r"large message via \S+ +pass", text), text
    assert [entry["what"] for entry in ledger(tmp_path)] == ["drill probe"] * 3 + ["drill large", "drill spam"]

    second = pyinfra(DRILL, *args, timeout=180)
    text = output(second)
    assert second.returncode == 0 and "=> drill passed" in text, text
    assert ("failover 1: large message left out: with its 1500000 bytes the drill (5 messages, 1.51 MB) would go "
            f"over this tool's share of rollernet's budget for {budget_world['zone']}: ") in text, text
    assert "enough frees up at " in text and "large message via" not in text
    spent = ledger(tmp_path)
    assert [entry["what"] for entry in spent[5:]] == ["drill probe"] * 3 + ["drill spam"]
    assert sum(entry["bytes"] for entry in spent) <= 2_500_000 and len(spent) <= 50  # a quarter of the free tier


# --- the canary -----------------------------------------------------------------------------------


def test_a_canary_is_counted_and_one_over_the_budget_refuses_sending_nothing(budget_world, tmp_path):
    passed = pyinfra(CANARY, *free_tier(budget_world, tmp_path), timeout=120)
    assert passed.returncode == 0 and "=> canary passed" in output(passed), output(passed)
    assert [(entry["what"], entry["domain"]) for entry in ledger(tmp_path)] == [("canary", budget_world["zone"])] * 2

    # 47 more this week: 49 of this tool's 50 messages spent, the next canary needs 2.
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    with (tmp_path / "spend.jsonl").open("a") as file:
        for index in range(47):
            file.write(json.dumps({"when": (when + datetime.timedelta(minutes=index)).isoformat(),
                                   "provider": "rollernet", "domain": budget_world["zone"], "messages": 1,
                                   "bytes": 1200, "what": "canary"}) + "\n")
    before, lines = relayed_ids(budget_world), (tmp_path / "spend.jsonl").read_text()
    refused = pyinfra(CANARY, *free_tier(budget_world, tmp_path), timeout=120)
    text = output(refused)
    assert refused.returncode != 0, text
    assert "Traceback" not in text
    [line] = error_lines(text)
    assert (f"canary refused by the budget, nothing sent: the canary for {budget_world['zone']} (2 messages, 4 KB) "
            "would go over this tool's share of rollernet's budget") in line, line
    assert re.search(r"1 message / 2\.4\d MB left of this tool's 50 messages / 2\.5 MB", line), line
    assert "enough frees up at " in line
    assert relayed_ids(budget_world) == before  # nothing reached the relays
    assert (tmp_path / "spend.jsonl").read_text() == lines


def test_a_spend_ledger_that_cannot_be_read_stops_the_canary_with_one_line(budget_world, tmp_path):
    (tmp_path / "spend.jsonl").write_text("{not json\n")
    before = relayed_ids(budget_world)
    result = pyinfra(CANARY, *free_tier(budget_world, tmp_path), timeout=120)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text, text
    [line] = error_lines(text)
    assert f"spend ledger {tmp_path}/spend.jsonl line 1: not JSON; fix or delete that line" in line, line
    assert relayed_ids(budget_world) == before


# --- the gate report: how long an outage the quota covers ---------------------------------------------


def synthetic_log(path: Path, per_day: int, size: int) -> None:
    """31 days (30 complete, and today) of ``per_day`` messages of ``size`` bytes received from another server."""
    lines = []
    today = datetime.date.today()
    for back in range(30, -1, -1):
        stamp = (today - datetime.timedelta(days=back)).strftime("%b %d 09:00:00")
        for n in range(per_day):
            qid = f"{back:02d}{n:04d}AB"
            lines += [f"{stamp} mail postfix/smtpd[7]: {qid}: client=mail-ot1.example.org[203.0.113.5]",
                      f"{stamp} mail postfix/qmgr[8]: {qid}: from=<s@example.org>, size={size}, nrcpt=1 (queue active)",
                      f"{stamp} mail postfix/qmgr[8]: {qid}: removed"]
    path.write_text("\n".join(lines) + "\n")


# The sandbox inventory with the mail host's log elsewhere (``--data mailhost=`` would give every host one).
LOG_INVENTORY = '''
import runpy
_inventory = runpy.run_path({sandbox!r})
mailhosts = [(name, {{**data, "mailhost": {{**data["mailhost"], "mail_log": {log!r}}}}})
             for name, data in _inventory["mailhosts"]]
controller = _inventory["controller"]
monitoring = _inventory["monitoring"]
'''


def test_the_gate_report_says_how_long_an_outage_the_quota_covers(world, tmp_path):
    log = tmp_path / "mail.log"
    synthetic_log(log, 30, 100_000)  # 3 MB a day: the 7.5 MB the free tier leaves for an outage last 60 h
    inventory = tmp_path / "inventory.py"
    inventory.write_text(LOG_INVENTORY.format(sandbox=str(PROJECT_ROOT / "inventory" / "sandbox.py"), log=str(log)))
    args = ["--data", "state_dir=" + json.dumps(str(tmp_path / "state"))]
    result = pyinfra(DEPLOY, "--data", provider_data(world), *args, dry=True, inventory=inventory)
    text = output(result)
    assert result.returncode == 0, text
    row = report_row(result.stdout, "G2", "outage covered by the quota")
    assert row.status == "warn", text
    assert row.evidence.startswith("sandbox-mailhost: about 60 h at your last 30 days' volume (30 messages, 3 MB a "
                                   "day); about 60 h at the last 7 days' volume"), row
    assert "150 messages / 7.5 MB of rollernet's 200 messages / 10 MB per 7 days are left for an outage" in row.evidence
    assert ("next: an outage longer than 60 h goes over the quota, under the 72 h wanted "
            "(provider.budget.min_outage_hours)") in text

    relaxed = pyinfra(DEPLOY, "--data", provider_data(world, budget={"min_outage_hours": 48}), *args, dry=True,
                      inventory=inventory)
    assert report_row(relaxed.stdout, "G2", "outage covered").status == "pass", output(relaxed)
