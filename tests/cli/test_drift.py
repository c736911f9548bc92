"""The drift check: the pure comparisons, and deploys/drift.py through the pyinfra CLI
against the sandbox (zone state set with the official Cloudflare SDK)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from backupmx.core.settings import load_settings
from backupmx.lifecycle import drift as dr
from providerkit import output, pyinfra

SEED = load_settings({
    "domains": [{"name": "viktorbarzin.me", "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
    "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us", "mail2.rollernet.us"], "priority": 20},
    "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24"],
    "vault": {"addr": "https://vault.example", "secret_path": "secret/viktor"},
})
DOMAIN = SEED.domains[0]
FULL = {(1, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}


# ---------------------------------------------------------------------- pure


def messages(findings):
    return [(finding.status, finding.message) for finding in findings]


def test_the_full_mx_set_is_no_drift():
    [finding] = dr.mx_drift(DOMAIN, SEED, FULL, "DNS x")
    assert finding.status == dr.OK


def test_a_missing_backup_and_a_missing_primary_are_named():
    assert messages(dr.mx_drift(DOMAIN, SEED, FULL - {(20, "mail2.rollernet.us")}, "DNS x")) == [
        (dr.DRIFT, "backup 20 mail2.rollernet.us is missing (DNS x)")]
    assert messages(dr.mx_drift(DOMAIN, SEED, FULL - {(1, "mail.viktorbarzin.me")}, "DNS x")) == [
        (dr.DRIFT, "primary 1 mail.viktorbarzin.me is missing (DNS x)")]


def test_a_wrong_preference_and_a_foreign_record():
    live = {(1, "mail.viktorbarzin.me"), (10, "mail.rollernet.us"), (20, "mail2.rollernet.us"), (5, "mx.evil.test")}
    assert messages(dr.mx_drift(DOMAIN, SEED, live, "DNS x")) == [
        (dr.DRIFT, "backup mail.rollernet.us has preference 10, wanted 20 (DNS x)"),
        (dr.DRIFT, "unexpected MX 5 mx.evil.test (DNS x)"),
    ]


def test_no_mx_at_all():
    findings = dr.mx_drift(DOMAIN, SEED, set(), "DNS x")
    assert len(findings) == 3 and all(finding.status == dr.DRIFT for finding in findings)


def test_cidr_lists_compare_as_networks():
    assert dr.cidr_drift("whitelist", "h", ["192.0.2.0/24"], ["192.0.2.0/24"], "f")[0].status == dr.OK
    [finding] = dr.cidr_drift("whitelist", "h", ["192.0.2.0/24", "2001:db8::/48"], ["192.0.2.0/24", "198.51.100.0/24"], "f")
    assert finding.status == dr.DRIFT
    assert finding.message == "f lacks 2001:db8::/48; has 198.51.100.0/24 beyond the inventory"
    assert dr.cidr_drift("whitelist", "h", ["192.0.2.0/24"], ["nonsense"], "f")[0].message == \
        "f lists nonsense, which is not a network"


def test_provider_cidr_drift_says_what_to_set():
    [finding] = dr.provider_cidr_drift(SEED, ["162.216.242.0/24", "72.51.59.0/24"], "api mail/relay_addresses")
    assert finding.status == dr.DRIFT
    assert "lacks 72.51.58.0/24" in finding.message and "has 72.51.59.0/24 beyond the inventory" in finding.message
    assert 'set relay_cidrs = ["162.216.242.0/24", "72.51.59.0/24"]' in finding.message
    assert dr.provider_cidr_drift(SEED, ["72.51.58.0/24", "162.216.242.0/24"], "x")[0].status == dr.OK


def test_files_drift():
    assert dr.files_drift("monitoring", "h", {"/a": "x"}, {"/a": "x"})[0].status == dr.OK
    assert messages(dr.files_drift("monitoring", "h", {"/a": "x", "/b": "y"}, {"/a": "z", "/b": None})) == [
        (dr.DRIFT, "/a differs"), (dr.DRIFT, "/b is missing")]


def test_summary_prints_no_drift_or_one_line_per_drift_and_notes_last():
    ok = dr.Finding("mx", "d", dr.OK, "fine")
    note = dr.Finding("mta-sts", "d", dr.NOTE, "inert")
    drift = dr.Finding("mx", "d", dr.DRIFT, "backup missing")
    unknown = dr.Finding("provider-cidrs", "rollernet", dr.UNKNOWN, "API down")
    assert dr.summary([ok, note]) == (["no drift", "note mta-sts d: inert"], False)
    lines, failing = dr.summary([ok, note, drift, unknown])
    assert failing
    assert lines == ["DRIFT mx d: backup missing", "UNKNOWN provider-cidrs rollernet: API down", "note mta-sts d: inert"]


# ---------------------------------------------------------------- the CLI, sandbox


def drift(*args: str, dry: bool = False, limit: tuple[str, ...] = ("@local", "sandbox-monitoring")):
    """deploys/drift.py; by default on the controller and the monitoring host only (the mail
    host's state belongs to the mail host stage's tests)."""
    limits = [part for pattern in limit for part in ("--limit", pattern)]
    return pyinfra("deploys/drift.py", *limits, *args, dry=dry)


@pytest.fixture
def monitoring_pushed(world):
    """The monitoring files in place on the sandbox monitoring host (deploys/monitoring.py)."""
    result = pyinfra("deploys/monitoring.py", "--limit", "sandbox-monitoring")
    assert result.returncode == 0, output(result)
    return Path(world["root"]) / "monitoring"


def drift_with_mx(cf, world, wanted: set, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Set the apex MX set, run the drift check, and make sure the set held for the whole run
    (another suite sharing the sandbox may reset the fake Cloudflare meanwhile: then again)."""
    for _attempt in range(3):
        set_mx(cf, world, wanted)
        if live(world) != wanted:
            continue
        result = drift(*args, **kwargs)
        if live(world) == wanted:
            return result
    raise AssertionError(f"the sandbox zone would not hold {wanted}")


def live(world) -> set:
    from backupmx.dns import check as dnscheck

    return set(dnscheck.live_mx(world["zone"], [world["dns"]]))


def set_mx(cf, world, wanted: set) -> None:
    zone_id = next(iter(cf.zones.list(name=world["zone"]))).id
    have = {(r.priority, r.content): r for r in cf.dns.records.list(zone_id=zone_id, type="MX",
                                                                    name={"exact": world["zone"]})}
    for key, record in have.items():
        if key not in wanted:
            cf.dns.records.delete(dns_record_id=record.id, zone_id=zone_id)
    for priority, host in wanted - set(have):
        cf.dns.records.create(zone_id=zone_id, type="MX", name=world["zone"], content=host, priority=priority, ttl=1)


def test_no_drift_exits_0(world, cf, monitoring_pushed):
    started = time.monotonic()
    result = drift_with_mx(cf, world, FULL)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, output(result)
    assert "  no drift" in result.stdout
    assert "note mta-sts viktorbarzin.me: MTA-STS is inert" in result.stdout
    print(f"\ndrift check (controller + monitoring host): {elapsed:.2f} s")


def test_a_deleted_backup_is_drift_with_exit_1_also_under_dry(world, cf, monitoring_pushed):
    for dry in (False, True):
        result = drift_with_mx(cf, world, FULL - {(20, "mail2.rollernet.us")}, dry=dry)
        assert result.returncode == 1, output(result)
        assert "DRIFT mx viktorbarzin.me: backup 20 mail2.rollernet.us is missing" in result.stdout
        assert "no drift" not in result.stdout
        assert "1 drift(s) found" in output(result)
        assert "Traceback" not in output(result)


def test_a_deleted_primary_is_drift(world, cf, monitoring_pushed):
    result = drift_with_mx(cf, world, FULL - {(1, "mail.viktorbarzin.me")})
    assert result.returncode == 1
    assert "DRIFT mx viktorbarzin.me: primary 1 mail.viktorbarzin.me is missing" in result.stdout


def test_provider_and_whitelist_drift_when_the_networks_change(world, cf, monitoring_pushed):
    """The inventory gains a network nobody has: the provider and the mail host both lack it."""
    wanted = world["relay_cidrs"] + ["203.0.113.0/24"]
    result = drift_with_mx(cf, world, FULL, "--data", f"relay_cidrs={json.dumps(wanted)}", limit=())
    assert result.returncode == 1, output(result)
    assert "DRIFT provider-cidrs rollernet: the provider (api mail/relay_addresses) lacks 203.0.113.0/24" in result.stdout
    assert "DRIFT whitelist sandbox-mailhost:" in result.stdout
    assert "DRIFT exemption sandbox-mailhost:" in result.stdout


def test_an_edited_monitoring_file_is_drift(world, cf, monitoring_pushed):
    rules = monitoring_pushed / "backupmx-alerts.rules.yml"
    original = rules.read_text()
    try:
        rules.write_text(original.replace("for: 15m", "for: 1h"))
        result = drift_with_mx(cf, world, FULL)
        assert result.returncode == 1
        assert f"DRIFT monitoring sandbox-monitoring: {rules} differs" in result.stdout
    finally:
        rules.write_text(original)


def test_an_unreachable_dns_server_is_unknown_and_fails(world, cf, monitoring_pushed):
    result = drift("--data", 'dns_servers=["127.0.0.1:9"]')
    assert result.returncode == 1
    assert "UNKNOWN mx viktorbarzin.me: DNS 127.0.0.1:9: no answer" in result.stdout


def test_an_unreachable_host_is_unknown_and_fails(world):
    result = drift("--data", "ssh_port=1")
    assert result.returncode == 1
    assert "UNKNOWN host sandbox-monitoring: could not be reached: not checked" in result.stdout
