"""deploys/drift.py through the pyinfra CLI against the sandbox (zone state set with the
official Cloudflare SDK). The pure comparisons: tests/unit/test_drift_findings.py."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from support.seed import BACKUPS, PRIMARY

from backupmx.dns import check as dnscheck
from support.providers import has_line, output, pyinfra

FULL = {PRIMARY} | BACKUPS


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
    assert has_line(result.stdout, "no drift"), result.stdout
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
