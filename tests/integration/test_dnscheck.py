"""The live MX set, asked of the sandbox's authoritative DNS (the fake Cloudflare serves its zone)."""

from __future__ import annotations

import time

import dns.resolver
import pytest
from support.seed import BACKUPS, PRIMARY

from backupmx.dns import check as dnscheck
from backupmx.dns.check import DNSCheckError, live_mx, wait_for_mx
from backupmx_sandbox import seed
from support.providers import cloudflare_admin, cloudflare_faults

# Every test starts from the seeded zone, no faults, an empty request log (conftest).
pytestmark = pytest.mark.usefixtures("fresh")


@pytest.fixture
def servers(world) -> list[str]:
    return [world["dns"]]


def add_backups(sdk, world) -> list:
    return [sdk.dns.records.create(zone_id=world["cloudflare_zone_id"], type="MX", name="@", content=host,
                                   priority=seed.BACKUP_PRIORITY, ttl=1) for host in seed.BACKUP_MX]


def test_sandbox_dns_answers_the_seeded_mx(servers):
    assert live_mx(seed.DOMAIN, servers) == {PRIMARY}


def test_records_created_through_the_api_are_visible_at_once(sdk, world, servers):
    add_backups(sdk, world)
    assert live_mx(seed.DOMAIN, servers) == {PRIMARY} | BACKUPS
    slept = []
    assert wait_for_mx(seed.DOMAIN, servers, want_present={PRIMARY} | BACKUPS, timeout=5,
                       sleep=slept.append) == {PRIMARY} | BACKUPS
    assert slept == []  # the first answer already had them


def test_wait_for_absence_after_delete(sdk, world, servers):
    created = add_backups(sdk, world)
    for record in created:
        sdk.dns.records.delete(dns_record_id=record.id, zone_id=world["cloudflare_zone_id"])
    assert wait_for_mx(seed.DOMAIN, servers, want_present={PRIMARY}, want_absent=BACKUPS, timeout=5) == {PRIMARY}


def test_wait_times_out_naming_what_is_missing_and_what_is_still_there(servers):
    started = time.monotonic()
    with pytest.raises(DNSCheckError) as timed_out:
        wait_for_mx(seed.DOMAIN, servers, want_present=BACKUPS, want_absent={PRIMARY}, timeout=1, interval=0.2)
    assert time.monotonic() - started >= 1  # it waited its timeout out
    message = str(timed_out.value)
    assert message.startswith(f"DNS: MX of {seed.DOMAIN} not as wanted after 1 s: ")
    assert f"{servers[0]} lacks 20 mail.rollernet.us, 20 mail2.rollernet.us" in message
    assert f"{servers[0]} still has 1 mail.viktorbarzin.me" in message
    assert "\n" not in message


def test_wait_sees_a_record_that_appears_later(sdk, world, servers):
    clock = iter(range(100))
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        if len(calls) == 2:
            add_backups(sdk, world)

    answer = wait_for_mx(seed.DOMAIN, servers, want_present=BACKUPS, timeout=50, interval=1,
                         clock=lambda: next(clock), sleep=sleep)
    assert BACKUPS <= answer and len(calls) == 2


def test_large_answers_fall_back_to_tcp(sdk, world, servers, monkeypatch):
    cloudflare_faults(world, quota=400)
    hosts = {(30, f"relay{n:02d}.a-rather-long-name-for-a-mail-exchanger.example.net") for n in range(30)}
    sdk.dns.records.batch(zone_id=world["cloudflare_zone_id"], posts=[
        {"type": "MX", "name": "@", "content": host, "priority": priority, "ttl": 1} for priority, host in hosts])
    over_tcp = []
    real_tcp = dnscheck.dns.query.tcp
    monkeypatch.setattr(dnscheck.dns.query, "tcp", lambda *a, **k: over_tcp.append(1) or real_tcp(*a, **k))
    assert live_mx(seed.DOMAIN, servers) == {PRIMARY} | hosts
    assert over_tcp == [1]


def test_null_mx_reads_as_a_dot(world, servers):
    cloudflare_admin(world, "POST", "records", {
        "zone": seed.DOMAIN, "records": [{"type": "MX", "name": seed.DOMAIN, "content": ".", "priority": 0}]})
    assert (0, ".") in live_mx(seed.DOMAIN, servers)


def test_a_server_not_authoritative_for_the_zone_is_an_error(servers):
    with pytest.raises(DNSCheckError, match=r"REFUSED for example\.com MX; is it authoritative"):
        live_mx("example.com", servers)


def test_name_servers_are_found_through_a_resolver_and_must_have_addresses(world):
    host, port = world["dns"].rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [host], int(port)
    resolver.cache = None
    # The zone's NS are Cloudflare's names, which the sandbox does not resolve.
    with pytest.raises(DNSCheckError, match="ada.ns.cloudflare.com, bob.ns.cloudflare.com.*have no address"):
        dnscheck.authoritative_servers(seed.DOMAIN, resolver)
    assert dnscheck.txt(f"_mta-sts.{seed.DOMAIN}", [world["dns"]]) == ["v=STSv1; id=20260412"]
    assert dnscheck.exists(seed.PRIMARY_MX, [world["dns"]])
    assert not dnscheck.exists(f"mta-sts.{seed.DOMAIN}", [world["dns"]])
