"""The change log through the deploys: one JSON line per applied DNS or provider change
(backupmx.core.audit), none for a dry run. The log file on its own: tests/unit/test_audit.py."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from backupmx_sandbox.seed import DOMAIN
from support.providers import (
    output,
    pyinfra,
    secret_values,
)

FIELDS = {"when", "who", "pid", "deploy", "what", "target", "before", "after"}


def audit_file(world) -> Path:
    return Path(world["root"]) / "state" / "audit.jsonl"


def new_lines(world, since: int) -> list[dict]:
    path = audit_file(world)
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines[since:]]


def line_count(world) -> int:
    path = audit_file(world)
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_deploy_rollback_and_hold_each_leave_one_line_per_change(fresh):
    start = line_count(fresh)
    result = pyinfra("deploys/backupmx.py")
    assert result.returncode == 0, output(result)
    created = new_lines(fresh, start)
    assert [(e["what"], e["before"], e["after"]["content"], e["after"]["priority"]) for e in created] == [
        ("dns.create", None, "mail.rollernet.us", 20), ("dns.create", None, "mail2.rollernet.us", 20)]
    for entry in created:
        assert set(entry) == FIELDS and entry["target"] == DOMAIN and entry["deploy"] == "deploys/backupmx.py"
        assert "@" in entry["who"] and entry["after"]["id"]
        when = datetime.datetime.fromisoformat(entry["when"])
        assert when.utcoffset() == datetime.timedelta(0)

    # A second run changes nothing and logs nothing.
    mark = line_count(fresh)
    assert pyinfra("deploys/backupmx.py").returncode == 0
    assert new_lines(fresh, mark) == []

    mark = line_count(fresh)
    assert pyinfra("deploys/maintenance.py", "--data", "hold=on").returncode == 0
    assert pyinfra("deploys/maintenance.py", "--data", "hold=off").returncode == 0
    holds = new_lines(fresh, mark)
    assert [(e["what"], e["before"]["hold"], e["after"]["hold"]) for e in holds] == [
        ("provider.hold", False, True), ("provider.hold", True, False)]

    mark = line_count(fresh)
    result = pyinfra("deploys/rollback.py", "--limit", "controller")
    assert result.returncode == 0, output(result)
    rolled = new_lines(fresh, mark)
    assert [e["what"] for e in rolled] == ["dns.delete", "dns.delete", "provider.disable_requested",
                                           "provider.domain_enabled"]
    assert {e["before"]["id"] for e in rolled[:2]} == {e["after"]["id"] for e in created}
    assert all(e["after"] is None for e in rolled[:2])
    assert rolled[2]["before"] == {"enabled": True} and rolled[2]["after"]["enabled"] is False

    text = audit_file(fresh).read_text()
    assert not [value for value in secret_values(fresh) if value in text]


def test_dry_runs_log_nothing(fresh):
    mark = line_count(fresh)
    assert pyinfra("deploys/backupmx.py", "--dry", yes=False).returncode == 0
    assert new_lines(fresh, mark) == []


