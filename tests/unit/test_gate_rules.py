"""Gate rules that need no provider and no relay: G2 and G4 from the production
inventory's ledger alone, and STARTTLS certificate name matching (RFC 6125).
The gates against the fake ACC and the sandbox relays: tests/integration/test_gates.py."""

from __future__ import annotations

import pytest

from backupmx.core.errors import SecretError
from backupmx.core.report import FAIL, PASS, SKIP, Report
from backupmx.core.settings import load_settings
from backupmx.gates import checks as gates
from backupmx.gates.starttls import hostname_matches
from backupmx.providers.ledger import LedgerProvider
from backupmx_sandbox.seed import DOMAIN


def test_production_without_the_g2_entry_stops_at_g2():
    # The production inventory's ledger as written there: G2 deliberately absent.
    data = {
        "domains": [{"name": DOMAIN, "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
        "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us", "mail2.rollernet.us"], "priority": 20},
        "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24"],
        "vault": {"addr": "https://vault.example.net", "secret_path": "secret/viktor"},
        "provider": {"name": "rollernet", "backend": "api", "user": "viktor", "api": {"facts": {"relay_cidrs": None}}},
        "gate_ledger": {"relay_cidrs": {"value": ["162.216.242.0/24", "72.51.58.0/24"], "date": "2026-07-04",
                                        "evidence": "seed design 2026-07-04"}},
    }
    settings = load_settings(data)
    [g2] = gates.g2_overage(settings, LedgerProvider(settings))
    assert g2.status == FAIL
    [g4] = gates.g4_relay_cidrs(settings, LedgerProvider(settings))
    assert g4.status == PASS and "ledger 2026-07-04: seed design" in g4.evidence


@pytest.mark.parametrize("host,names,expected", [
    ("mail.rollernet.us", ["mail.rollernet.us"], True),
    ("mail.rollernet.us", ["*.rollernet.us"], True),
    ("a.mail.rollernet.us", ["*.rollernet.us"], False),
    ("rollernet.us", ["*.rollernet.us"], False),
    ("mail2.rollernet.us", ["mail.rollernet.us"], False),
    ("MAIL.rollernet.us.", ["mail.rollernet.us"], True),
])
def test_hostname_matching(host, names, expected):
    assert hostname_matches(host, names) is expected


def test_a_key_vault_could_not_give_is_stage_1s_row_alone(monkeypatch):
    # Stage 1 reports why the ACC key could not be read; G1 and G4 must not repeat it as their own failure.
    data = {
        "domains": [{"name": DOMAIN, "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
        "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us", "mail2.rollernet.us"], "priority": 20},
        "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24"],
        "vault": {"addr": "https://vault.example.net", "secret_path": "secret/viktor"},
        "provider": {"name": "rollernet", "backend": "api", "user": "viktor"},
    }
    settings = load_settings(data)
    monkeypatch.setattr(gates, "g3_starttls", lambda *args: [])  # no SMTP here

    class NoVault:
        def get(self, key, allow_env=False):
            raise SecretError("Vault https://vault.example.net: unreachable (ConnectionError); check vault.addr")

    report = Report("test")
    gates.run_gates(settings, NoVault(), report)
    rows = {check.key: check for check in report.checks}
    for gate in ("G1", "G4"):
        assert rows[gate].status == SKIP, rows[gate]
        assert "unreachable" not in rows[gate].evidence and "(stage 1)" in rows[gate].evidence

