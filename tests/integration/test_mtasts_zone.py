"""MTA-STS observed against the sandbox's DNS: the seeded zone's finding (the seed's
inert TXT), a policy host in DNS, a policy served over HTTPS (support.http_servers.PolicyServer).
The parsers, the guard and the coverage check on their own: tests/unit/test_mtasts*.py."""

from __future__ import annotations

import pytest
from support.http_servers import PolicyServer, tls_for

from backupmx.core.report import FAIL, PASS, WARN
from backupmx.core.settings import load_settings
from backupmx.dns.mtasts import (
    INERT,
    Observation,
    check_coverage,
    generate_policy,
    guard,
    mx_hosts,
    observe,
    parse_policy,
    policy_for,
    rotate,
)
from backupmx_sandbox.seed import BACKUP_MX, DOMAIN, PRIMARY_MX
from support.providers import dead_port, sandbox_data

BACKUPS = tuple(BACKUP_MX)


def publish_policy_host(cf, world) -> None:
    cf.dns.records.create(zone_id=world["cloudflare_zone_id"], type="A", name=f"mta-sts.{DOMAIN}",
                          content="127.0.0.1", ttl=1)


# Every test starts from the seeded zone (conftest's ``fresh``; ``cf`` is the SDK on top of it).
pytestmark = pytest.mark.usefixtures("fresh")


def test_seeded_zone_is_inert_as_the_seed_found(world):
    observation = observe(DOMAIN, [world["dns"]], timeout=2)
    assert observation.txt_id == "20260412" and observation.policy is None
    assert observation.policy_problem == f"mta-sts.{DOMAIN} has no address in DNS"
    decision = guard(observation, BACKUPS)
    assert decision.status == WARN and decision.reason.startswith(INERT)


def test_policy_host_in_dns_but_nothing_serving_is_inert(world, cf):
    publish_policy_host(cf, world)
    observation = observe(DOMAIN, [world["dns"]], connect_to=f"127.0.0.1:{dead_port()}", timeout=2)
    assert "cannot connect" in observation.policy_problem
    assert guard(observation, BACKUPS).reason.startswith(INERT)


@pytest.mark.parametrize("policy, status", [
    (generate_policy("enforce", [PRIMARY_MX], 604800), FAIL),
    (generate_policy("enforce", [PRIMARY_MX, "*.rollernet.us"], 604800), PASS),
    (generate_policy("testing", [PRIMARY_MX]), WARN),
])
def test_served_policy_decides(world, cf, ca, ca_bundle, policy, status):
    publish_policy_host(cf, world)
    with PolicyServer(tls_for(ca, [f"mta-sts.{DOMAIN}"]), policy) as address:
        observation = observe(DOMAIN, [world["dns"]], connect_to=address, ca_bundle=ca_bundle, timeout=5)
    assert observation.policy == parse_policy(policy)
    assert guard(observation, BACKUPS).status == status


def test_served_but_invalid_policy_is_inert(world, cf, ca, ca_bundle):
    publish_policy_host(cf, world)
    with PolicyServer(tls_for(ca, [f"mta-sts.{DOMAIN}"]), "version: STSv1\nmode: enforce\n") as address:
        observation = observe(DOMAIN, [world["dns"]], connect_to=address, ca_bundle=ca_bundle, timeout=5)
    assert "max_age" in observation.policy_problem
    assert guard(observation, BACKUPS).status == WARN


def test_no_txt_passes(world, cf):
    zone_id = world["cloudflare_zone_id"]
    for record in cf.dns.records.list(zone_id=zone_id, type="TXT", name={"exact": f"_mta-sts.{DOMAIN}"}):
        cf.dns.records.delete(dns_record_id=record.id, zone_id=zone_id)
    observation = observe(DOMAIN, [world["dns"]])
    assert observation == Observation(DOMAIN)
    assert guard(observation, BACKUPS).status == PASS


def test_the_sandbox_zone_shows_the_seeds_finding(world):
    settings = load_settings(sandbox_data())
    domain, backup = settings.domains[0], settings.backup_mx
    observation = observe(world["zone"], [world["dns"]], timeout=3)
    coverage = check_coverage(observation, mx_hosts(domain, backup))
    assert observation.txt_id == "20260412" and observation.policy is None
    assert coverage.inert and coverage.status == WARN
    rotation = rotate(observation, policy_for(domain, backup))
    assert rotation.changed and rotation.id != "20260412"
