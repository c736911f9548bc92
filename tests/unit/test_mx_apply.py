"""The one MX-change applier against an in-memory zone: order, change log, refusals, failures."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import requests
from requests.adapters import BaseAdapter

from backupmx.core import audit
from backupmx.core.settings import BackupMX, Domain, MXHost
from backupmx.dns.apply import CREATE, DELETE, apply_plan
from backupmx.dns.cloudflare import CloudflareClient, CloudflareUnavailableError
from backupmx.dns.plan import MANAGED_MARKER, MXRecord, UnsafePlan, plan, plan_removal

ZONE = "viktorbarzin.me"
PRIMARY = "mail.viktorbarzin.me"
BACKUPS = ("mail.rollernet.us", "mail2.rollernet.us")
DOMAIN = Domain(ZONE, ZONE, (MXHost(PRIMARY, 1),))
BACKUP = BackupMX("rollernet", BACKUPS, 20)


class FakeZone:
    """The client's two writes over an in-memory zone; every call is noted, one write may be made to fail."""

    def __init__(self, *records: MXRecord, fail_create: str | None = None):
        self.records = {record.id: record for record in records}
        self.calls: list[tuple[str, int, str]] = []
        self.fail_create = fail_create
        self.made = 0

    def create_mx(self, zone_id, name, host, priority, comment=None) -> MXRecord:
        self.calls.append(("create", priority, host))
        if host == self.fail_create:
            raise CloudflareUnavailableError(f"POST /zones/{zone_id}/dns_records", f"creating MX {priority} {host} "
                                             "failed twice and it is not in the zone",
                                             "run again later (only missing records are created)")
        self.made += 1
        record = MXRecord(name, host, priority, id=f"new{self.made}", comment=comment)
        self.records[record.id] = record
        return record

    def delete_record(self, zone_id, record_id) -> None:
        record = self.records.pop(record_id)
        self.calls.append(("delete", record.priority, record.host))

    def mx(self) -> list[MXRecord]:
        return list(self.records.values())

    def keys(self) -> set[tuple[int, str]]:
        return {record.key for record in self.records.values()}


def mx(host: str, priority: int, ours: bool = False) -> MXRecord:
    return MXRecord(ZONE, host, priority, id=f"id-{host}-{priority}", comment=MANAGED_MARKER if ours else None)


def publish(zone: FakeZone, record_count: int = 10, quota: int = 200):
    return plan(DOMAIN, BACKUP, zone.mx(), record_count=record_count, quota=quota)


@pytest.fixture
def settings(tmp_path):
    return SimpleNamespace(audit_log=str(tmp_path / "audit.jsonl"), state_dir=str(tmp_path))


def test_creates_go_before_deletes_and_each_change_is_logged_once(settings):
    zone = FakeZone(mx(PRIMARY, 1), mx(BACKUPS[0], 30, ours=True), mx("old.example.net", 20, ours=True))
    created = apply_plan(zone, "z1", publish(zone), settings)
    assert zone.calls == [("create", 20, BACKUPS[0]), ("create", 20, BACKUPS[1]),
                          ("delete", 30, BACKUPS[0]), ("delete", 20, "old.example.net")]
    assert zone.keys() == {(1, PRIMARY), (20, BACKUPS[0]), (20, BACKUPS[1])}
    log = audit.read(settings)
    assert [(e["what"], e["target"]) for e in log] == [(CREATE, ZONE)] * 2 + [(DELETE, ZONE)] * 2
    assert [e["after"]["id"] for e in log[:2]] == [r.id for r in created] == ["new1", "new2"]
    assert [e["before"]["id"] for e in log[2:]] == [f"id-{BACKUPS[0]}-30", "id-old.example.net-20"]
    assert all(e["before"] is None for e in log[:2]) and all(e["after"] is None for e in log[2:])


def test_a_second_apply_of_a_fresh_plan_changes_nothing(settings):
    zone = FakeZone(mx(PRIMARY, 1))
    apply_plan(zone, "z1", publish(zone), settings)
    calls = len(zone.calls)
    again = publish(zone)
    assert not again.changed
    assert apply_plan(zone, "z1", again, settings) == [] and len(zone.calls) == calls


@pytest.mark.parametrize("records, count, why", [
    ((mx(PRIMARY, 20),), 10, "has preference 20 in the zone, 1 in the inventory"),
    ((), 10, "declared primary MX 1 mail.viktorbarzin.me is not in the zone"),
    ((mx(PRIMARY, 1),), 199, "holds 199 of 200 records"),
    ((mx(PRIMARY, 1), mx(BACKUPS[0], 1)), 10, "was not created by backupmx"),
])
def test_a_refused_plan_makes_no_call_and_no_log_line(settings, records, count, why):
    zone = FakeZone(*records)
    with pytest.raises(UnsafePlan, match=why) as refused:
        apply_plan(zone, "z1", publish(zone, record_count=count), settings)
    assert str(refused.value).startswith(f"MX {ZONE}: ")
    assert zone.calls == [] and audit.read(settings) == []


def test_a_failed_create_stops_before_any_delete_and_a_rerun_finishes(settings):
    zone = FakeZone(mx(PRIMARY, 1), mx(BACKUPS[1], 30, ours=True), fail_create=BACKUPS[1])
    with pytest.raises(CloudflareUnavailableError) as failed:
        apply_plan(zone, "z1", publish(zone), settings)
    assert str(failed.value).startswith("Cloudflare POST /zones/z1/dns_records: ")
    assert "run again later" in str(failed.value)
    # The old record stays until its replacement exists: the MX set never shrinks mid-change.
    assert zone.keys() == {(1, PRIMARY), (20, BACKUPS[0]), (30, BACKUPS[1])}
    assert [e["what"] for e in audit.read(settings)] == [CREATE]

    zone.fail_create = None
    rest = publish(zone)
    assert [r.key for r in rest.creates] == [(20, BACKUPS[1])] and [r.key for r in rest.deletes] == [(30, BACKUPS[1])]
    apply_plan(zone, "z1", rest, settings)
    assert zone.keys() == {(1, PRIMARY), (20, BACKUPS[0]), (20, BACKUPS[1])}


def test_removal_deletes_only_the_backups_and_tells_each_change(settings):
    zone = FakeZone(mx(PRIMARY, 1, ours=True), mx(BACKUPS[0], 20, ours=True), mx(BACKUPS[1], 20),
                    mx("other.example.net", 30), mx(BACKUPS[0], 50))
    told = []
    removal = plan_removal(DOMAIN, BACKUP, zone.mx())
    apply_plan(zone, "z1", removal, settings, lambda what, record: told.append((what, record.render())))
    assert told == [(DELETE, f"MX {ZONE} 20 {BACKUPS[0]}"), (DELETE, f"MX {ZONE} 20 {BACKUPS[1]}")]
    assert zone.keys() == {(1, PRIMARY), (30, "other.example.net"), (50, BACKUPS[0])}
    assert zone.keys() == {record.key for record in removal.desired}
    assert [e["what"] for e in audit.read(settings)] == [DELETE, DELETE]


def test_publish_then_removal_leaves_the_zone_as_it_was(settings):
    zone = FakeZone(mx(PRIMARY, 1), mx("other.example.net", 30))
    before = zone.mx()
    apply_plan(zone, "z1", publish(zone), settings)
    apply_plan(zone, "z1", plan_removal(DOMAIN, BACKUP, zone.mx()), settings)
    assert zone.mx() == before


# ------------------------------------------------- through the real client, lost answer


class LostAnswerCloudflare(BaseAdapter):
    """Cloudflare's dns_records over an in-memory list: the first POST is applied, then its answer is lost."""

    def __init__(self, records: list[dict]):
        super().__init__()
        self.records = records
        self.methods: list[str] = []

    def send(self, request, **kwargs):
        self.methods.append(request.method)
        if request.method == "POST":
            body = json.loads(request.body)
            self.records.append({**body, "id": f"new{len(self.records)}"})
            if self.methods.count("POST") == 1:
                raise requests.exceptions.ReadTimeout("the answer was lost")
            return self._answer(request, self.records[-1])
        return self._answer(request, list(self.records), {"page": 1, "total_pages": 1})

    def _answer(self, request, result, info=None) -> requests.Response:
        response = requests.Response()
        response.status_code, response.request, response.url = 200, request, request.url
        envelope = {"success": True, "errors": [], "result": result, "result_info": info}
        response.raw = io.BytesIO(json.dumps(envelope).encode())
        return response

    def close(self):
        pass


def test_a_create_whose_answer_was_lost_is_read_back_not_sent_again(settings):
    primary = {"type": "MX", "name": ZONE, "content": PRIMARY, "priority": 1, "id": "primary"}
    transport = LostAnswerCloudflare([primary])
    client = CloudflareClient("http://cloudflare.invalid/client/v4", "t" * 40)
    client.session.mount("http://", transport)
    zone_plan = plan(DOMAIN, BACKUP, client.mx_records("z1", ZONE), record_count=1, quota=200)
    created = apply_plan(client, "z1", zone_plan, settings)
    assert transport.methods == ["GET", "POST", "GET", "POST"]  # list; lost create, read back; second create
    assert sorted((r["priority"], r["content"]) for r in transport.records) == [
        (1, PRIMARY), (20, BACKUPS[0]), (20, BACKUPS[1])]
    assert [r.host for r in created] == list(BACKUPS)
    assert [e["after"]["content"] for e in audit.read(settings)] == list(BACKUPS)
