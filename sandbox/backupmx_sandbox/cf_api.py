"""The fake Cloudflare's v4 API (``/client/v4``): zones, dns_records list/get/create/patch/put/delete
and batch, with the real envelope, pagination and error codes. Part of ``backupmx_sandbox.fake_cloudflare``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from backupmx_sandbox.cf_records import ApiError, envelope, no_route, stable_id
from backupmx_sandbox.cf_store import Store, Zone, paginate, record_filters, sort_records

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# Real tokens are 40 characters of [A-Za-z0-9_-]; anything else in a Bearer header
# is a format error (6003/6111), not an unknown token (9109).
TOKEN_PATTERN = re.compile(r"^Bearer ([A-Za-z0-9_-]+)$")
# dns-records_per_page in cloudflare/api-schemas: default 100, minimum 1, maximum 5,000,000.
RECORDS_PER_PAGE = (100, 1, 5_000_000)
# zones per_page in cloudflare/api-schemas: default 20, minimum 5, maximum 50.
ZONES_PER_PAGE = (20, 5, 50)


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
