"""The change log's file (backupmx.core.audit): where the inventory puts it, and an
unwritable one only warns. The lines the deploys write: tests/cli/test_audit_log.py."""

from __future__ import annotations

from seedkit import seed_settings

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
