"""Stage 5 through the pyinfra CLI: the fake Cloudflare API, its DNS, and the ordering guard.

Adversarial zone states are set with the official ``cloudflare`` SDK, as an
operator's other tools would.
"""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading

import pytest
import requests

from backupmx.dns import check as dnscheck
from backupmx.dns.plan import MANAGED_MARKER
from providerkit import output, pyinfra

WRITES = {"POST", "PATCH", "PUT", "DELETE"}


def deploy(*args: str, dry: bool = False) -> subprocess.CompletedProcess:
    return pyinfra("deploys/backupmx.py", *args, dry=dry)


def zone_id(cf, world) -> str:
    return next(iter(cf.zones.list(name=world["zone"]))).id


def apex_mx(cf, world) -> list:
    return sorted(cf.dns.records.list(zone_id=zone_id(cf, world), type="MX", name={"exact": world["zone"]}),
                  key=lambda record: (record.priority, record.content))


def writes(world) -> list[dict]:
    log = requests.get(f"{world['cloudflare_admin']}/requests", timeout=10).json()
    entries = log.get("requests", log) if isinstance(log, dict) else log
    return [entry for entry in entries if entry["method"] in WRITES and "/client/v4/" in entry["path"]]


def clear_request_log(world) -> None:
    requests.delete(f"{world['cloudflare_admin']}/requests", timeout=10).raise_for_status()


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
    assert [w["method"] for w in writes(world)] == ["POST", "POST"]
    assert dns_answer(world) == {(1, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}


def test_second_run_writes_nothing(world, cf):
    assert deploy().returncode == 0
    clear_request_log(world)
    result = deploy()
    assert result.returncode == 0, output(result)
    assert writes(world) == []
    assert "backup MX records already published" in result.stdout


def test_dry_run_shows_the_record_diff_and_changes_nothing(world, cf):
    clear_request_log(world)
    result = deploy(dry=True)
    assert result.returncode == 0, output(result)
    assert "+ MX viktorbarzin.me 20 mail.rollernet.us" in result.stdout
    assert "+ MX viktorbarzin.me 20 mail2.rollernet.us" in result.stdout
    assert writes(world) == []
    assert len(apex_mx(cf, world)) == 1


def test_full_zone_is_refused_with_the_counts(world, cf):
    zid = zone_id(cf, world)
    total = len(list(cf.dns.records.list(zone_id=zid)))
    for index in range(199 - total):
        cf.dns.records.create(zone_id=zid, type="A", name=f"quota{index}.{world['zone']}", content="192.0.2.1", ttl=1)
    clear_request_log(world)

    result = deploy()
    assert result.returncode != 0
    assert "holds 199 of 200 records; adding 2 needs 201" in output(result)
    assert writes(world) == []
    assert "Traceback" not in output(result)


def test_missing_primary_is_refused(world, cf):
    [primary] = apex_mx(cf, world)
    cf.dns.records.delete(dns_record_id=primary.id, zone_id=zone_id(cf, world))
    clear_request_log(world)
    result = deploy()
    assert result.returncode != 0
    assert "mail.viktorbarzin.me" in output(result) and "publish the primary first" in output(result)
    assert writes(world) == [] and apex_mx(cf, world) == []


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
    assert len(apex_mx(cf, world)) == 1 and writes(world) == []


def test_persistent_api_errors_name_the_endpoint_and_a_rerun_converges(world, cf):
    admin = world["cloudflare_admin"]
    requests.post(f"{admin}/faults", json={"server_error": {"count": 50, "status": 502}}, timeout=10)
    result = deploy()
    assert result.returncode != 0
    assert "Cloudflare GET /zones" in output(result) and "Traceback" not in output(result)
    requests.post(f"{admin}/faults", json={}, timeout=10)
    requests.post(f"{admin}/reset", timeout=10)

    assert deploy().returncode == 0
    assert len(apex_mx(cf, world)) == 3


class PolicyServer:
    """https://mta-sts.<zone>/.well-known/mta-sts.txt on loopback, signed by the sandbox CA."""

    def __init__(self, policy: str, cert: str, key: str):
        body = policy.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mta_sts_host(world, cf, sandbox):
    cf.dns.records.create(zone_id=zone_id(cf, world), type="A", name=f"mta-sts.{world['zone']}",
                          content="127.0.0.1", ttl=1)
    return sandbox.ca.issue("mta-sts", [f"mta-sts.{world['zone']}"])


def policy(mode: str, *mx: str) -> str:
    return "version: STSv1\r\nmode: %s\r\n%smax_age: 86400\r\n" % (mode, "".join(f"mx: {h}\r\n" for h in mx))


def test_enforce_policy_without_the_backups_is_refused(world, cf, mta_sts_host):
    with PolicyServer(policy("enforce", "mail.viktorbarzin.me"), *map(str, mta_sts_host)) as server:
        result = deploy("--data", f'mta_sts={{"connect_to": "127.0.0.1:{server.port}", '
                                  f'"ca_bundle": "{world["ca_cert"]}"}}')
    assert result.returncode != 0
    assert "enforce mode and does not list mail.rollernet.us, mail2.rollernet.us" in output(result)
    assert len(apex_mx(cf, world)) == 1


def test_enforce_policy_with_a_wildcard_for_the_backups_goes_ahead(world, cf, mta_sts_host):
    with PolicyServer(policy("enforce", "mail.viktorbarzin.me", "*.rollernet.us"), *map(str, mta_sts_host)) as server:
        result = deploy("--data", f'mta_sts={{"connect_to": "127.0.0.1:{server.port}", '
                                  f'"ca_bundle": "{world["ca_cert"]}"}}')
    assert result.returncode == 0, output(result)
    assert len(apex_mx(cf, world)) == 3


def test_testing_policy_without_the_backups_warns_and_goes_ahead(world, cf, mta_sts_host):
    with PolicyServer(policy("testing", "mail.viktorbarzin.me"), *map(str, mta_sts_host)) as server:
        result = deploy("--data", f'mta_sts={{"connect_to": "127.0.0.1:{server.port}", '
                                  f'"ca_bundle": "{world["ca_cert"]}"}}')
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
    requests.post(f"{world['cloudflare_admin']}/zones", json={"name": second, "records": records},
                  timeout=10).raise_for_status()
    requests.post(f"{world['acc_admin']}/state", timeout=10, json={
        "domain": second, "mode": "secondary_mx", "enabled": True, "user_table_default": "allow_any",
        "hold": False}).raise_for_status()
    domains = [{"name": world["zone"], "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]},
               {"name": second, "primary_mx": [{"host": f"mail.{second}", "priority": 5}]}]
    try:
        result = deploy("--data", "domains=" + json.dumps(domains))
    finally:
        requests.post(f"{world['acc_admin']}/reset", timeout=10).raise_for_status()
    assert result.returncode == 0, output(result)
    assert dns_answer(world) == {(1, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}
    assert set(dnscheck.live_mx(second, [world["dns"]])) == {
        (5, f"mail.{second}"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")}
