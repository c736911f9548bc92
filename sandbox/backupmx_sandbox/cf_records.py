"""The fake Cloudflare's records: their validation and normalization as the v4 API does
it, the zones' store (quota, atomic state file), the list filters and pagination, and
the API's errors and envelope. The HTTP side is ``backupmx_sandbox.fake_cloudflare``.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from backupmx_sandbox.zonedns import AUTO_TTL

HOSTNAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
# Record types the API accepts (the SDK 5.9 list); the DNS server answers the common ones.
RECORD_TYPES = {
    "A", "AAAA", "CAA", "CERT", "CNAME", "DNSKEY", "DS", "HTTPS", "LOC", "MX", "NAPTR",
    "NS", "OPENPGPKEY", "PTR", "SMIMEA", "SRV", "SSHFP", "SVCB", "TLSA", "TXT", "URI",
}
# Only these can sit behind Cloudflare's proxy; the rest answer proxiable: false.
PROXIABLE_TYPES = {"A", "AAAA", "CNAME"}
PRIORITY_TYPES = {"MX", "SRV", "URI"}
MAX_BATCH_CHANGES = 200  # Free plan, per the batch API announcement


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return secrets.token_hex(16)


def stable_id(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An answer with ``success: false``: HTTP status, the ``errors`` list, extra headers."""

    def __init__(self, status: int, code: int, message: str, chain: list[tuple[int, str]] | None = None,
                 headers: dict[str, str] | None = None, more: list[dict] | None = None):
        super().__init__(message)
        error: dict = {"code": code, "message": message}
        if chain:
            error["error_chain"] = [{"code": c, "message": m} for c, m in chain]
        self.status = status
        self.errors = [error] + (more or [])
        self.headers = headers or {}


def validation_error(code: int, message: str) -> ApiError:
    # DNS validation problems arrive wrapped: 1004 "DNS Validation Error" with the
    # cause in error_chain (e.g. 9100 priority, 9021 TTL, 9004 proxied).
    return ApiError(400, 1004, "DNS Validation Error", chain=[(code, message)])


def no_route(path: str) -> ApiError:
    # Seen verbatim in public issue threads (e.g. JastinXyz/withcoding.me#1):
    # 7003 naming the path, followed by 7000.
    return ApiError(404, 7003, f"Could not route to {path}, perhaps your object identifier is invalid?",
                    more=[{"code": 7000, "message": "No route for that URI"}])


def record_missing() -> ApiError:
    return ApiError(404, 81044, "Record does not exist.")


def rate_limited(retry_after: int) -> ApiError:
    return ApiError(429, 971, "Please wait and consider throttling your request speed",
                    headers={"retry-after": str(max(1, int(retry_after)))})


def envelope(result=None, errors=None, result_info=None, messages=None) -> dict:
    body = {"success": not errors, "errors": errors or [], "messages": messages or [],
            "result": None if errors else result}
    if result_info is not None:
        body["result_info"] = result_info
    return body


# --------------------------------------------------------------------- validation


def qualify(name: str, zone: str) -> str:
    """The full record name Cloudflare stores: ``@`` is the apex, short names get the zone appended."""
    name = name.strip().lower().rstrip(".")
    if name in ("@", ""):
        return zone
    if name == zone or name.endswith("." + zone):
        return name
    return f"{name}.{zone}"


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_required(record: dict) -> None:
    for key in ("type", "name"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise validation_error(9100, f"{key} is a required field.")
    if record["type"] not in RECORD_TYPES:
        raise validation_error(9000, "DNS record type is invalid.")  # code not in the notes
    if not isinstance(record.get("content"), str) or record["content"] == "":
        raise validation_error(9100, "content is a required field.")


def check_ttl(ttl) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl != int(ttl):
        raise validation_error(9021, "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for automatic.")
    if int(ttl) != AUTO_TTL and not 60 <= int(ttl) <= 86400:
        raise validation_error(9021, "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for automatic.")


def check_priority(record: dict) -> None:
    if record["type"] not in PRIORITY_TYPES:
        return
    priority = record.get("priority")
    if priority is None:
        raise validation_error(9100, "priority is a required field.")
    if isinstance(priority, bool) or not isinstance(priority, (int, float)) or priority != int(priority) \
            or not 0 <= int(priority) <= 65535:
        raise validation_error(9100, "priority must be an integer between 0 and 65535.")


def check_content(record: dict) -> None:
    kind, content = record["type"], record["content"]
    if kind == "MX":
        # RFC 7505 null MX is the single label "."; anything else must be a hostname.
        if content != "." and (is_ip(content) or not HOSTNAME_PATTERN.match(content)):
            raise ApiError(400, 9009, "Content for MX record must be a hostname.")
    elif kind == "A" and not _is_version(content, 4):
        # 9005 wording as seen in yulewang/cloudflare-api-v4-ddns#16.
        raise ApiError(400, 9005, "Content for A record must be a valid IPv4 address.")
    elif kind == "AAAA" and not _is_version(content, 6):
        raise ApiError(400, 9006, "Content for AAAA record must be a valid IPv6 address.")
    elif kind in ("CNAME", "NS") and not HOSTNAME_PATTERN.match(content):
        raise validation_error(9007, f"Content for {kind} record is invalid.")


def _is_version(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def normalize(record: dict, zone: str) -> dict:
    """Validate a record body and return the stored fields (no id or timestamps)."""
    check_required(record)
    kind = record["type"]
    content = record["content"].strip()
    if kind in ("MX", "CNAME", "NS") and content != ".":
        content = content.lower().rstrip(".")
    normalized = {**record, "content": content}
    check_ttl(record.get("ttl", AUTO_TTL))
    check_priority(normalized)
    check_content(normalized)
    proxied = bool(record.get("proxied", False))
    if proxied and kind not in PROXIABLE_TYPES:
        raise validation_error(9004, "This record type cannot be proxied.")
    stored = {
        "name": qualify(record["name"], zone),
        "type": kind,
        "content": content,
        "proxiable": kind in PROXIABLE_TYPES,
        "proxied": proxied,
        "ttl": int(record.get("ttl", AUTO_TTL)),
        "settings": record.get("settings") or {},
        "meta": {},
        "comment": record.get("comment"),
        "tags": list(record.get("tags") or []),
    }
    if kind in PRIORITY_TYPES:
        stored["priority"] = int(record["priority"])
    return stored


def identity(record: dict) -> tuple:
    # Type, name, content and (for MX) preference make a DNS resource record; two
    # records equal in these are "identical" (81058).
    return (record["type"], record["name"].lower(), record["content"], record.get("priority"))


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


