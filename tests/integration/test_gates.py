"""Gates G1-G4 (stage 2) against the fake ACC, the sandbox relays' STARTTLS and the gate ledger.

Each gate passes on the seeded sandbox and fails for its own reason; a failing
hard gate blocks the report, G3 only ever warns. The fake ACC is reset before
and after every test. A failing gate stopping the deploy: tests/cli/test_deploy_gates.py.
"""

from __future__ import annotations

import datetime
import re
import ssl
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller

from backupmx.core.report import FAIL, PASS, SKIP, WARN, Report
from backupmx.core.settings import load_settings
from backupmx.gates import checks as gates
from backupmx_sandbox.seed import DOMAIN
from support.providers import (
    acc_writes,
    admin,
    dead_port,
    sandbox_data,
    secrets_for,
)


def run(data: dict | None = None, **changes) -> Report:
    data = data or sandbox_data()
    data.update(changes)
    settings = load_settings(data)
    report = Report("test")
    gates.run_gates(settings, secrets_for(settings), report)
    return report


def rows(report: Report, key: str) -> list:
    return [check for check in report.checks if check.key == key]


def only(report: Report, key: str):
    [check] = rows(report, key)
    return check


# --- all pass ------------------------------------------------------------------------


def test_gates_pass_on_the_seeded_sandbox_with_their_evidence(acc):
    report = run()
    assert [c.status for c in report.checks] == [PASS] * 5, report.render()
    assert [c.key for c in report.checks] == ["G1", "G2", "G3", "G3", "G4"]
    assert "mode secondary_mx, user table allow_any, enabled, hold off" in only(report, "G1").evidence
    assert "api mail/domain_get" in only(report, "G1").evidence
    assert "ledger 2026-07-04: sandbox fake ACC" in only(report, "G2").evidence
    for check in rows(report, "G3"):
        assert "issuer O=backupmx sandbox CA" in check.evidence and "hostname matches" in check.evidence
        assert re.search(r"expires \d{4}-\d\d-\d\d \(\d+ days\)", check.evidence)
    assert "equal the provider's (api mail/relay_addresses)" in only(report, "G4").evidence
    assert not report.blocked
    # Read-only: not one write reached the ACC.
    assert acc_writes(acc) == []


# --- G1 ----------------------------------------------------------------------------------


def test_g1_fails_when_the_domain_is_not_in_the_account(acc):
    admin(acc, "state", {"remove": True})
    report = run()
    g1 = only(report, "G1")
    assert g1.status == FAIL and report.blocked
    assert f"{DOMAIN} is not in the rollernet account" in g1.evidence
    assert "as a Secondary MX domain" in g1.next_step and "'allow any'" in g1.next_step


def test_g1_fails_on_the_default_deny_user_table_and_says_what_to_flip(acc):
    admin(acc, "state", {"user_table_default": "deny"})
    report = run()
    g1 = only(report, "G1")
    assert g1.status == FAIL and report.blocked
    assert "user table default is deny" in g1.evidence
    assert g1.next_step == (f"in the ACC, valid-user table of {DOMAIN}: flip the default action from 'deny' to "
                            f"'allow any' (catch-all)")


@pytest.mark.parametrize("state,words", [
    ({"mode": "mail_mirror"}, "mode is mail_mirror, not Secondary MX"),
    ({"enabled": False}, "the domain is disabled"),
])
def test_g1_fails_on_the_wrong_mode_or_a_disabled_domain(acc, state, words):
    admin(acc, "state", state)
    g1 = only(run(), "G1")
    assert g1.status == FAIL and words in g1.evidence


def test_g1_warns_while_accept_and_hold_is_on(acc):
    admin(acc, "state", {"hold": True})
    report = run()
    g1 = only(report, "G1")
    assert g1.status == WARN and "Accept-and-Hold is on" in g1.evidence
    assert "hold=off" in g1.next_step
    assert not report.blocked


def test_acc_down_fails_g1_and_g4_naming_the_endpoint_but_g2_still_reads_the_ledger(acc):
    data = sandbox_data()
    data["provider"]["api_base"] = f"http://127.0.0.1:{dead_port()}/api/api.php"
    data["provider"]["retries"] = 0
    report = run(data)
    assert only(report, "G1").status == FAIL and only(report, "G4").status == FAIL
    assert f"POST {data['provider']['api_base']} (m=mail a=domain_get): no connection" in only(report, "G1").evidence
    assert only(report, "G2").status == PASS
    assert report.blocked


def test_missing_api_key_is_stage_1s_failure_not_repeated_by_the_provider_gates(acc):
    settings = load_settings(sandbox_data())
    report = Report("test")

    class NoKey:
        def get(self, key, allow_env=False):
            from backupmx.core.errors import SecretError
            raise SecretError(f"Vault {settings.vault.addr}: {settings.vault.secret_path} has no key {key!r}")

    gates.run_gates(settings, NoKey(), report)
    for gate in ("G1", "G4"):
        row = only(report, gate)
        assert row.status == SKIP and row.evidence == "not checked: the rollernet API key could not be read (stage 1)"
    assert only(report, "G2").status == PASS


# --- G2 ----------------------------------------------------------------------------------


def test_g2_without_a_ledger_entry_is_a_hard_stop_listing_the_alternatives(acc):
    report = run(gate_ledger={})
    g2 = only(report, "G2")
    assert g2.status == FAIL and report.blocked
    assert "unverified: no gate_ledger.overage entry" in g2.evidence
    for alternative in ("paid tier", "another provider", "self-hosted store-and-forward relay"):
        assert alternative in g2.evidence
    assert "gate_ledger.overage" in g2.next_step


def test_g2_recorded_as_5xx_is_a_hard_stop_listing_the_alternatives(acc):
    report = run(gate_ledger={"overage": {"value": "5xx", "date": "2026-07-06", "evidence": "support ticket 4711"}})
    g2 = only(report, "G2")
    assert g2.status == FAIL and report.blocked
    assert "bounced with 5xx (ledger 2026-07-06: support ticket 4711)" in g2.evidence
    for alternative in ("paid tier", "another provider", "self-hosted store-and-forward relay"):
        assert alternative in g2.evidence


# --- G3 ----------------------------------------------------------------------------------


class _Quiet:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


@pytest.fixture
def bad_tls_relay(world):
    """An SMTP server with STARTTLS and a certificate of the sandbox CA that is expired or for another name."""
    ca_dir = Path(world["ca_cert"]).parent
    ca = trustme.CA.from_pem((ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes())
    started = []

    def start(kind: str) -> str:
        now = datetime.datetime.now(datetime.UTC)
        if kind == "expired":
            leaf = ca.issue_cert("mail.rollernet.us", not_before=now - datetime.timedelta(days=60),
                                 not_after=now - datetime.timedelta(days=2))
        else:
            leaf = ca.issue_cert("smtp.elsewhere.example")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(context)
        port = dead_port()
        controller = Controller(_Quiet(), hostname="127.0.0.1", port=port, tls_context=context,
                                require_starttls=False, server_hostname="mail.rollernet.us")
        controller.start()
        started.append(controller)
        return f"127.0.0.1:{port}"

    yield start
    for controller in started:
        controller.stop()


def g3_with(world, endpoint: str) -> Report:
    data = sandbox_data()
    data["backup_mx"]["smtp_endpoints"]["mail.rollernet.us"] = endpoint
    return run(data)


def test_g3_warns_on_an_expired_certificate_and_does_not_block(acc, bad_tls_relay):
    report = g3_with(acc, bad_tls_relay("expired"))
    first, second = rows(report, "G3")
    assert first.status == WARN and second.status == PASS
    assert "certificate has expired" in first.evidence and "EXPIRED" in first.evidence
    assert "issuer O=backupmx sandbox CA" in first.evidence and "hostname matches" in first.evidence
    assert "informational" in first.next_step
    assert not report.blocked


def test_g3_warns_on_a_certificate_for_another_host_and_does_not_block(acc, bad_tls_relay):
    report = g3_with(acc, bad_tls_relay("wrong_host"))
    first = rows(report, "G3")[0]
    assert first.status == WARN
    assert "hostname does NOT match (certificate names: smtp.elsewhere.example)" in first.evidence
    assert not report.blocked


def test_g3_warns_when_port_25_cannot_be_reached(acc):
    report = g3_with(acc, f"127.0.0.1:{dead_port()}")
    first = rows(report, "G3")[0]
    assert first.status == WARN and "connection refused" in first.evidence
    assert not report.blocked


# --- G4 ----------------------------------------------------------------------------------


def test_g4_fails_on_a_cidr_mismatch_and_prints_the_exact_inventory_change(acc):
    provider_cidrs = ["192.0.2.0/24", "198.51.100.0/24", "2001:db8:3::/48"]
    admin(acc, "state", {"relay_cidrs": provider_cidrs})
    report = run()
    g4 = only(report, "G4")
    assert g4.status == FAIL and report.blocked
    assert "add 2001:db8:3::/48; remove 2001:db8:2::/48" in g4.evidence
    wanted = 'relay_cidrs = ["192.0.2.0/24", "198.51.100.0/24", "2001:db8:3::/48"]'
    assert wanted in g4.evidence and wanted in g4.next_step
    # The printed change is valid inventory data that passes G4.
    assert only(run(relay_cidrs=provider_cidrs), "G4").status == PASS


def test_g4_also_fails_when_the_inventory_has_more_than_the_provider(acc):
    g4 = only(run(relay_cidrs=["192.0.2.0/24", "198.51.100.0/24", "2001:db8:2::/48", "203.0.113.0/24"]), "G4")
    assert g4.status == FAIL and "remove 203.0.113.0/24" in g4.evidence
