"""Gates G1-G4 through the deploy: the dry run prints every gate before anything changes,
and a failing hard gate stops the deploy before stage 3 (no write anywhere). The gates
themselves against the fake ACC: tests/integration/test_gates.py."""

from __future__ import annotations

import pytest

from support.providers import (
    acc_writes,
    admin,
    cloudflare_admin,
    cloudflare_writes,
    output,
    pyinfra,
    report_rows,
    secret_values,
)


@pytest.fixture
def clean_logs(world, acc):
    cloudflare_admin(world, "POST", "reset")
    cloudflare_admin(world, "DELETE", "requests")
    yield
    cloudflare_admin(world, "POST", "reset")


def deploy(*args: str, dry: bool = False):
    return pyinfra("deploys/backupmx.py", *args, dry=dry)


def test_dry_run_prints_every_gate_before_anything_changes(clean_logs, world):
    result = deploy(dry=True)
    assert result.returncode == 0, output(result)
    gates = [row for row in report_rows(result.stdout) if row.stage in ("G1", "G2", "G3", "G4")]
    assert {row.stage for row in gates} == {"G1", "G2", "G3", "G4"}, result.stdout
    assert [row for row in gates if row.status != "pass"] == [], result.stdout
    assert acc_writes(world) == [] and cloudflare_writes(world) == []
    assert not any(value in output(result) for value in secret_values(world))


@pytest.mark.parametrize("acc_state,data,gate,words", [
    ({"remove": True}, None, "G1", "is not in the rollernet account"),
    ({"user_table_default": "deny"}, None, "G1", "user table default is deny"),
    (None, "gate_ledger={}", "G2", "unverified: no gate_ledger.overage entry"),
    (None, 'gate_ledger={"overage": {"value": "5xx", "date": "2026-07-06", "evidence": "ticket 4711"}}', "G2",
     "bounced with 5xx"),
    ({"relay_cidrs": ["192.0.2.0/24"]}, None, "G4", "remove 198.51.100.0/24, 2001:db8:2::/48"),
], ids=["domain-missing", "default-deny", "no-g2-entry", "g2-5xx", "cidr-mismatch"])
def test_a_failing_gate_stops_the_deploy_before_any_change(clean_logs, world, acc_state, data, gate, words):
    if acc_state:
        admin(world, "state", acc_state)
    result = deploy(*(["--data", data] if data else []))
    text = output(result)
    assert result.returncode != 0, text
    assert any(row.stage == gate and row.status == "FAIL" for row in report_rows(result.stdout)), text
    assert words in text
    assert "Traceback" not in text
    # Stopped before stage 3: no operation ran, nothing was written anywhere.
    assert "Beginning operation run" not in text
    assert acc_writes(world) == [] and cloudflare_writes(world) == []
