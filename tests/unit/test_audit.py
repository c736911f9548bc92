"""The change log's file (backupmx.core.audit): where the inventory puts it, and an
unwritable one only warns. The lines the deploys write: tests/cli/test_audit_log.py."""

from __future__ import annotations

import sys

from support.seed import seed_settings

from backupmx.core import audit
from backupmx_sandbox.seed import DOMAIN


def test_audit_log_path_from_the_inventory_and_unwritable_log_only_warns(tmp_path, capsys):
    settings = seed_settings(audit_log=str(tmp_path / "x" / "changes.jsonl"))
    entry = audit.append(settings, "dns.create", DOMAIN, None, {"content": "mail.rollernet.us"})
    assert audit.read(settings) == [entry]
    (tmp_path / "afile").write_text("")  # a file where the log's directory should be
    blocked = seed_settings(audit_log=str(tmp_path / "afile" / "log.jsonl"))
    audit.append(blocked, "dns.delete", DOMAIN, {"content": "x"}, None)
    assert "change not written to the audit log" in capsys.readouterr().err


def test_a_rollback_killed_with_its_disable_request_in_flight_is_still_ours(tmp_path, monkeypatch):
    """The rollback logs ``provider.disable_requested`` before the request: killed before the answer
    (no ``provider.domain_enabled`` line), the next deploy still knows this tool disabled the domain."""
    settings = seed_settings(audit_log=str(tmp_path / "changes.jsonl"))
    monkeypatch.setattr(sys, "argv", ["pyinfra", "inventory/production.py", "deploys/rollback.py"])
    audit.append(settings, "dns.delete", DOMAIN, {"content": "mail.rollernet.us"}, None)
    requested = audit.append(settings, audit.DISABLE_REQUESTED, DOMAIN, {"enabled": True}, {"enabled": False})
    assert audit.disabled_by_rollback(settings, DOMAIN) == requested
    monkeypatch.setattr(sys, "argv", ["pyinfra", "inventory/production.py", "deploys/backupmx.py"])
    audit.append(settings, "dns.create", DOMAIN, None, {"content": "mail.rollernet.us"})
    assert audit.disabled_by_rollback(settings, DOMAIN) is None  # a later change: no longer ours to undo
