"""The Cloudflare client against the sandbox's fake API, with faults set through its admin endpoints.

Adversarial states are made with the official SDK (as a third party would) or the
fake's ``/_sandbox`` switches; the fake's request log is the evidence of what went
over the wire.
"""

from __future__ import annotations

import time

import pytest
from pyinfra.api.hiddenvalue import HiddenValue

from backupmx.core import audit
from backupmx.core.errors import BackupMXError
from backupmx.core.settings import BackupMX, Domain, MXHost
from backupmx.dns.apply import apply_plan
from backupmx.dns.cloudflare import (
    CloudflareAuthError,
    CloudflareClient,
    CloudflareNotFoundError,
    CloudflareQuotaError,
    CloudflareRateLimitError,
    CloudflareRequestError,
    CloudflareUnavailableError,
)
from backupmx.dns.plan import MANAGED_MARKER, plan
from backupmx.dns.render import diff
from backupmx_sandbox import seed
from support.providers import clear_cloudflare_requests, sandbox_settings
from support.providers import cloudflare_faults as faults
from support.providers import cloudflare_requests as request_log

BACKUP = "mail.rollernet.us"


# Every test starts from the seeded zone, no faults, an empty request log (conftest).
pytestmark = pytest.mark.usefixtures("fresh")


@pytest.fixture
def client(world) -> CloudflareClient:
    made = CloudflareClient(world["cloudflare_api_base"], HiddenValue(world["cloudflare_token"]),
                            backoff_factor=0.05, timeout=(2, 5))
    yield made
    made.close()


def sdk_mx(sdk, zone_id, host=None) -> list:
    records = list(sdk.dns.records.list(zone_id=zone_id, type="MX", per_page=5000))
    return [r for r in records if host is None or r.content == host]


# ------------------------------------------------------------------ reading


def test_zone_id_is_looked_up_once(client, world, zone_id):
    assert client.zone_id(world["zone"]) == zone_id
    assert client.zone_id(world["zone"]) == zone_id
    assert [(e["method"], e["path"]) for e in request_log(world)] == [("GET", "/client/v4/zones")]
    assert client.request_count == 1


def test_mx_records_reads_the_seeded_primary(client, world, zone_id):
    [primary] = client.mx_records(zone_id, world["zone"])
    assert (primary.name, primary.host, primary.priority) == (seed.DOMAIN, seed.PRIMARY_MX, seed.PRIMARY_PRIORITY)
    assert len(primary.id) == 32 and primary.comment is None


def test_pagination_reads_more_than_100_mx_records(client, sdk, world, zone_id):
    faults(world, quota=400)
    sdk.dns.records.batch(zone_id=zone_id, posts=[
        {"type": "MX", "name": "@", "content": f"mx{number:03d}.example.net", "priority": 50, "ttl": 1}
        for number in range(150)])
    clear_cloudflare_requests(world)
    records = client.mx_records(zone_id, world["zone"])
    assert len(records) == 151 and len({r.id for r in records}) == 151
    # Two pages of 100; total_pages says page 2 is the last, so no third request.
    pages = [e["query"]["page"] for e in request_log(world)]
    assert pages == ["1", "2"]


def test_pagination_stops_on_an_empty_page_when_total_pages_is_absent(client, monkeypatch):
    pages = {1: [{"id": "a"}], 2: [{"id": "b"}], 3: []}
    asked = []

    def fake_call(method, path, **kwargs):
        page = kwargs["params"]["page"]
        asked.append(page)
        return {"success": True, "result": pages[page]}  # no result_info at all

    monkeypatch.setattr(client, "_call", fake_call)
    assert [item["id"] for item in client._list("/x", {}, 1)] == ["a", "b"]
    assert asked == [1, 2, 3]


def test_record_count_uses_one_request(client, sdk, world, zone_id):
    expected = len(list(sdk.dns.records.list(zone_id=zone_id, per_page=5000)))
    clear_cloudflare_requests(world)
    assert client.record_count(zone_id) == expected == 190
    log = request_log(world)
    assert len(log) == 1 and log[0]["query"]["per_page"] == "1"


# ------------------------------------------------------------------ retries


def test_429_with_retry_after_is_waited_out_then_completes(client, world, zone_id):
    faults(world, rate_limit={"count": 1, "retry_after": 2})
    started = time.monotonic()
    records = client.mx_records(zone_id, world["zone"])
    elapsed = time.monotonic() - started
    assert [r.host for r in records] == [seed.PRIMARY_MX]
    assert elapsed >= 2.0
    assert [e["status"] for e in request_log(world)] == [429, 200]
    assert client.request_count == 2


def test_429_on_a_create_is_retried_it_was_not_applied(client, world, zone_id, sdk):
    faults(world, rate_limit={"count": 1, "retry_after": 1, "methods": ["POST"]})
    client.create_mx(zone_id, world["zone"], BACKUP, 20, MANAGED_MARKER)
    assert [(e["method"], e["status"]) for e in request_log(world)] == [("POST", 429), ("POST", 200)]
    assert len(sdk_mx(sdk, zone_id, BACKUP)) == 1


def test_long_retry_after_is_not_slept_the_error_says_how_long(world, zone_id, monkeypatch):
    faults(world, rate_limit={"count": 1, "retry_after": 300})
    client = CloudflareClient(world["cloudflare_api_base"], world["cloudflare_token"], max_wait=5)
    slept = []
    real_sleep = time.sleep
    # urllib3's Retry sleeps through the time module: record every wait it asks for.
    monkeypatch.setattr(time, "sleep", lambda seconds: (slept.append(seconds), real_sleep(min(seconds, 0.1))))
    with pytest.raises(CloudflareRateLimitError) as limited:
        client.record_count(zone_id)
    monkeypatch.undo()
    # The waits the client asked for (not time measured): within max_wait, never the 300 s it was told.
    assert all(seconds < 5 for seconds in slept), slept
    assert limited.value.retry_after == 300
    assert f"GET /zones/{zone_id}/dns_records: rate limited" in str(limited.value)
    assert "wait 300 s and run again" in str(limited.value)
    assert len(request_log(world)) == 1


def test_persistent_5xx_on_get_names_the_endpoint(client, world, zone_id):
    faults(world, server_error={"count": None, "status": 502, "methods": ["GET"]})
    with pytest.raises(CloudflareUnavailableError) as failed:
        client.mx_records(zone_id, world["zone"])
    message = str(failed.value)
    assert message == (f"Cloudflare GET /zones/{zone_id}/dns_records: 502 after 3 retries; "
                       "run again later (nothing was changed)")
    assert "\n" not in message and world["cloudflare_token"] not in message
    assert [e["status"] for e in request_log(world)] == [502] * 4
    assert client.request_count == 4


def test_transient_5xx_on_get_is_retried(client, world, zone_id):
    faults(world, server_error={"count": 2, "status": 503, "methods": ["GET"]})
    assert client.record_count(zone_id) == 190
    assert [e["status"] for e in request_log(world)] == [503, 503, 200]


# ------------------------------------------------------------------ writes


def test_create_answered_5xx_after_being_applied_is_not_duplicated(client, sdk, world, zone_id):
    faults(world, after_write={"mode": "error", "count": 1, "status": 502})
    record = client.create_mx(zone_id, world["zone"], BACKUP, 20, MANAGED_MARKER)
    log = [(e["method"], e["status"]) for e in request_log(world)]
    assert log == [("POST", 502), ("GET", 200)]  # one POST: re-read, not retried
    assert (record.host, record.priority, record.comment) == (BACKUP, 20, MANAGED_MARKER)
    assert [r.id for r in sdk_mx(sdk, zone_id, BACKUP)] == [record.id]


def test_create_whose_connection_dropped_after_commit_is_not_duplicated(client, sdk, world, zone_id):
    faults(world, after_write={"mode": "drop", "count": 1})
    record = client.create_mx(zone_id, world["zone"], BACKUP, 20, MANAGED_MARKER)
    assert [e["method"] for e in request_log(world)] == ["POST", "GET"]
    assert [r.id for r in sdk_mx(sdk, zone_id, BACKUP)] == [record.id]


def test_create_refused_with_5xx_before_the_write_is_sent_again_after_a_reread(client, sdk, world, zone_id):
    faults(world, server_error={"count": 1, "status": 502, "methods": ["POST"]})
    record = client.create_mx(zone_id, world["zone"], BACKUP, 20, MANAGED_MARKER)
    assert [(e["method"], e["status"]) for e in request_log(world)] == [("POST", 502), ("GET", 200), ("POST", 200)]
    assert [r.id for r in sdk_mx(sdk, zone_id, BACKUP)] == [record.id]


def test_create_that_keeps_failing_stops_with_a_clear_error(client, sdk, world, zone_id):
    faults(world, server_error={"count": None, "status": 503, "methods": ["POST"]})
    with pytest.raises(CloudflareUnavailableError) as failed:
        client.create_mx(zone_id, world["zone"], BACKUP, 20, MANAGED_MARKER)
    assert f"POST /zones/{zone_id}/dns_records: creating MX 20 {BACKUP} failed twice" in str(failed.value)
    assert [e["method"] for e in request_log(world)] == ["POST", "GET", "POST", "GET"]
    assert sdk_mx(sdk, zone_id, BACKUP) == []


def test_create_that_timed_out_is_not_duplicated(world, sdk, zone_id):
    # The fake sleeps before applying: the client gives up, re-reads, creates; the
    # late original then meets an identical record (81058). One record either way.
    faults(world, slow={"count": 1, "seconds": 1.0, "methods": ["POST"]})
    client = CloudflareClient(world["cloudflare_api_base"], world["cloudflare_token"], timeout=(2, 0.4))
    client.create_mx(zone_id, world["zone"], BACKUP, 20, MANAGED_MARKER)
    # The late original is logged once it has answered (its write tried): wait for that, bounded.
    deadline = time.monotonic() + 30
    while not [entry for entry in request_log(world) if entry["fault"] == "slow"]:
        assert time.monotonic() < deadline, "the slow POST never finished"
        time.sleep(0.05)
    assert len(sdk_mx(sdk, zone_id, BACKUP)) == 1


def test_identical_record_81058_is_success_by_reread(client, sdk, world, zone_id):
    existing = sdk.dns.records.create(zone_id=zone_id, type="MX", name="@", content=BACKUP, priority=20, ttl=1)
    clear_cloudflare_requests(world)
    record = client.create_mx(zone_id, world["zone"], BACKUP, 20, MANAGED_MARKER)
    assert record.id == existing.id and record.comment is None
    assert [(e["method"], e["status"]) for e in request_log(world)] == [("POST", 400), ("GET", 200)]


def test_priority_zero_is_sent(client, sdk, world, zone_id):
    record = client.create_mx(zone_id, world["zone"], BACKUP, 0)
    assert record.priority == 0 and sdk_mx(sdk, zone_id, BACKUP)[0].priority == 0


def test_quota_81045_is_a_clear_error(client, world, zone_id):
    faults(world, quota=190)
    with pytest.raises(CloudflareQuotaError) as full:
        client.create_mx(zone_id, world["zone"], BACKUP, 20)
    assert "record quota is reached (400 Record quota exceeded. (81045))" in str(full.value)
    assert "delete unused records" in str(full.value)


def test_validation_error_is_a_request_error(client, world, zone_id):
    with pytest.raises(CloudflareRequestError) as invalid:
        client.create_mx(zone_id, world["zone"], "192.0.2.1", 20)
    assert "9009" in str(invalid.value) and invalid.value.codes == (9009,)


def test_delete_then_delete_again_is_fine(client, world, zone_id, sdk):
    record = client.create_mx(zone_id, world["zone"], BACKUP, 20)
    client.delete_record(zone_id, record.id)
    client.delete_record(zone_id, record.id)  # 81044: already gone
    assert sdk_mx(sdk, zone_id, BACKUP) == []


def test_unknown_zone_is_not_found(client):
    with pytest.raises(CloudflareNotFoundError) as missing:
        client.mx_records("e" * 32, seed.DOMAIN)
    assert "7003" in str(missing.value)


# ------------------------------------------------------------------ tokens


def test_invalid_token_names_its_vault_key_never_its_value(world, zone_id):
    token = "x" * 40
    client = CloudflareClient(world["cloudflare_api_base"], HiddenValue(token))
    with pytest.raises(CloudflareAuthError) as denied:
        client.mx_records(zone_id, world["zone"])
    message = str(denied.value)
    assert "403 Invalid access token (9109)" in message
    assert "Vault key cloudflare_api_token" in message and "invalid or expired" in message
    assert token not in message and token not in repr(client) and token not in repr(vars(client))


def test_token_without_the_zone_says_what_to_grant(world, zone_id):
    client = CloudflareClient(world["cloudflare_api_base"], world["cloudflare_token_no_zone"],
                              token_source="Vault secret/viktor key cloudflare_api_token")
    with pytest.raises(CloudflareNotFoundError) as missing:
        client.zone_id(world["zone"])
    assert "zone viktorbarzin.me not found" in str(missing.value)
    with pytest.raises(CloudflareAuthError) as denied:
        client.mx_records(zone_id, world["zone"])
    message = str(denied.value)
    assert "Authentication error (10000)" in message and "lacks this zone" in message
    assert "Vault secret/viktor key cloudflare_api_token" in message
    assert world["cloudflare_token_no_zone"] not in message


# ------------------------------------------------------------------ plan + apply, measured


@pytest.fixture
def settings(tmp_path):
    return sandbox_settings(audit_log=str(tmp_path / "audit.jsonl"))


def test_plan_and_apply_then_a_second_run_changes_nothing(client, world, sdk, settings, record_property):
    domain = Domain(world["zone"], world["zone"], (MXHost(seed.PRIMARY_MX, seed.PRIMARY_PRIORITY),))
    backup = BackupMX("rollernet", tuple(seed.BACKUP_MX), seed.BACKUP_PRIORITY)

    def run() -> tuple:
        zone_id = client.zone_id(world["zone"])
        wanted = plan(domain, backup, client.mx_records(zone_id, domain.name), client.record_count(zone_id),
                      world["record_quota"])
        apply_plan(client, zone_id, wanted, settings)
        return wanted

    first = run()
    first_requests = client.request_count
    assert diff(first) == [f"+ MX {seed.DOMAIN} 20 mail.rollernet.us", f"+ MX {seed.DOMAIN} 20 mail2.rollernet.us"]
    second = run()
    assert not second.changed
    noop_requests = client.request_count - first_requests
    # zone (1) + MX list (1) + count (1) + 2 creates; the second run reuses the zone id.
    assert (first_requests, noop_requests) == (5, 2)
    assert [entry["what"] for entry in audit.read(settings)] == ["dns.create", "dns.create"]
    assert len(request_log(world)) == first_requests + noop_requests
    fresh_client = CloudflareClient(world["cloudflare_api_base"], world["cloudflare_token"])
    zone_id = fresh_client.zone_id(world["zone"])
    plan(domain, backup, fresh_client.mx_records(zone_id, domain.name), fresh_client.record_count(zone_id),
         world["record_quota"])
    record_property("requests", {"apply": first_requests, "noop_same_client": noop_requests,
                                 "noop_new_run": fresh_client.request_count})
    assert fresh_client.request_count == 3
    hosts = sorted((r.priority, r.content, r.comment) for r in sdk_mx(sdk, zone_id))
    assert hosts == [(1, seed.PRIMARY_MX, None), (20, "mail.rollernet.us", MANAGED_MARKER),
                     (20, "mail2.rollernet.us", MANAGED_MARKER)]


def test_refused_plan_is_not_applied(client, world, zone_id, settings):
    domain = Domain(world["zone"], world["zone"], (MXHost(seed.PRIMARY_MX, seed.PRIMARY_PRIORITY),))
    backup = BackupMX("rollernet", tuple(seed.BACKUP_MX), seed.BACKUP_PRIORITY)
    refused = plan(domain, backup, client.mx_records(zone_id, domain.name), 199, 200)
    clear_cloudflare_requests(world)
    with pytest.raises(BackupMXError, match="holds 199 of 200 records"):
        apply_plan(client, zone_id, refused, settings)
    assert request_log(world) == [] and audit.read(settings) == []
