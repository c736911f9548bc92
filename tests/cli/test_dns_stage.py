"""Stage 5 through the pyinfra CLI: the fake Cloudflare API, its DNS, and the ordering guard.

Adversarial zone states are set with the official ``cloudflare`` SDK, as an
operator's other tools would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.http_servers import PolicyServer, tls_from_files

from backupmx.dns import check as dnscheck
from backupmx.dns.plan import MANAGED_MARKER
from support.providers import (
    admin,
    clear_cloudflare_requests,
    cloudflare_admin,
    cloudflare_faults,
    cloudflare_writes,
    output,
    pyinfra,
    report_rows,
)


def deploy(*args: str, dry: bool = False) -> subprocess.CompletedProcess:
    return pyinfra("deploys/backupmx.py", *args, dry=dry)


def zone_id(cf, world) -> str:
    return next(iter(cf.zones.list(name=world["zone"]))).id


def apex_mx(cf, world) -> list:
    return sorted(cf.dns.records.list(zone_id=zone_id(cf, world), type="MX", name={"exact": world["zone"]}),
                  key=lambda record: (record.priority, record.content))


def snapshot(record) -> tuple:
    return (record.id, record.content, record.priority, record.ttl, record.comment, record.modified_on)


def dns_answer(world) -> set[tuple[int, str]]:
    return set(dnscheck.live_mx(world["zone"], [world["dns"]]))


def test_fresh_zone_gets_exactly_two_records_and_the_primary_is_untouched(world, cf):
    [primary] = apex_mx(cf, world)
    before = snapshot(primary)

    result = deploy()
    assert result.returncode == 0, output(result)

    records = apex_mx(cf, world)
    assert [(r.priority, r.content) for r in records] == [
        (1, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")]
    assert snapshot(records[0]) == before
    assert all(MANAGED_MARKER in (r.comment or "") for r in records[1:])
    assert [w["method"] for w in cloudflare_writes(world)] == ["POST", "POST"]
    assert dns_answer(world) == {(1, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}


def test_second_run_writes_nothing(world, cf):
    assert deploy().returncode == 0
    clear_cloudflare_requests(world)
    result = deploy()
    assert result.returncode == 0, output(result)
    assert cloudflare_writes(world) == []
    assert "backup MX records already published" in result.stdout


def test_dry_run_shows_the_record_diff_and_changes_nothing(world, cf):
    clear_cloudflare_requests(world)
    result = deploy(dry=True)
    assert result.returncode == 0, output(result)
    assert "+ MX viktorbarzin.me 20 mail.rollernet.us" in result.stdout
    assert "+ MX viktorbarzin.me 20 mail2.rollernet.us" in result.stdout
    assert cloudflare_writes(world) == []
    assert len(apex_mx(cf, world)) == 1


def test_full_zone_is_refused_with_the_counts(world, cf):
    zid = zone_id(cf, world)
    total = len(list(cf.dns.records.list(zone_id=zid)))
    for index in range(199 - total):
        cf.dns.records.create(zone_id=zid, type="A", name=f"quota{index}.{world['zone']}", content="192.0.2.1", ttl=1)
    clear_cloudflare_requests(world)

    result = deploy()
    assert result.returncode != 0
    assert "holds 199 of 200 records; adding 2 needs 201" in output(result)
    assert cloudflare_writes(world) == []
    assert "Traceback" not in output(result)


def test_missing_primary_is_refused(world, cf):
    [primary] = apex_mx(cf, world)
    cf.dns.records.delete(dns_record_id=primary.id, zone_id=zone_id(cf, world))
    clear_cloudflare_requests(world)
    result = deploy()
    assert result.returncode != 0
    assert "mail.viktorbarzin.me" in output(result) and "publish the primary first" in output(result)
    assert cloudflare_writes(world) == [] and apex_mx(cf, world) == []


def test_primary_at_another_preference_than_declared_is_refused_at_planning(world, cf):
    """Zone 10, inventory 1: refused in the report, before anything changes, with one line naming
    both preferences and the key to fix; no record is published and nothing waits for DNS."""
    [primary] = apex_mx(cf, world)
    cf.dns.records.edit(dns_record_id=primary.id, zone_id=zone_id(cf, world), type="MX", name=world["zone"],
                        content=primary.content, priority=10, ttl=primary.ttl)
    clear_cloudflare_requests(world)
    result = deploy()
    text = output(result)
    assert result.returncode != 0, text
    refusal = ("primary MX mail.viktorbarzin.me has preference 10 in the zone, 1 in the inventory; "
               "set domains[0].primary_mx[0].priority = 10")
    [row] = [row for row in report_rows(text) if row.stage == "5" and row.status == "FAIL"]
    assert row.evidence.startswith(refusal), text
    assert "not as wanted after" not in text and "Traceback" not in text
    assert "Starting operation: Stage 3" not in text  # the report stopped the run before any change
    assert cloudflare_writes(world) == []
    assert [(r.priority, r.content) for r in apex_mx(cf, world)] == [(10, "mail.viktorbarzin.me")]

    # The fix the line names: the inventory says 10, and the deploy publishes next to it.
    domains = [{"name": world["zone"], "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 10}]}]
    result = deploy("--data", "domains=" + json.dumps(domains))
    assert result.returncode == 0, output(result)
    assert dns_answer(world) == {(10, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}


def test_foreign_record_warns_and_is_left_alone(world, cf):
    foreign = cf.dns.records.create(zone_id=zone_id(cf, world), type="MX", name=world["zone"],
                                    content="mx.other.example", priority=30, ttl=1)
    result = deploy()
    assert result.returncode == 0, output(result)
    assert "MX viktorbarzin.me 30 mx.other.example" in result.stdout
    after = {r.id: r for r in apex_mx(cf, world)}[foreign.id]
    assert (after.content, after.priority, after.modified_on) == ("mx.other.example", 30, foreign.modified_on)
    assert len(apex_mx(cf, world)) == 4


def test_controller_alone_cannot_publish_without_stage_4(world, cf):
    """No flag skips the ordering guard: limiting the run to the controller leaves no proof."""
    result = deploy("--limit", "@local")
    assert result.returncode != 0
    assert "not proven live on sandbox-mailhost" in output(result)
    assert len(apex_mx(cf, world)) == 1 and cloudflare_writes(world) == []


def test_persistent_api_errors_name_the_endpoint_and_a_rerun_converges(world, cf):
    cloudflare_faults(world, server_error={"count": 50, "status": 502})
    result = deploy()
    assert result.returncode != 0
    assert "Cloudflare GET /zones" in output(result) and "Traceback" not in output(result)
    cloudflare_admin(world, "POST", "reset")  # the fault cleared

    assert deploy().returncode == 0
    assert len(apex_mx(cf, world)) == 3


def test_stage_6_waits_for_the_records_it_watches(world, cf):
    """Monitoring that expects the backup records is not written when stage 5 could not publish them:
    its MX-set probe would alert on a deploy that changed nothing in DNS."""
    monitoring = Path(world["root"], "monitoring")
    rendered = [monitoring / name for name in ("blackbox-backupmx.yml", "backupmx-alerts.rules.yml",
                                               "prometheus-backupmx.yml")]
    for path in rendered:
        path.unlink(missing_ok=True)
    cloudflare_faults(world, server_error={"count": 50, "status": 502, "methods": ["POST"]})
    result = deploy()
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text
    assert len(apex_mx(cf, world)) == 1  # nothing published
    assert not [path for path in rendered if path.exists()], text
    cloudflare_admin(world, "POST", "reset")  # the fault cleared: the next run publishes, then monitors
    assert deploy().returncode == 0
    assert all(path.exists() for path in rendered)


@pytest.fixture
def mta_sts_host(world, cf, sandbox):
    """mta-sts.<zone> in DNS, on loopback; its server's TLS, with a certificate of the sandbox CA."""
    cf.dns.records.create(zone_id=zone_id(cf, world), type="A", name=f"mta-sts.{world['zone']}",
                          content="127.0.0.1", ttl=1)
    return tls_from_files(*map(str, sandbox.ca.issue("mta-sts", [f"mta-sts.{world['zone']}"])))


def mta_sts_data(world, address: str) -> str:
    """``--data mta_sts=``: fetch the policy from ``address``, trusting the sandbox CA."""
    return "mta_sts=" + json.dumps({"connect_to": address, "ca_bundle": world["ca_cert"]})


def policy(mode: str, *mx: str) -> str:
    return "version: STSv1\r\nmode: %s\r\n%smax_age: 86400\r\n" % (mode, "".join(f"mx: {h}\r\n" for h in mx))


def test_enforce_policy_without_the_backups_is_refused(world, cf, mta_sts_host):
    with PolicyServer(mta_sts_host, policy("enforce", "mail.viktorbarzin.me")) as address:
        result = deploy("--data", mta_sts_data(world, address))
    assert result.returncode != 0
    assert "enforce mode and does not list mail.rollernet.us, mail2.rollernet.us" in output(result)
    assert len(apex_mx(cf, world)) == 1


def test_enforce_policy_with_a_wildcard_for_the_backups_goes_ahead(world, cf, mta_sts_host):
    with PolicyServer(mta_sts_host, policy("enforce", "mail.viktorbarzin.me", "*.rollernet.us")) as address:
        result = deploy("--data", mta_sts_data(world, address))
    assert result.returncode == 0, output(result)
    assert len(apex_mx(cf, world)) == 3


def test_testing_policy_without_the_backups_warns_and_goes_ahead(world, cf, mta_sts_host):
    with PolicyServer(mta_sts_host, policy("testing", "mail.viktorbarzin.me")) as address:
        result = deploy("--data", mta_sts_data(world, address))
    assert result.returncode == 0, output(result)
    assert "testing mode and does not list" in result.stdout
    assert len(apex_mx(cf, world)) == 3


def test_txt_without_a_served_policy_warns_that_mta_sts_is_inert(world, cf):
    result = deploy(dry=True)
    assert result.returncode == 0, output(result)
    assert "MTA-STS is inert" in result.stdout


def test_two_domains_in_one_inventory_each_get_their_own_records(world, cf):
    """Each domain is its own zone: looked up, planned, applied and checked on its own."""
    second = "second-domain.test"
    records = [{"type": "MX", "name": second, "content": f"mail.{second}", "priority": 5, "ttl": 1},
               {"type": "A", "name": f"mail.{second}", "content": "127.0.0.1", "ttl": 1}]
    cloudflare_admin(world, "POST", "zones", {"name": second, "records": records})
    admin(world, "state", {"domain": second, "mode": "secondary_mx", "enabled": True,
                           "user_table_default": "allow_any", "hold": False})
    domains = [{"name": world["zone"], "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]},
               {"name": second, "primary_mx": [{"host": f"mail.{second}", "priority": 5}]}]
    try:
        result = deploy("--data", "domains=" + json.dumps(domains))
    finally:
        admin(world, "reset", {})
    assert result.returncode == 0, output(result)
    assert dns_answer(world) == {(1, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}
    assert set(dnscheck.live_mx(second, [world["dns"]])) == {
        (5, f"mail.{second}"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}
