"""The fake Cloudflare's records: their ids, validation and normalization as the v4 API does it,
and the API's errors and envelope. The zones that hold them: ``backupmx_sandbox.cf_store``; the
HTTP side: ``backupmx_sandbox.fake_cloudflare``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from datetime import datetime, timezone

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
