"""A fake of Cloudflare's v4 DNS API, and an authoritative DNS server for its zones.

Run as ``python -m backupmx_sandbox.fake_cloudflare --config FILE`` (the sandbox's
``dnsapi`` component writes FILE). One process serves:

* the API under ``/client/v4`` (zones, dns_records list/get/create/patch/put/delete,
  batch) with the real envelope, pagination, error codes, record quota and rate
  limit, over HTTP on loopback;
* admin endpoints under ``/_sandbox/`` (no auth; not part of Cloudflare): reset to
  the seed, the request log, fault injection, direct record seeding;
* DNS on UDP and TCP, answering for the Cloudflare zones from the live API state
  (a change through the API shows at once) and for static "world" zones, on its
  own port and, as the sandbox primary's resolver, on port 53 of a loopback
  address of its own (``backupmx_sandbox.zonedns``).

Behaviour follows the project's provider notes (PROVIDER-NOTES.md: Cloudflare v4
DNS records), which cite cloudflare/api-schemas, the official SDK 5.9 and public
issue threads; where a detail comes from elsewhere, the comment says where.
State lives in memory and is written atomically to ``<state_dir>/state.json`` on
every change, so a restart keeps the zone; ``POST /_sandbox/reset`` restores the seed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from backupmx_sandbox.zonedns import AUTO_TTL, ZoneResolver, start_servers

API_PREFIX = "/client/v4"
ADMIN_PREFIX = "/_sandbox"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# Real tokens are 40 characters of [A-Za-z0-9_-]; anything else in a Bearer header
# is a format error (6003/6111), not an unknown token (9109).
TOKEN_PATTERN = re.compile(r"^Bearer ([A-Za-z0-9_-]+)$")
HOSTNAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
# dns-records_per_page in cloudflare/api-schemas: default 100, minimum 1, maximum 5,000,000.
RECORDS_PER_PAGE = (100, 1, 5_000_000)
# zones per_page in cloudflare/api-schemas: default 20, minimum 5, maximum 50.
ZONES_PER_PAGE = (20, 5, 50)
# Record types the API accepts (the SDK 5.9 list); the DNS server answers the common ones.
RECORD_TYPES = {
    "A", "AAAA", "CAA", "CERT", "CNAME", "DNSKEY", "DS", "HTTPS", "LOC", "MX", "NAPTR",
    "NS", "OPENPGPKEY", "PTR", "SMIMEA", "SRV", "SSHFP", "SVCB", "TLSA", "TXT", "URI",
}
# Only these can sit behind Cloudflare's proxy; the rest answer proxiable: false.
PROXIABLE_TYPES = {"A", "AAAA", "CNAME"}
PRIORITY_TYPES = {"MX", "SRV", "URI"}
MAX_BATCH_CHANGES = 200  # Free plan, per the batch API announcement
REQUEST_LOG_LIMIT = 10_000


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


# ---------------------------------------------------------------------------- api


@dataclass
class Response:
    status: int
    body: dict | None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a non-JSON body (an HTML error page)


class Api:
    """The ``/client/v4`` routes as plain calls: (method, path, query, headers, body) -> Response."""

    def __init__(self, store: Store, tokens: dict[str, list[str]]):
        self.store = store
        self.tokens = tokens

    def handle(self, method: str, path: str, query: dict[str, str], headers, body) -> Response:
        try:
            token = self.authenticate(headers)
            status, payload = self.route(method, path, query, token, body)
            return Response(status, payload)
        except ApiError as error:
            return Response(error.status, envelope(errors=error.errors), error.headers)

    def authenticate(self, headers) -> str:
        authorization = headers.get("Authorization")
        if authorization is None:
            if headers.get("X-Auth-Key") is not None:
                # Global API keys are not issued in the sandbox; a token sent as a key
                # gets this answer from the real API (cloudflare/cloudflare-typescript#161).
                raise ApiError(400, 6003, "Invalid request headers",
                               chain=[(6103, "Invalid format for X-Auth-Key header")])
            # Wording as quoted in cloudflare/cloudflare-python#2678.
            raise ApiError(400, 9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers")
        match = TOKEN_PATTERN.match(authorization.strip())
        if not match:
            # As quoted in jeessy2/ddns-go#916 (a header that is not `Bearer <token>`).
            raise ApiError(400, 6003, "Invalid request headers",
                           chain=[(6111, "Invalid format for Authorization header")])
        if match.group(1) not in self.tokens:
            # 403 with 9109, as quoted in jeessy2/ddns-go#890.
            raise ApiError(403, 9109, "Invalid access token")
        return match.group(1)

    def route(self, method: str, path: str, query: dict[str, str], token: str, body):
        parts = [p for p in path.split("/") if p]
        if parts == ["user", "tokens", "verify"] and method == "GET":
            return 200, envelope({"id": stable_id("token", token), "status": "active"},
                                 messages=[{"code": 10000, "message": "This API Token is valid and active",
                                            "type": None}])
        if not parts or parts[0] != "zones":
            raise ApiError(404, 7000, "No route for that URI")
        if len(parts) == 1 and method == "GET":
            return self.list_zones(query, token)
        zone = self.zone_for(parts[1], token, path)
        rest = parts[2:]
        if not rest and method == "GET":
            return 200, envelope(zone.as_api())
        if rest[:1] != ["dns_records"]:
            raise no_route(path)
        return self.records_route(method, zone, rest[1:], query, body, path)

    def zone_for(self, zone_id: str, token: str, path: str) -> Zone:
        zone = self.store.zones.get(zone_id)
        if zone is None:
            raise no_route(path)
        if zone_id not in self.tokens[token]:
            # A valid token whose permissions do not cover this zone.
            raise ApiError(403, 10000, "Authentication error")
        return zone

    def list_zones(self, query: dict[str, str], token: str):
        # A token sees only the zones it was granted: the no-zone token lists nothing.
        zones = [z for z in self.store.zones.values() if z.id in self.tokens[token]]
        if "name" in query:
            zones = [z for z in zones if z.name == query["name"].lower().rstrip(".")]
        if query.get("status", "active") != "active":
            zones = []
        zones.sort(key=lambda z: z.name, reverse=query.get("direction") == "desc")
        page, info = paginate([z.as_api() for z in zones], query, ZONES_PER_PAGE)
        return 200, envelope(page, result_info=info)

    def records_route(self, method: str, zone: Zone, rest: list[str], query, body, path: str):
        if not rest:
            if method == "GET":
                return self.list_records(zone, query)
            if method == "POST":
                return 200, envelope(self.store.create(zone, self.json_body(body)))
        elif rest == ["batch"] and method == "POST":
            return 200, envelope(self.store.batch(zone, self.json_body(body)))
        elif len(rest) == 1:
            record_id = rest[0]
            if not ID_PATTERN.match(record_id):
                raise no_route(path)
            if method == "GET":
                return 200, envelope(self.store.find(self.store.snapshot(zone.id), record_id))
            if method in ("PATCH", "PUT"):
                record = self.store.replace(zone, record_id, self.json_body(body), merge=method == "PATCH")
                return 200, envelope(record)
            if method == "DELETE":
                return 200, envelope({"id": self.store.delete(zone, record_id)["id"]})
        raise no_route(path)

    def list_records(self, zone: Zone, query: dict[str, str]):
        records = self.store.snapshot(zone.id)
        tests = record_filters(query, zone.name)
        combine = any if query.get("match", "all").lower() == "any" else all
        if tests:
            records = [r for r in records if combine(test(r) for test in tests)]
        page, info = paginate(sort_records(records, query), query, RECORDS_PER_PAGE)
        return 200, envelope(page, result_info=info)

    @staticmethod
    def json_body(body) -> dict:
        if not isinstance(body, dict):
            # The real answer to a body that is not a JSON object (quoted in the README
            # of a public Cloudflare DDNS script that hit it).
            raise ApiError(400, 9207, "Request body is invalid.")
        return body


# ------------------------------------------------------------ faults and limits


class Faults:
    """Injected faults for ``/client/v4`` calls, each used up ``count`` times.

    ``rate_limit`` {count, retry_after}, ``server_error`` {count, status},
    ``slow`` {count, seconds}, ``after_write`` {count, mode: error|drop[, status]},
    all with optional ``methods`` and ``path_contains`` filters (``count`` defaults
    to 1; null keeps the fault until cleared); ``quota`` sets the
    zone's record quota (null restores the default).
    """

    KINDS = ("rate_limit", "server_error", "slow", "after_write")

    def __init__(self):
        self.lock = threading.Lock()
        self.active: dict[str, dict] = {}

    def set(self, settings: dict) -> None:
        with self.lock:
            for kind in self.KINDS:
                if kind in settings:
                    spec = settings[kind]
                    if spec is None:
                        self.active.pop(kind, None)
                    else:
                        self.active[kind] = {"count": 1, **spec}

    def clear(self) -> None:
        with self.lock:
            self.active.clear()

    def view(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.active)

    def take(self, kind: str, method: str, path: str) -> dict | None:
        """The fault of ``kind`` that applies to this request (using up one count), if any."""
        with self.lock:
            spec = self.active.get(kind)
            if spec is None or not self._applies(kind, spec, method, path):
                return None
            if spec["count"] is not None:  # null: until cleared
                spec["count"] -= 1
                if spec["count"] <= 0:
                    del self.active[kind]
            return dict(spec)

    @staticmethod
    def _applies(kind: str, spec: dict, method: str, path: str) -> bool:
        methods = spec.get("methods") or (sorted(WRITE_METHODS) if kind == "after_write" else None)
        if methods and method not in [m.upper() for m in methods]:
            return False
        return spec.get("path_contains", "") in path


class Throttle:
    """Cloudflare's global limit: N requests per window per token, then blocked for a while."""

    def __init__(self, requests: int, window: float, block: float):
        self.defaults = {"requests": requests, "window": window, "block": block}
        self.lock = threading.Lock()
        self.seen: dict[str, deque] = {}
        self.blocked_until: dict[str, float] = {}
        self.configure(None)

    def configure(self, limit: dict | None) -> None:
        """New limits (``requests``, ``window``, ``block``), or the defaults for None; counts restart."""
        settings = {**self.defaults, **(limit or {})}
        with self.lock:
            self.requests, self.window, self.block = settings["requests"], settings["window"], settings["block"]
            self.seen.clear()
            self.blocked_until.clear()

    def view(self) -> dict:
        return {"requests": self.requests, "window": self.window, "block": self.block}

    def check(self, key: str) -> int | None:
        """Seconds to wait if ``key`` is over the limit, else None (and the request counts)."""
        now = time.monotonic()
        with self.lock:
            until = self.blocked_until.get(key, 0)
            if now < until:
                return math.ceil(until - now)
            seen = self.seen.setdefault(key, deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.requests:
                self.blocked_until[key] = now + self.block
                return math.ceil(self.block)
            seen.append(now)
            return None


class RequestLog:
    """What was asked and answered; never a credential."""

    def __init__(self):
        self.lock = threading.Lock()
        self.entries: deque = deque(maxlen=REQUEST_LOG_LIMIT)

    def add(self, entry: dict) -> None:
        with self.lock:
            self.entries.append(entry)

    def view(self) -> list[dict]:
        with self.lock:
            return list(self.entries)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


# --------------------------------------------------------------------------- http


def error_page(status: int) -> Response:
    # Edge errors (502/503/504) come as HTML from Cloudflare's proxy, not as a JSON
    # envelope: a client must cope with a body it cannot parse.
    title = f"{status} {HTTPStatus(status).phrase}" if status in HTTPStatus._value2member_map_ else str(status)
    page = (f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center>"
            f"<hr><center>cloudflare</center></body></html>\n")
    return Response(status, None, {"Content-Type": "text/html"}, raw=page.encode())


class World:
    """Everything a request handler needs, shared by all threads."""

    def __init__(self, config: dict):
        state_dir = Path(config["state_dir"])
        state_dir.mkdir(parents=True, exist_ok=True)
        zones = [Zone(z["id"], z["name"], z["account"], z["name_servers"], z["records"]) for z in config["zones"]]
        self.store = Store(zones, state_dir / "state.json", config["record_quota"])
        self.api = Api(self.store, config["tokens"])
        self.faults = Faults()
        limit = config.get("rate_limit", {"requests": 1200, "window": 300, "block": 300})
        self.throttle = Throttle(limit["requests"], limit["window"], limit["block"])
        self.log = RequestLog()
        self.static_zones = config.get("static_zones", {})

    def reset(self) -> None:
        self.store.reset()
        self.faults.clear()
        self.throttle.configure(None)
        self.log.clear()

    def add_zone(self, name: str, records: list[dict]) -> dict:
        """A further zone (benchmarks: many zones in one account), granted to every token that has a zone.

        Its records are validated like API writes and become its seed (``reset``
        restores them). Kept in memory only: a restart of the fake forgets it.
        """
        name = name.strip().lower().rstrip(".")
        if not HOSTNAME_PATTERN.match(name):
            raise ValueError(f"not a zone name: {name!r}")
        store = self.store
        with store.lock:
            existing = store.zone_by_name(name)
            if existing is not None:
                return existing.as_api()
            first = next(iter(store.zones.values()))
            zone = Zone(hashlib.md5(f"backupmx-sandbox-zone:{name}".encode()).hexdigest(), name,
                        first.account, first.name_servers, list(records))
            seeded = zone.seed_records()  # raises ApiError on a bad record, before anything changes
            store.zones[zone.id] = zone
            store.records[zone.id] = seeded
            for granted in self.api.tokens.values():
                if granted:
                    granted.append(zone.id)
            store.changed()
            return zone.as_api()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    world: World  # set on the subclass made in serve()

    def version_string(self) -> str:
        return "cloudflare"  # what the real API answers in `server:`

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def log_message(self, format, *args):  # the request log replaces stderr chatter
        pass

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.read_body()
        if url.path.startswith(ADMIN_PREFIX + "/"):
            try:
                self.send(admin(self.world, method, url.path[len(ADMIN_PREFIX):], body))
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                self.send(Response(400, {"error": f"bad admin request: {error!r}"}))
            return
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        started = time.time()
        try:
            response, fault = self.answer(method, url.path, query, body)
        except Exception:  # a bug in the fake must show, not hang the client
            traceback.print_exc()
            response, fault = Response(500, envelope(errors=[{"code": 10001, "message": "fake: internal error"}])), None
        entry = {"method": method, "path": url.path, "query": query, "status": response.status if response else None,
                 "time": started, "duration": round(time.time() - started, 4), "fault": fault}
        if method in WRITE_METHODS:
            entry["body"] = body if not isinstance(body, bytes) else body.decode("utf-8", "replace")
        self.world.log.add(entry)
        if response is None:  # a dropped connection: the write happened, no answer comes
            self.close_connection = True
            return
        self.send(response)

    def answer(self, method: str, path: str, query: dict, body) -> tuple[Response | None, str | None]:
        faults, api_path = self.world.faults, path[len(API_PREFIX):]
        if not path.startswith(API_PREFIX + "/") and path != API_PREFIX:
            return Response(404, envelope(errors=[{"code": 7000, "message": "No route for that URI"}])), None
        slow = faults.take("slow", method, path)
        if slow:
            time.sleep(float(slow.get("seconds", 1)))
        limited = faults.take("rate_limit", method, path)
        if limited:
            error = rate_limited(limited.get("retry_after", 1))
            return Response(429, envelope(errors=error.errors), error.headers), "rate_limit"
        failing = faults.take("server_error", method, path)
        if failing:
            return error_page(int(failing.get("status", 502))), "server_error"
        wait = self.world.throttle.check(self.headers.get("Authorization") or self.client_address[0])
        if wait is not None:
            error = rate_limited(wait)
            return Response(429, envelope(errors=error.errors), error.headers), "throttle"
        response = self.world.api.handle(method, api_path, query, self.headers, body)
        if response.status < 300:
            after = faults.take("after_write", method, path)
            if after:
                return (None if after.get("mode") == "drop" else error_page(int(after.get("status", 502)))), \
                    "after_write"
        return response, ("slow" if slow else None)

    def send(self, response: Response) -> None:
        payload = response.raw if response.raw is not None else json.dumps(response.body).encode()
        self.send_response(response.status)
        headers = {"Content-Type": "application/json", **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def admin(world: World, method: str, path: str, body) -> Response:
    """The sandbox's own endpoints (under ``/_sandbox``, no auth).

    ``GET /health``; ``POST /reset`` (seed back, faults, limits and log cleared);
    ``GET|DELETE /requests``; ``GET|POST|DELETE /faults`` (see ``Faults``, plus
    ``quota`` and ``limit`` {requests, window, block} for the real rate limit);
    ``GET /records`` (every zone's records), ``POST /records`` {zone, records}
    (append records unvalidated, for states the API would refuse); ``POST /zones``
    {name, records} (one more zone, its records validated, kept in memory).
    """
    body = body if isinstance(body, dict) else {}
    if path == "/health" and method == "GET":
        return Response(200, {"ok": True})
    if path == "/reset" and method == "POST":
        world.reset()
        return Response(200, {"ok": True})
    if path == "/requests":
        if method == "DELETE":
            world.log.clear()
            return Response(200, {"ok": True})
        return Response(200, {"requests": world.log.view()})
    if path == "/faults":
        if method == "DELETE":
            world.faults.clear()
            world.store.quota_override = None
            world.throttle.configure(None)
        elif method == "POST":
            world.faults.set(body)
            if "quota" in body:
                world.store.quota_override = body["quota"]
            if "limit" in body:
                world.throttle.configure(body["limit"])
        return Response(200, {"faults": world.faults.view(), "quota": world.store.quota,
                               "limit": world.throttle.view()})
    if path == "/zones" and method == "POST":
        # {name, records}: one more zone in the account (see World.add_zone).
        try:
            return Response(200, {"zone": world.add_zone(body["name"], body.get("records") or [])})
        except ApiError as error:
            return Response(400, {"error": error.errors})
    if path == "/records":
        if method != "POST":
            return Response(200, {"zones": {z.name: world.store.snapshot(z.id) for z in world.store.zones.values()}})
        zone = world.store.zone_by_name(body.get("zone") or "")
        if zone is None:
            return Response(404, {"error": f"no zone {body.get('zone')!r}"})
        return Response(200, {"added": world.store.add_raw(zone, body.get("records") or [])})
    return Response(404, {"error": f"no sandbox endpoint {method} {path}"})


# --------------------------------------------------------------------------- main


def serve(config: dict) -> None:
    world = World(config)
    dns_servers = start_servers(ZoneResolver(world), config["dns"]["host"], config["dns"]["port"])
    resolver = config.get("resolver")
    if resolver:
        dns_servers += start_servers(ZoneResolver(world, recursive=True), resolver["host"], resolver["port"])
    handler = type("BoundHandler", (Handler,), {"world": world})
    httpd = ThreadingHTTPServer((config["api"]["host"], config["api"]["port"]), handler)
    httpd.daemon_threads = True
    resolving = f", resolver {resolver['host']}:{resolver['port']} (udp+tcp)" if resolver else ""
    print(f"fake cloudflare: api http://{config['api']['host']}:{config['api']['port']}{API_PREFIX}, "
          f"dns {config['dns']['host']}:{config['dns']['port']} (udp+tcp){resolving}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        # The DNS servers run in daemon threads and go with the process; closing
        # their sockets is enough (shutdown() would wait out their poll interval).
        httpd.server_close()
        for server in dns_servers:
            server.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake_cloudflare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config.read_text())
    except (OSError, ValueError) as error:
        print(f"fake cloudflare: cannot read config {args.config}: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(config)
    except OSError as error:
        print(f"fake cloudflare: cannot listen: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
