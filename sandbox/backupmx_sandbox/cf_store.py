"""The fake Cloudflare's zones: the store (record quota, the atomic state file), the list filters,
sorting and pagination. Records are validated by ``backupmx_sandbox.cf_records``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from backupmx_sandbox.cf_records import (
    MAX_BATCH_CHANGES,
    PRIORITY_TYPES,
    PROXIABLE_TYPES,
    ApiError,
    identity,
    new_id,
    normalize,
    now_iso,
    qualify,
    record_missing,
    stable_id,
)
from backupmx_sandbox.zonedns import AUTO_TTL

# -------------------------------------------------------------------------- store


@dataclass
class Zone:
    id: str
    name: str
    account: dict
    name_servers: list[str]
    seed: list[dict]
    created_on: str = "2024-09-02T10:00:00.000000Z"

    def seed_records(self) -> list[dict]:
        records = []
        for index, raw in enumerate(self.seed):
            record = normalize(raw, self.name)
            record_id = stable_id(self.id, index, record["type"], record["name"], record["content"])
            records.append({"id": record_id, **record, "created_on": self.created_on,
                            "modified_on": self.created_on})
        return records

    def as_api(self) -> dict:
        return {
            "id": self.id, "name": self.name, "status": "active", "paused": False, "type": "full",
            "development_mode": 0, "name_servers": self.name_servers,
            "original_name_servers": None, "original_registrar": None, "original_dnshost": None,
            "created_on": self.created_on, "modified_on": self.created_on, "activated_on": self.created_on,
            "meta": {"step": 2, "custom_certificate_quota": 0, "page_rule_quota": 3,
                     "phishing_detected": False},
            "owner": {"id": None, "type": "user", "email": None},
            "account": self.account,
            "tenant": {"id": None, "name": None}, "tenant_unit": {"id": None},
            "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
            "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0,
                     "currency": "USD", "frequency": "", "is_subscribed": False, "can_subscribe": False,
                     "legacy_id": "free", "legacy_discount": False, "externally_managed": False},
        }


class Store:
    """The zones' records, guarded by one lock, saved atomically after every change."""

    def __init__(self, zones: list[Zone], state_file: Path, quota: int):
        self.zones = {zone.id: zone for zone in zones}
        self.state_file = state_file
        self.default_quota = quota
        self.quota_override: int | None = None
        self.lock = threading.RLock()
        self.seed_digest = hashlib.sha256(
            json.dumps([(z.id, z.name, z.seed) for z in zones], sort_keys=True).encode()
        ).hexdigest()
        self.records: dict[str, list[dict]] = {}
        self.serial = 1
        if not self._load():
            self.reset()

    # persistence
    def _load(self) -> bool:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return False
        # A changed seed (new code or config) starts from the new seed, not stale state.
        if state.get("seed_digest") != self.seed_digest:
            return False
        self.records = {zid: state["records"].get(zid, []) for zid in self.zones}
        self.serial = state.get("serial", 1)
        return True

    def save(self) -> None:
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        data = {"seed_digest": self.seed_digest, "serial": self.serial, "records": self.records}
        with open(tmp, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_file)

    def reset(self) -> None:
        with self.lock:
            self.records = {zid: zone.seed_records() for zid, zone in self.zones.items()}
            self.quota_override = None
            self.serial += 1
            self.save()

    def changed(self) -> None:
        self.serial += 1
        self.save()

    @property
    def quota(self) -> int:
        return self.default_quota if self.quota_override is None else self.quota_override

    # reading
    def zone_by_name(self, name: str) -> Zone | None:
        return next((z for z in self.zones.values() if z.name == name), None)

    def snapshot(self, zone_id: str) -> list[dict]:
        with self.lock:
            return copy.deepcopy(self.records[zone_id])

    def find(self, records: list[dict], record_id: str) -> dict:
        for record in records:
            if record["id"] == record_id:
                return record
        raise record_missing()

    # writing (each takes the list to change, so a batch can work on a copy)
    def _ensure_unique(self, records: list[dict], record: dict, own_id: str | None = None) -> None:
        key = identity(record)
        if any(identity(other) == key and other["id"] != own_id for other in records):
            raise ApiError(400, 81058, "An identical record already exists.")

    def _create(self, zone: Zone, records: list[dict], body: dict) -> dict:
        record = normalize(body, zone.name)
        self._ensure_unique(records, record)
        if len(records) >= self.quota:
            raise ApiError(400, 81045, "Record quota exceeded.")
        stamp = now_iso()
        record = {"id": new_id(), **record, "created_on": stamp, "modified_on": stamp}
        records.append(record)
        return record

    def _replace(self, zone: Zone, records: list[dict], record_id: str, body: dict, merge: bool) -> dict:
        current = self.find(records, record_id)
        base = {k: current.get(k) for k in ("type", "name", "content", "ttl", "proxied", "comment",
                                             "tags", "settings", "priority")} if merge else {}
        if merge and current["type"] not in PRIORITY_TYPES:
            base.pop("priority")
        updated = normalize({**base, **body}, zone.name)
        self._ensure_unique(records, updated, own_id=record_id)
        updated = {"id": record_id, **updated, "created_on": current["created_on"], "modified_on": now_iso()}
        records[records.index(current)] = updated
        return updated

    def _delete(self, records: list[dict], record_id: str) -> dict:
        record = self.find(records, record_id)
        records.remove(record)
        return record

    def create(self, zone: Zone, body: dict) -> dict:
        with self.lock:
            record = self._create(zone, self.records[zone.id], body)
            self.changed()
            return copy.deepcopy(record)

    def replace(self, zone: Zone, record_id: str, body: dict, merge: bool) -> dict:
        with self.lock:
            record = self._replace(zone, self.records[zone.id], record_id, body, merge)
            self.changed()
            return copy.deepcopy(record)

    def delete(self, zone: Zone, record_id: str) -> dict:
        with self.lock:
            record = self._delete(self.records[zone.id], record_id)
            self.changed()
            return record

    def batch(self, zone: Zone, body: dict) -> dict:
        """Deletes, patches, puts, posts in that order, all or nothing."""
        changes = {key: body.get(key) or [] for key in ("deletes", "patches", "puts", "posts")}
        total = sum(len(items) for items in changes.values())
        if total > MAX_BATCH_CHANGES:
            # The limit is documented; this code and wording are the fake's own.
            raise ApiError(400, 1004, f"Batch has {total} changes; the limit is {MAX_BATCH_CHANGES}.")
        with self.lock:
            work = copy.deepcopy(self.records[zone.id])
            result = {
                "deletes": [self._delete(work, item.get("id", "")) for item in changes["deletes"]],
                "patches": [self._replace(zone, work, item.get("id", ""), _without_id(item), True)
                            for item in changes["patches"]],
                "puts": [self._replace(zone, work, item.get("id", ""), _without_id(item), False)
                         for item in changes["puts"]],
                "posts": [self._create(zone, work, item) for item in changes["posts"]],
            }
            self.records[zone.id] = work
            self.changed()
            return copy.deepcopy(result)

    def add_raw(self, zone: Zone, records: list[dict]) -> list[dict]:
        """Admin: append records without validation, for adversarial states."""
        with self.lock:
            added = []
            for raw in records:
                stamp = now_iso()
                record = {"proxiable": raw.get("type") in PROXIABLE_TYPES, "proxied": False, "ttl": AUTO_TTL,
                          "settings": {}, "meta": {}, "comment": None, "tags": [], **raw}
                record["name"] = qualify(record["name"], zone.name)
                record.update(id=raw.get("id") or new_id(), created_on=stamp, modified_on=stamp)
                self.records[zone.id].append(record)
                added.append(record)
            self.changed()
            return copy.deepcopy(added)


def _without_id(item: dict) -> dict:
    return {k: v for k, v in item.items() if k != "id"}


# ------------------------------------------------------------------ list filters


def _text_match(value: str | None, op: str, wanted: str) -> bool:
    if op == "present":
        return bool(value)
    if op == "absent":
        return not value
    if value is None:
        return False
    value, wanted = value.lower(), wanted.lower()
    return {
        "exact": value == wanted,
        "contains": wanted in value,
        "startswith": value.startswith(wanted),
        "endswith": value.endswith(wanted),
    }.get(op, False)


def _tag_match(tags: list[str], op: str, wanted: str) -> bool:
    """Tags are ``name:value``; present/absent take a name, the others ``name:value``."""
    pairs = [(name, value) for name, _, value in (tag.partition(":") for tag in tags)]
    if op == "present":
        return any(name == wanted for name, _ in pairs)
    if op == "absent":
        return all(name != wanted for name, _ in pairs)
    wanted_name, _, wanted_value = wanted.partition(":")
    return any(name == wanted_name and _text_match(value, op, wanted_value) for name, value in pairs)


def record_filters(query: dict[str, str], zone: str) -> list:
    """Predicates from the list query: type, name.*, content.*, comment.*, tag.*, proxied.

    ``search`` and ``tag_match`` are not modelled (the API calls ``search`` unspecified).
    """
    tests = []
    for key, wanted in query.items():
        field_name, _, op = key.partition(".")
        op = op or "exact"  # `name=` is `name.exact=`
        if field_name == "type":
            tests.append(lambda r, w=wanted: r["type"] == w.upper())
        elif field_name == "name" and op in ("exact", "contains", "startswith", "endswith"):
            value = qualify(wanted, zone) if op == "exact" else wanted
            tests.append(lambda r, o=op, w=value: _text_match(r["name"], o, w))
        elif field_name in ("content", "comment"):
            tests.append(lambda r, f=field_name, o=op, w=wanted: _text_match(r.get(f), o, w))
        elif field_name == "tag":
            tests.append(lambda r, o=op, w=wanted: _tag_match(r.get("tags") or [], o, w))
        elif field_name == "proxied":
            tests.append(lambda r, w=wanted: r["proxied"] == (w.lower() == "true"))
    return tests


def paginate(items: list, query: dict[str, str], limits: tuple[int, int, int]) -> tuple[list, dict]:
    default, low, high = limits
    page = max(1, _int(query.get("page"), 1))
    per_page = min(high, max(low, _int(query.get("per_page"), default)))
    chunk = items[(page - 1) * per_page: page * per_page]
    # A page past the end is an empty 200: the official SDK pages until it sees one.
    info = {"page": page, "per_page": per_page, "count": len(chunk), "total_count": len(items),
            "total_pages": math.ceil(len(items) / per_page)}
    return chunk, info


def _int(text: str | None, default: int) -> int:
    try:
        return int(float(text)) if text is not None else default
    except ValueError:
        return default


def sort_records(records: list[dict], query: dict[str, str]) -> list[dict]:
    order = query.get("order")
    reverse = query.get("direction", "asc").lower() == "desc"
    if order in ("type", "name", "content", "ttl", "proxied"):
        return sorted(records, key=lambda r: (r[order], r["name"], r["id"]), reverse=reverse)
    # A stable default order, so pages never overlap or skip.
    return sorted(records, key=lambda r: (r["type"], r["name"], r["content"], r["id"]), reverse=reverse)
