"""The sandbox's fake Cloudflare, checked with the official SDK (5.9) and with real DNS queries.

A fake is only worth what it shares with the real thing: these tests drive it the
way the product and third-party clients do (the `cloudflare` SDK, plain `requests`,
dnspython, dkimpy) and check the behaviours the provider notes list.
"""

from __future__ import annotations

import json
import os
import stat

import cloudflare
import dkim
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import requests
from cloudflare import Cloudflare

from backupmx_sandbox import dnsapi, seed
from backupmx_sandbox.supervisor import Supervisor
from support.providers import cloudflare_faults as faults
from support.providers import cloudflare_requests as request_log

BACKUP = "mail.rollernet.us"


# Every test starts from the seeded zone, no faults, an empty request log (conftest).
pytestmark = pytest.mark.usefixtures("fresh")


def api(world, method: str, path: str, token: str | None = "world", **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token == "world":
        token = world["cloudflare_token"]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, world["cloudflare_api_base"] + path, headers=headers, timeout=5, **kwargs)


def error_codes(error: cloudflare.APIStatusError) -> list[int]:
    return [e["code"] for e in error.body["errors"]]


def chain_codes(error: cloudflare.APIStatusError) -> list[int]:
    return [c["code"] for e in error.body["errors"] for c in e.get("error_chain", [])]


def dns_query(world, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    host, port = world["dns"].rsplit(":", 1)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(dns.message.make_query(name, rdtype), host, port=int(port), timeout=3)


def dns_values(answer: dns.message.Message, rdtype: str) -> set[str]:
    kind = dns.rdatatype.from_text(rdtype)
    return {rdata.to_text() for rrset in answer.answer if rrset.rdtype == kind for rdata in rrset}


def create_backup_mx(cf, zone_id, content=BACKUP, priority=20):
    return cf.dns.records.create(zone_id=zone_id, type="MX", name=seed.DOMAIN, content=content,
                                 priority=priority, ttl=1)


# ---------------------------------------------------------------- zones and lists


def test_zone_is_found_by_name(cf, world):
    zones = list(cf.zones.list(name=world["zone"]))
    assert [(z.id, z.name, z.status) for z in zones] == [(world["cloudflare_zone_id"], seed.DOMAIN, "active")]
    assert cf.zones.get(zone_id=zones[0].id).name == seed.DOMAIN


def test_auto_pagination_reads_every_record_past_page_one(cf, zone_id, world):
    records = list(cf.dns.records.list(zone_id=zone_id))
    assert 100 < len(records) < world["record_quota"]
    assert len({r.id for r in records}) == len(records)
    assert len(records) >= seed.FILLER_RECORDS
    # The SDK stops on the first empty page: 1, 2, then 3 comes back empty.
    pages = [entry["query"].get("page", "1") for entry in request_log(world)]
    assert pages == ["1", "2", "3"]
    for record in records[::37]:
        again = cf.dns.records.get(dns_record_id=record.id, zone_id=zone_id)
        assert (again.name, again.type, again.content) == (record.name, record.type, record.content)


def test_seed_leaves_only_a_handful_of_free_records(cf, zone_id, world):
    total = len(list(cf.dns.records.list(zone_id=zone_id, per_page=5000)))
    assert 5 <= world["record_quota"] - total <= 15


def test_page_past_the_end_is_an_empty_success(world, zone_id):
    body = api(world, "GET", f"/zones/{zone_id}/dns_records", params={"page": 50}).json()
    assert body["success"] is True and body["result"] == [] and body["errors"] == []
    info = body["result_info"]
    assert info["page"] == 50 and info["count"] == 0 and info["total_count"] > 100


def test_last_page_is_short_for_clients_that_stop_on_count(world, zone_id):
    first = api(world, "GET", f"/zones/{zone_id}/dns_records", params={"per_page": 100}).json()
    total = first["result_info"]["total_count"]
    last = api(world, "GET", f"/zones/{zone_id}/dns_records", params={"per_page": 100, "page": 2}).json()
    assert first["result_info"]["count"] == 100
    assert last["result_info"]["count"] == total - 100 < 100
    assert first["result_info"]["total_pages"] == 2


def test_list_filters(cf, zone_id):
    mx = list(cf.dns.records.list(zone_id=zone_id, type="MX", name={"exact": seed.DOMAIN}))
    assert [(r.content, r.priority) for r in mx] == [(seed.PRIMARY_MX, seed.PRIMARY_PRIORITY)]
    dmarc = list(cf.dns.records.list(zone_id=zone_id, name={"startswith": "_dmarc."}))
    assert [r.type for r in dmarc] == ["TXT"]
    sts = list(cf.dns.records.list(zone_id=zone_id, content={"contains": "STSv1"}))
    assert [r.name for r in sts] == [f"_mta-sts.{seed.DOMAIN}"]
    either = list(cf.dns.records.list(zone_id=zone_id, match="any", type="MX", name={"exact": f"www.{seed.DOMAIN}"}))
    assert sorted(r.type for r in either) == ["CNAME", "MX"]


def test_tag_and_comment_filters(cf, zone_id):
    cf.dns.records.create(zone_id=zone_id, type="MX", name="@", content=BACKUP, priority=20, ttl=1,
                          comment="added by backupmx", tags=["owner:backupmx"])
    tagged = list(cf.dns.records.list(zone_id=zone_id, tag={"exact": "owner:backupmx"}))
    assert [r.content for r in tagged] == [BACKUP]
    commented = list(cf.dns.records.list(zone_id=zone_id, comment={"startswith": "added by"}))
    assert [r.content for r in commented] == [BACKUP]


def test_admin_can_plant_records_the_api_would_refuse(cf, zone_id, world):
    planted = {"type": "MX", "name": seed.DOMAIN, "content": seed.PRIMARY_MX, "priority": seed.PRIMARY_PRIORITY}
    answer = requests.post(f"{world['cloudflare_admin']}/records", json={"zone": seed.DOMAIN, "records": [planted]},
                           timeout=5)
    answer.raise_for_status()
    mx = list(cf.dns.records.list(zone_id=zone_id, type="MX"))
    assert [r.content for r in mx] == [seed.PRIMARY_MX, seed.PRIMARY_MX]


def test_every_answer_has_the_envelope(world, zone_id):
    answers = [
        api(world, "GET", "/zones", params={"name": seed.DOMAIN}),
        api(world, "GET", f"/zones/{zone_id}/dns_records"),
        api(world, "GET", f"/zones/{zone_id}/dns_records/{'0' * 32}"),
        api(world, "GET", f"/zones/{zone_id}/dns_records", token="not-a-token"),
        api(world, "POST", f"/zones/{zone_id}/dns_records", json={"type": "MX", "name": "@", "content": "1.2.3.4",
                                                                  "priority": 5}),
    ]
    for answer in answers:
        body = answer.json()
        assert {"success", "errors", "messages", "result"} <= body.keys()
        assert body["success"] is (answer.status_code == 200)
        if not body["success"]:
            assert body["result"] is None and body["errors"]


# --------------------------------------------------------------- MX life cycle


def test_mx_create_edit_update_delete(cf, zone_id):
    created = create_backup_mx(cf, zone_id)
    assert (created.type, created.name, created.content, created.priority) == ("MX", seed.DOMAIN, BACKUP, 20)
    assert len(created.id) == 32 and created.proxiable is False and created.proxied is False
    assert created.ttl == 1 and created.comment is None and created.tags == []

    edited = cf.dns.records.edit(dns_record_id=created.id, zone_id=zone_id, type="MX", name=seed.DOMAIN,
                                 ttl=1, priority=30, comment="backupmx")
    assert (edited.content, edited.priority, edited.comment) == (BACKUP, 30, "backupmx")
    assert edited.created_on == created.created_on and edited.modified_on >= created.modified_on

    updated = cf.dns.records.update(dns_record_id=created.id, zone_id=zone_id, type="MX", name=seed.DOMAIN,
                                    content="mail2.rollernet.us", priority=20, ttl=300)
    assert (updated.content, updated.priority, updated.ttl, updated.comment) == ("mail2.rollernet.us", 20, 300, None)

    deleted = cf.dns.records.delete(dns_record_id=created.id, zone_id=zone_id)
    assert deleted.id == created.id
    with pytest.raises(cloudflare.NotFoundError) as missing:
        cf.dns.records.get(dns_record_id=created.id, zone_id=zone_id)
    assert error_codes(missing.value) == [81044]


def test_short_names_and_trailing_dots_are_normalised(cf, zone_id):
    created = cf.dns.records.create(zone_id=zone_id, type="MX", name="@", content="MAIL.rollernet.us.",
                                    priority=20, ttl=1)
    assert (created.name, created.content) == (seed.DOMAIN, BACKUP)


def test_batch_applies_all_or_nothing(cf, zone_id):
    first = create_backup_mx(cf, zone_id)
    result = cf.dns.records.batch(
        zone_id=zone_id,
        deletes=[{"id": first.id}],
        posts=[{"type": "MX", "name": seed.DOMAIN, "content": host, "priority": 20, "ttl": 1}
               for host in seed.BACKUP_MX],
    )
    assert [r.id for r in result.deletes] == [first.id]
    assert sorted(r.content for r in result.posts) == sorted(seed.BACKUP_MX)
    before = {r.id for r in cf.dns.records.list(zone_id=zone_id)}
    with pytest.raises(cloudflare.BadRequestError) as failed:
        cf.dns.records.batch(zone_id=zone_id, deletes=[{"id": result.posts[0].id}],
                             posts=[{"type": "MX", "name": seed.DOMAIN, "content": "10.0.0.1", "priority": 5,
                                     "ttl": 1}])
    assert error_codes(failed.value) == [9009]
    assert {r.id for r in cf.dns.records.list(zone_id=zone_id)} == before


# -------------------------------------------------------------------- errors


def test_bad_token_is_permission_denied_9109(world, zone_id):
    client = Cloudflare(api_token="x" * 40, base_url=world["cloudflare_api_base"], max_retries=0)
    with pytest.raises(cloudflare.PermissionDeniedError) as denied:
        client.dns.records.list(zone_id=zone_id)
    assert denied.value.status_code == 403
    assert error_codes(denied.value) == [9109]
    assert denied.value.body["errors"][0]["message"] == "Invalid access token"


def test_token_without_the_zone_is_authentication_error_10000(world, zone_id):
    client = Cloudflare(api_token=world["cloudflare_token_no_zone"], base_url=world["cloudflare_api_base"],
                        max_retries=0)
    assert list(client.zones.list(name=world["zone"])) == []
    with pytest.raises(cloudflare.PermissionDeniedError) as denied:
        client.dns.records.list(zone_id=zone_id)
    assert error_codes(denied.value) == [10000]


def test_missing_and_malformed_credentials(world, zone_id):
    missing = api(world, "GET", f"/zones/{zone_id}/dns_records", token=None)
    assert missing.status_code == 400 and missing.json()["errors"][0]["code"] == 9106
    malformed = api(world, "GET", f"/zones/{zone_id}/dns_records", token=None,
                    headers={"Authorization": "Token abc"})
    error = malformed.json()["errors"][0]
    assert malformed.status_code == 400 and error["code"] == 6003
    assert [c["code"] for c in error["error_chain"]] == [6111]


def test_identical_record_81058(cf, zone_id):
    create_backup_mx(cf, zone_id)
    with pytest.raises(cloudflare.BadRequestError) as duplicate:
        create_backup_mx(cf, zone_id)
    assert duplicate.value.status_code == 400 and error_codes(duplicate.value) == [81058]


def test_record_quota_81045(cf, zone_id, world):
    total = len(list(cf.dns.records.list(zone_id=zone_id, per_page=5000)))
    for number in range(world["record_quota"] - total):
        cf.dns.records.create(zone_id=zone_id, type="TXT", name=f"fill{number}", content="x", ttl=1)
    with pytest.raises(cloudflare.BadRequestError) as full:
        create_backup_mx(cf, zone_id)
    assert error_codes(full.value) == [81045]
    assert full.value.body["errors"][0]["message"] == "Record quota exceeded."


def test_quota_fault_fills_the_zone_at_once(cf, zone_id, world):
    total = len(list(cf.dns.records.list(zone_id=zone_id, per_page=5000)))
    faults(world, quota=total + 1)
    create_backup_mx(cf, zone_id)
    with pytest.raises(cloudflare.BadRequestError) as full:
        create_backup_mx(cf, zone_id, content="mail2.rollernet.us")
    assert error_codes(full.value) == [81045]


def test_mx_without_priority_is_1004_with_chain_9100(cf, zone_id):
    with pytest.raises(cloudflare.BadRequestError) as invalid:
        cf.dns.records.create(zone_id=zone_id, type="MX", name=seed.DOMAIN, content=BACKUP, ttl=1)
    assert error_codes(invalid.value) == [1004] and chain_codes(invalid.value) == [9100]
    assert invalid.value.body["errors"][0]["error_chain"][0]["message"] == "priority is a required field."


def test_priority_zero_is_kept(cf, zone_id):
    record = create_backup_mx(cf, zone_id, priority=0)
    assert cf.dns.records.get(dns_record_id=record.id, zone_id=zone_id).priority == 0


@pytest.mark.parametrize("content", ["192.0.2.25", "2001:db8::25", "not a host"])
def test_mx_content_must_be_a_hostname_9009(cf, zone_id, content):
    with pytest.raises(cloudflare.BadRequestError) as invalid:
        create_backup_mx(cf, zone_id, content=content)
    assert error_codes(invalid.value) == [9009]


def test_bad_ttl_and_proxied_mx_are_validation_errors(cf, zone_id):
    with pytest.raises(cloudflare.BadRequestError) as bad_ttl:
        cf.dns.records.create(zone_id=zone_id, type="MX", name="@", content=BACKUP, priority=20, ttl=30)
    assert error_codes(bad_ttl.value) == [1004] and chain_codes(bad_ttl.value) == [9021]
    with pytest.raises(cloudflare.BadRequestError) as proxied:
        cf.dns.records.create(zone_id=zone_id, type="MX", name="@", content=BACKUP, priority=20, ttl=1,
                              proxied=True)
    assert error_codes(proxied.value) == [1004] and chain_codes(proxied.value) == [9004]


def test_unknown_record_and_zone_are_404(cf, zone_id):
    with pytest.raises(cloudflare.NotFoundError) as record:
        cf.dns.records.delete(dns_record_id="f" * 32, zone_id=zone_id)
    assert error_codes(record.value) == [81044]
    with pytest.raises(cloudflare.NotFoundError) as zone:
        cf.dns.records.list(zone_id="e" * 32)
    assert error_codes(zone.value) == [7003, 7000]
    assert zone.value.body["errors"][0]["message"].startswith(f"Could not route to /zones/{'e' * 32}")


# -------------------------------------------------------------------- faults


def test_rate_limit_is_429_with_retry_after(cf, zone_id, world):
    faults(world, rate_limit={"count": 1, "retry_after": 3})
    with pytest.raises(cloudflare.RateLimitError) as limited:
        cf.dns.records.list(zone_id=zone_id)
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "3"
    assert error_codes(limited.value) == [971]
    assert len(list(cf.dns.records.list(zone_id=zone_id))) > 100  # the fault is used up


def test_the_real_rate_limit_blocks_for_a_while(cf, zone_id, world):
    faults(world, limit={"requests": 3, "window": 60, "block": 2})
    for _ in range(3):
        cf.zones.get(zone_id=zone_id)
    with pytest.raises(cloudflare.RateLimitError) as limited:
        cf.zones.get(zone_id=zone_id)
    assert limited.value.response.headers["retry-after"] == "2"
    assert error_codes(limited.value) == [971]


def test_server_error_fault_is_counted_and_filtered(cf, zone_id, world):
    faults(world, server_error={"count": 2, "status": 503, "methods": ["POST"]})
    cf.dns.records.list(zone_id=zone_id)  # GET is not affected
    for _ in range(2):
        with pytest.raises(cloudflare.InternalServerError) as failed:
            create_backup_mx(cf, zone_id)
        assert failed.value.status_code == 503
    create_backup_mx(cf, zone_id)
    statuses = [(e["method"], e["status"], e["fault"]) for e in request_log(world)]
    assert statuses[-3:] == [("POST", 503, "server_error"), ("POST", 503, "server_error"), ("POST", 200, None)]


def test_after_write_error_applies_the_write_then_fails(cf, zone_id, world):
    faults(world, after_write={"mode": "error", "count": 1})
    with pytest.raises(cloudflare.InternalServerError):
        create_backup_mx(cf, zone_id)
    mx = list(cf.dns.records.list(zone_id=zone_id, type="MX"))
    assert BACKUP in {r.content for r in mx}


def test_after_write_drop_applies_the_write_then_closes(cf, zone_id, world):
    faults(world, after_write={"mode": "drop", "count": 1})
    with pytest.raises(cloudflare.APIConnectionError):
        create_backup_mx(cf, zone_id)
    assert BACKUP in {r.content for r in cf.dns.records.list(zone_id=zone_id, type="MX")}


def test_slow_fault_makes_a_client_time_out(world, zone_id):
    faults(world, slow={"seconds": 1.5, "count": 1})
    client = Cloudflare(api_token=world["cloudflare_token"], base_url=world["cloudflare_api_base"],
                        max_retries=0, timeout=0.5)
    with pytest.raises(cloudflare.APITimeoutError):
        client.zones.get(zone_id=zone_id)
    assert client.zones.get(zone_id=zone_id).name == seed.DOMAIN


def test_slow_dns_is_asked_for_by_name_and_slows_only_the_zones_answers(world, zone_id):
    # An API fault (no methods) leaves DNS alone ...
    faults(world, slow={"seconds": 1.5, "count": 1})
    assert dns_query(world, seed.DOMAIN, "MX").rcode() == dns.rcode.NOERROR
    faults(world, slow=None)
    # ... methods ["DNS"] makes the zone's name server answer late: past a client's timeout, no answer.
    faults(world, slow={"methods": ["DNS"], "path_contains": seed.DOMAIN, "seconds": 1.5, "count": 1})
    host, port = world["dns"].rsplit(":", 1)
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query(seed.DOMAIN, "MX"), host, port=int(port), timeout=0.5)
    assert dns_query(world, seed.DOMAIN, "MX").rcode() == dns.rcode.NOERROR  # used up


def test_request_log_never_holds_a_token(cf, zone_id, world):
    create_backup_mx(cf, zone_id)
    api(world, "GET", f"/zones/{zone_id}/dns_records", token="wrong-token")
    log = request_log(world)
    assert [e["method"] for e in log] == ["POST", "GET"]
    assert log[0]["body"]["content"] == BACKUP
    text = json.dumps(log)
    assert world["cloudflare_token"] not in text and "wrong-token" not in text


def test_reset_restores_the_seed(cf, zone_id, world):
    seeded = {r.id for r in cf.dns.records.list(zone_id=zone_id)}
    create_backup_mx(cf, zone_id)
    requests.post(f"{world['cloudflare_admin']}/reset", timeout=5).raise_for_status()
    assert {r.id for r in cf.dns.records.list(zone_id=zone_id)} == seeded


def test_a_restart_keeps_the_zone(cf, zone_id, sandbox):
    created = create_backup_mx(cf, zone_id)
    supervisor = Supervisor(sandbox)
    supervisor.stop("cloudflare")
    supervisor.start(dnsapi.services(sandbox)[0])
    assert cf.dns.records.get(dns_record_id=created.id, zone_id=zone_id).content == BACKUP


# ----------------------------------------------------------------------- DNS


def test_apex_mx_answer_equals_the_api(cf, zone_id, world):
    held = {f"{r.priority:.0f} {r.content}." for r in cf.dns.records.list(zone_id=zone_id, type="MX")}
    answer = dns_query(world, seed.DOMAIN, "MX")
    assert answer.flags & dns.flags.AA
    assert dns_values(answer, "MX") == held == {f"{seed.PRIMARY_PRIORITY} {seed.PRIMARY_MX}."}
    assert {rrset.ttl for rrset in answer.answer} == {300}  # ttl 1 ("automatic") is served as 300


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_new_mx_is_in_dns_at_once(cf, zone_id, world, tcp):
    record = create_backup_mx(cf, zone_id)
    assert f"20 {BACKUP}." in dns_values(dns_query(world, seed.DOMAIN, "MX", tcp=tcp), "MX")
    cf.dns.records.delete(dns_record_id=record.id, zone_id=zone_id)
    assert f"20 {BACKUP}." not in dns_values(dns_query(world, seed.DOMAIN, "MX", tcp=tcp), "MX")


def test_negative_answers_are_authoritative_with_soa(world):
    missing = dns_query(world, f"nothing-here.{seed.DOMAIN}", "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN and missing.flags & dns.flags.AA
    assert [rrset.rdtype for rrset in missing.authority] == [dns.rdatatype.SOA]
    nodata = dns_query(world, seed.PRIMARY_MX, "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert [rrset.rdtype for rrset in nodata.authority] == [dns.rdatatype.SOA]
    # A name with names below it exists (empty non-terminal): NODATA, not NXDOMAIN.
    below = dns_query(world, f"_domainkey.{seed.SENDER_DOMAIN}", "TXT")
    assert below.rcode() == dns.rcode.NOERROR and not below.answer


def test_soa_ns_cname_and_mail_host(world):
    assert dns_values(dns_query(world, seed.DOMAIN, "SOA"), "SOA")
    assert len(dns_values(dns_query(world, seed.DOMAIN, "NS"), "NS")) == 2
    www = dns_query(world, f"www.{seed.DOMAIN}", "A")
    assert dns_values(www, "CNAME") == {f"{seed.DOMAIN}."} and dns_values(www, "A") == {"127.0.0.1"}
    assert dns_values(dns_query(world, seed.PRIMARY_MX, "A"), "A") == {"127.0.0.1"}
    for host in seed.BACKUP_MX:
        assert dns_values(dns_query(world, host, "A"), "A") == {"127.0.0.1"}


def test_unknown_zone_is_refused(world):
    assert dns_query(world, "example.com", "A").rcode() == dns.rcode.REFUSED
    assert dns_query(world, "example.com", "MX", tcp=True).rcode() == dns.rcode.REFUSED


def test_long_txt_is_split_into_255_byte_strings(cf, zone_id, world):
    content = "v=test; " + "k" * 600
    cf.dns.records.create(zone_id=zone_id, type="TXT", name="long", content=content, ttl=1)
    answer = dns_query(world, f"long.{seed.DOMAIN}", "TXT", tcp=True)
    strings = [s for rrset in answer.answer for rdata in rrset for s in rdata.strings]
    assert max(len(s) for s in strings) == 255 and b"".join(strings).decode() == content


def test_sender_spf_dmarc_and_dkim_resolve(world):
    sender = world["sender_domain"]
    assert dns_values(dns_query(world, sender, "TXT"), "TXT") == {f'"v=spf1 ip4:{seed.SENDER_ALLOWED_IP} -all"'}
    assert dns_values(dns_query(world, f"_dmarc.{sender}", "TXT"), "TXT") == {'"v=DMARC1; p=reject"'}
    dkim_txt = dns_values(dns_query(world, f"{world['dkim_selector']}._domainkey.{sender}", "TXT"), "TXT")
    assert len(dkim_txt) == 1 and "k=rsa; p=" in dkim_txt.pop()


def test_dkim_key_signs_mail_that_verifies_through_the_sandbox_dns(world):
    key_path = world["dkim_key"]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    message = (f"From: probe@{world['sender_domain']}\r\nTo: postmaster@{seed.DOMAIN}\r\n"
               "Subject: dkim\r\n\r\nhello\r\n").encode()
    signature = dkim.sign(message, world["dkim_selector"].encode(), world["sender_domain"].encode(),
                          open(key_path, "rb").read(), include_headers=[b"From", b"To", b"Subject"])

    def txt_from_sandbox(name: bytes, timeout: int = 5) -> bytes:
        answer = dns_query(world, name.decode().rstrip("."), "TXT")
        return b"".join(s for rrset in answer.answer for rdata in rrset for s in rdata.strings)

    assert dkim.verify(signature + message, dnsfunc=txt_from_sandbox)
