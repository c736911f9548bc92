"""The fake Roller Network: the ACC account API and two store-and-forward SMTP relays.

Run as ``python -m backupmx_sandbox.fake_rollernet --config PATH``; ``provider.py``
writes the config (mode 600: it holds the API keys) and supervises the process.

One process serves:

* the ACC API at ``/api/api.php`` (parameters ``u``, ``k``, ``m``, ``a``, ``d``). Roller
  Network does not publish the mail module's names or its response format, so the
  shape here is an *assumption*, written down in ``docs/provider-api.md``;
* test-only admin endpoints under ``/_sandbox/`` (reset, state, faults, request
  log, relay switches, queue view) without auth;
* two SMTP relays (``mail.rollernet.us``, ``mail2.rollernet.us``) that accept mail
  for enabled Secondary-MX domains, queue it on disk and deliver it to the mail
  host's PROXY-v2 listener on a sliding retry schedule, announcing the relay's
  public source address in the PROXY header, as HAProxy does in production.

Provider state (domains, relay CIDRs) and the queue are kept on disk, as the real
provider keeps them across our restarts; faults, relay switches and the request log
are test knobs kept in memory. ``POST /_sandbox/reset`` returns everything to seed.
"""

from __future__ import annotations

import argparse
import copy
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets
import signal
import smtplib
import socket
import ssl
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, syntax

from backupmx_sandbox.smtp_client import proxy_v2_header

log = logging.getLogger("rollernet")

API_PATH = "/api/api.php"
ADMIN_PREFIX = "/_sandbox/"

# Assumed ACC vocabulary (see docs/provider-api.md).
MODES = ("secondary_mx", "mail_mirror", "primary")
RELAYED_MODES = ("secondary_mx", "mail_mirror")
USER_TABLE_DEFAULTS = ("allow_any", "deny")
PROTECTED_USERS = ("abuse", "postmaster")  # Roller Network: cannot be removed from the table
READ, WRITE = "mail.read", "mail.write"
REQUEST_LOG_LIMIT = 1000


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _write_json_atomically(path: Path, data, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


class AccError(Exception):
    """An application error answered in the JSON envelope (HTTP 200 unless ``status`` says)."""

    def __init__(self, code: str, message: str, status: int = 200):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------
# Provider state: domains and relay CIDRs
# ---------------------------------------------------------------------------


class Store:
    """The account's domain settings and relay CIDRs, persisted to ``state.json``."""

    def __init__(self, path: Path, seed: dict):
        self.path = path
        self.seed = seed
        self.lock = threading.RLock()
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.reset()

    def reset(self) -> None:
        with self.lock:
            self.data = copy.deepcopy(self.seed)
            self._save()

    def _save(self) -> None:
        _write_json_atomically(self.path, self.data)

    def domain(self, name: str) -> dict | None:
        with self.lock:
            record = self.data["domains"].get(name.lower())
            return copy.deepcopy(record) if record is not None else None

    def domain_names(self) -> list[str]:
        with self.lock:
            return sorted(self.data["domains"])

    def update_domain(self, name: str, fields: dict, create: bool = False) -> dict:
        with self.lock:
            domains = self.data["domains"]
            name = name.lower()
            if name not in domains:
                if not create:
                    raise AccError("domain_not_found", f"domain {name} is not in this account")
                domains[name] = new_domain_record()
            domains[name].update(copy.deepcopy(fields))
            self._save()
            return copy.deepcopy(domains[name])

    def remove_domain(self, name: str) -> None:
        with self.lock:
            self.data["domains"].pop(name.lower(), None)
            self._save()

    def relay_cidrs(self) -> list[str]:
        with self.lock:
            return list(self.data["relay_cidrs"])

    def set_relay_cidrs(self, cidrs: list[str]) -> None:
        with self.lock:
            self.data["relay_cidrs"] = list(cidrs)
            self._save()

    def snapshot(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.data)


def new_domain_record() -> dict:
    # Roller Network's documented default: a valid-user table that denies unknown users.
    return {"mode": "secondary_mx", "enabled": True, "user_table_default": "deny", "hold": False, "users": []}


def domain_view(name: str, record: dict) -> dict:
    return {
        "domain": name,
        "mode": record["mode"],
        "enabled": record["enabled"],
        "user_table_default": record["user_table_default"],
        "hold": record["hold"],
    }


def usertable_view(name: str, record: dict) -> dict:
    return {
        "domain": name,
        "default": record["user_table_default"],
        "users": sorted(set(record.get("users", [])) | set(PROTECTED_USERS)),
        "protected": list(PROTECTED_USERS),
    }


# ---------------------------------------------------------------------------
# The relays' queue: one .eml + one .json per message, plus delivered/bounced logs
# ---------------------------------------------------------------------------


class MailQueue:
    """Messages the relays accepted and have not delivered or bounced yet.

    The ``.json`` file is written last and marks a message as queued, so a crash
    between the two writes leaves only an orphan ``.eml`` that start-up removes.
    """

    def __init__(self, directory: Path, delivered_log: Path, bounced_log: Path):
        self.directory = directory
        self.delivered_log = delivered_log
        self.bounced_log = bounced_log
        self.lock = threading.RLock()
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        for eml in self.directory.glob("*.eml"):
            if not eml.with_suffix(".json").exists():
                eml.unlink(missing_ok=True)
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def add(self, relay: str, mail_from: str, rcpts: list[str], domain: str, content: bytes) -> dict:
        now = time.time()
        meta = {
            "id": secrets.token_hex(6).upper(),
            "relay": relay,
            "domain": domain,
            "from": mail_from,
            "to": list(rcpts),
            "size": len(content),
            "queued_at": now,
            "attempts": 0,
            "last_attempt": None,
            "next_attempt": now,  # a relay tries at once
            "last_error": None,
        }
        with self.lock:
            eml = self.directory / f"{meta['id']}.eml"
            fd = os.open(eml, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            _write_json_atomically(self.directory / f"{meta['id']}.json", meta)
        return meta

    def messages(self, domain: str | None = None) -> list[dict]:
        with self.lock:
            found = []
            for path in self.directory.glob("*.json"):
                try:
                    meta = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if domain is None or meta["domain"] == domain:
                    found.append(meta)
        return sorted(found, key=lambda meta: (meta["queued_at"], meta["id"]))

    def contains(self, message_id: str) -> bool:
        return (self.directory / f"{message_id}.json").exists()

    def content(self, message_id: str) -> bytes | None:
        try:
            return (self.directory / f"{message_id}.eml").read_bytes()
        except OSError:
            return None

    def update(self, message_id: str, fields: dict) -> bool:
        """Merge ``fields`` into a message's metadata; False if it left the queue meanwhile."""
        with self.lock:
            path = self.directory / f"{message_id}.json"
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                return False
            meta.update(fields)
            _write_json_atomically(path, meta)
            return True

    def remove(self, message_id: str) -> None:
        with self.lock:
            (self.directory / f"{message_id}.json").unlink(missing_ok=True)
            (self.directory / f"{message_id}.eml").unlink(missing_ok=True)

    def make_due(self, domain: str | None = None) -> int:
        """Retry now (ETRN, queue_flush, hold release): every matching message is due."""
        now = time.time()
        count = 0
        for meta in self.messages(domain):
            count += self.update(meta["id"], {"next_attempt": min(meta["next_attempt"], now)})
        return count

    def record(self, outcome: str, entry: dict) -> None:
        path = self.delivered_log if outcome == "delivered" else self.bounced_log
        with self.lock:
            with open(path, "a") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def history(self, outcome: str) -> list[dict]:
        path = self.delivered_log if outcome == "delivered" else self.bounced_log
        with self.lock:
            try:
                lines = path.read_text().splitlines()
            except OSError:
                return []
        return [json.loads(line) for line in lines if line.strip()]

    def clear(self) -> None:
        with self.lock:
            for path in list(self.directory.iterdir()):
                path.unlink(missing_ok=True)
            for path in (self.delivered_log, self.bounced_log):
                path.unlink(missing_ok=True)


def queue_view(meta: dict, held: bool) -> dict:
    return {
        "id": meta["id"],
        "from": meta["from"],
        "to": list(meta["to"]),
        "size": meta["size"],
        "queued_at": iso(meta["queued_at"]),
        "attempts": meta["attempts"],
        "next_attempt": None if held else iso(meta["next_attempt"]),
        "last_error": meta["last_error"],
        "relay": meta["relay"],
        "held": held,
    }


# ---------------------------------------------------------------------------
# Test knobs: relay switches, faults, request log
# ---------------------------------------------------------------------------


class RelaySettings:
    """Switches tests flip via ``POST /_sandbox/relay``; back to config defaults on reset."""

    FIELDS = ("source_override", "retry_schedule", "deliver", "max_queue_age", "rcpt_reply", "deliver_to")

    def __init__(self, defaults: dict):
        self.defaults = defaults
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.values = {
                "source_override": None,
                "retry_schedule": list(self.defaults["retry_schedule"]),
                "deliver": True,
                "max_queue_age": self.defaults["max_queue_age"],
                "rcpt_reply": None,
                # "127.0.0.1:PORT" to deliver somewhere other than the mail host's
                # PROXY listener (a test's stand-in that answers 4xx/5xx on demand).
                "deliver_to": None,
            }

    def update(self, changes: dict) -> dict:
        unknown = set(changes) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown relay switch(es): {', '.join(sorted(unknown))}")
        source = changes.get("source_override")
        if source is not None:
            ipaddress.ip_address(source)  # ValueError names the bad address
        schedule = changes.get("retry_schedule")
        if schedule is not None and (not schedule or any(float(step) <= 0 for step in schedule)):
            raise ValueError("retry_schedule must be a non-empty list of positive seconds")
        target = changes.get("deliver_to")
        if target is not None:
            host, _, port = target.rpartition(":")
            ipaddress.ip_address(host)
            if not port.isdigit():
                raise ValueError("deliver_to must be ip:port")
        reply = changes.get("rcpt_reply")
        if reply is not None and not (reply[:3].isdigit() and reply[0] in "45"):
            raise ValueError("rcpt_reply must be an SMTP 4xx/5xx reply line, e.g. '451 4.3.0 try later'")
        with self.lock:
            self.values.update(changes)
            return dict(self.values)

    def get(self, name: str):
        with self.lock:
            return copy.deepcopy(self.values[name])

    def snapshot(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.values)


class Faults:
    """Failures the ACC API answers with until cleared or their count runs out.

    ``{"down": true}`` drops connections without an answer; ``{"slow": 2.5}`` delays
    answers; ``{"server_error": {"count": 2, "status": 502}}``, ``{"rate_limit":
    {"count": 1, "retry_after": 3}}``, ``{"malformed": {"count": 1}}`` answer that
    many requests wrongly (a missing or null count means until cleared).
    """

    KINDS = ("down", "slow", "server_error", "rate_limit", "malformed")

    def __init__(self):
        self.lock = threading.Lock()
        self.active: dict = {}

    def set(self, changes: dict) -> dict:
        unknown = set(changes) - set(self.KINDS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        with self.lock:
            for kind, setting in changes.items():
                if setting in (None, False, 0):
                    self.active.pop(kind, None)
                else:
                    self.active[kind] = copy.deepcopy(setting)
            return copy.deepcopy(self.active)

    def clear(self) -> None:
        with self.lock:
            self.active = {}

    def snapshot(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.active)

    def take(self, kind: str):
        """The setting of ``kind`` if it applies to this request, using up one count."""
        with self.lock:
            setting = self.active.get(kind)
            if setting is None:
                return None
            if isinstance(setting, dict) and setting.get("count") is not None:
                setting["count"] -= 1
                if setting["count"] <= 0:
                    del self.active[kind]
            return setting


class RequestLog:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries: list[dict] = []

    def add(self, entry: dict) -> None:
        with self.lock:
            self.entries.append(entry)
            del self.entries[:-REQUEST_LOG_LIMIT]

    def clear(self) -> None:
        with self.lock:
            self.entries = []

    def snapshot(self) -> list[dict]:
        with self.lock:
            return copy.deepcopy(self.entries)


# ---------------------------------------------------------------------------
# The ACC API
# ---------------------------------------------------------------------------


class AccApi:
    """Dispatch of ``m``/``a`` with ``d`` (JSON) to the fake account's state."""

    def __init__(self, app: "Rollernet", user: str, keys: list[dict]):
        self.app = app
        self.user = user
        self.keys = keys
        self.actions = {
            ("mail", "domain_list"): (READ, self.domain_list),
            ("mail", "domain_get"): (READ, self.domain_get),
            ("mail", "domain_set"): (WRITE, self.domain_set),
            ("mail", "hold_set"): (WRITE, self.hold_set),
            ("mail", "usertable_get"): (READ, self.usertable_get),
            ("mail", "usertable_set_default"): (WRITE, self.usertable_set_default),
            ("mail", "relay_addresses"): (READ, self.relay_addresses),
            ("mail", "queue_list"): (READ, self.queue_list),
            ("mail", "queue_flush"): (WRITE, self.queue_flush),
        }

    def key_name(self, user: str | None, key: str | None) -> str | None:
        """Which configured key this is (its name, never its value); None if none matches."""
        if not user or not key or not hmac.compare_digest(user.encode(), self.user.encode()):
            return None
        for entry in self.keys:
            if hmac.compare_digest(key.encode(), entry["key"].encode()):
                return entry["name"]
        return None

    def handle(self, params: dict, key_name: str | None) -> dict:
        if key_name is None:
            raise AccError("auth_failed", "invalid user or API key", status=403)
        module, action = params.get("m", ""), params.get("a", "")
        if module != "mail":
            raise AccError("unknown_module", f"unknown module {module!r}")
        if (module, action) not in self.actions:
            raise AccError("unknown_action", f"unknown action {action!r} in module {module!r}")
        permission, handler = self.actions[(module, action)]
        granted = next(entry["permissions"] for entry in self.keys if entry["name"] == key_name)
        if permission not in granted:
            raise AccError("permission_denied", f"this API key has no {permission} permission", status=403)
        return handler(parse_data(params.get("d")))

    # -- actions -------------------------------------------------------------

    def _domain(self, data: dict) -> tuple[str, dict]:
        name = data.get("domain")
        if not isinstance(name, str) or not name:
            raise AccError("bad_request", "d.domain is required")
        record = self.app.store.domain(name)
        if record is None:
            raise AccError("domain_not_found", f"domain {name.lower()} is not in this account")
        return name.lower(), record

    def domain_list(self, data: dict):
        store = self.app.store
        return [domain_view(name, store.domain(name)) for name in store.domain_names()]

    def domain_get(self, data: dict):
        return domain_view(*self._domain(data))

    def domain_set(self, data: dict):
        name, _ = self._domain(data)
        changes = only_fields(data, {"enabled": bool, "mode": str}, required_any=True)
        if "mode" in changes and changes["mode"] not in MODES:
            raise AccError("invalid_value", f"mode must be one of {', '.join(MODES)}")
        return domain_view(name, self.app.store.update_domain(name, changes))

    def hold_set(self, data: dict):
        name, before = self._domain(data)
        changes = only_fields(data, {"hold": bool}, required=("hold",))
        after = self.app.store.update_domain(name, changes)
        if before["hold"] and not after["hold"]:
            self.app.release(name)
        return domain_view(name, after)

    def usertable_get(self, data: dict):
        return usertable_view(*self._domain(data))

    def usertable_set_default(self, data: dict):
        name, _ = self._domain(data)
        changes = only_fields(data, {"default": str}, required=("default",))
        if changes["default"] not in USER_TABLE_DEFAULTS:
            raise AccError("invalid_value", f"default must be one of {', '.join(USER_TABLE_DEFAULTS)}")
        record = self.app.store.update_domain(name, {"user_table_default": changes["default"]})
        return usertable_view(name, record)

    def relay_addresses(self, data: dict):
        return {"cidrs": self.app.store.relay_cidrs(), "hosts": [relay["host"] for relay in self.app.relays]}

    def queue_list(self, data: dict):
        if data.get("domain") is None:
            return self.app.queue_listing(None)
        name, _ = self._domain(data)
        return self.app.queue_listing(name)

    def queue_flush(self, data: dict):
        name, _ = self._domain(data)
        return {"domain": name, "scheduled": self.app.flush(name)}


def parse_data(raw: str | None) -> dict:
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise AccError("bad_request", "d is not valid JSON") from None
    if not isinstance(data, dict):
        raise AccError("bad_request", "d must be a JSON object")
    return data


def only_fields(data: dict, allowed: dict[str, type], required: tuple = (), required_any: bool = False) -> dict:
    """The settable fields of ``data`` (besides ``domain``), type-checked; strict, to catch client bugs."""
    unknown = set(data) - set(allowed) - {"domain"}
    if unknown:
        raise AccError("bad_request", f"unknown field(s) in d: {', '.join(sorted(unknown))}")
    changes = {name: data[name] for name in allowed if name in data}
    for name, kind in allowed.items():
        if name in changes and not isinstance(changes[name], kind):
            raise AccError("bad_request", f"d.{name} must be {kind.__name__}")
    missing = [name for name in required if name not in changes]
    if missing or (required_any and not changes):
        wanted = ", ".join(missing or sorted(allowed))
        raise AccError("bad_request", f"d needs {wanted}")
    return changes


# ---------------------------------------------------------------------------
# HTTP: the API and the admin endpoints
# ---------------------------------------------------------------------------


class HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rollernet-sandbox"
    app: "Rollernet"  # set on the subclass made in Rollernet.start

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def log_message(self, format, *args):
        # The default logs the request line, whose query string may carry the key.
        log.info("%s %s", getattr(self, "command", None), urlsplit(getattr(self, "path", "") or "").path)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._body()
        if url.path == API_PATH:
            self._api(method, url.query, body)
        elif url.path.startswith(ADMIN_PREFIX):
            self._admin(method, url.path[len(ADMIN_PREFIX):], body)
        else:
            self._send(404, {"status": "error", "error": {"code": "not_found", "message": url.path}})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload, headers: dict | None = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    # -- /api/api.php --------------------------------------------------------

    def _api_params(self, query: str, body: bytes) -> dict:
        # Like PHP's $_REQUEST: query string and form body, the body winning.
        params = {name: values[0] for name, values in parse_qs(query, keep_blank_values=True).items()}
        if body and "json" not in (self.headers.get("Content-Type") or ""):
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            params.update({name: values[0] for name, values in form.items()})
        return params

    def _api(self, method: str, query: str, body: bytes) -> None:
        app = self.app
        params = self._api_params(query, body)
        key_name = app.api.key_name(params.get("u"), params.get("k"))
        entry = {
            "time": iso(time.time()),
            "method": method,
            "user": params.get("u"),
            "key": key_name or ("missing" if not params.get("k") else "invalid"),
            "module": params.get("m"),
            "action": params.get("a"),
            "data": params.get("d"),
        }
        if self._inject_fault(entry):
            app.requests.add(entry)
            return
        try:
            status, payload = 200, {"status": "ok", "data": app.api.handle(params, key_name)}
        except AccError as error:
            status = error.status
            payload = {"status": "error", "error": {"code": error.code, "message": error.message}}
        outcome = "ok" if payload["status"] == "ok" else payload["error"]["code"]
        entry.update(http_status=status, outcome=outcome)
        app.requests.add(entry)
        self._send(status, payload)

    def _inject_fault(self, entry: dict) -> bool:
        """Answer (or drop) this request as a configured fault would; True if it did."""
        faults = self.app.faults
        slow = faults.take("slow")
        if slow:
            time.sleep(float(slow if not isinstance(slow, dict) else slow.get("seconds", 1)))
        if faults.take("down"):
            entry.update(http_status=None, outcome="fault:down")
            self.close_connection = True  # no answer at all: the client sees a dropped connection
            return True
        limited = faults.take("rate_limit")
        if limited:
            retry_after = str(limited.get("retry_after", 1) if isinstance(limited, dict) else 1)
            entry.update(http_status=429, outcome="fault:rate_limit")
            self._send(429, {"status": "error", "error": {"code": "rate_limited", "message": "too many requests"}},
                       headers={"Retry-After": retry_after})
            return True
        failing = faults.take("server_error")
        if failing:
            status = int(failing.get("status", 500) if isinstance(failing, dict) else 500)
            entry.update(http_status=status, outcome="fault:server_error")
            self._send(status, None, raw=f"<html><body><h1>{status} Server Error</h1></body></html>".encode())
            return True
        if faults.take("malformed"):
            entry.update(http_status=200, outcome="fault:malformed")
            self._send(200, None, raw=b"<br />\n<b>Warning</b>: unexpected output {\"status\": ")
            return True
        return False

    # -- /_sandbox/ ----------------------------------------------------------

    def _admin(self, method: str, name: str, body: bytes) -> None:
        app = self.app
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            self._send(400, {"error": "body is not JSON"})
            return
        routes = {
            ("GET", "health"): lambda: {"status": "ok"},
            ("POST", "reset"): app.reset,
            ("GET", "state"): app.store.snapshot,
            ("POST", "state"): lambda: app.set_state(request),
            ("GET", "faults"): app.faults.snapshot,
            ("POST", "faults"): lambda: app.faults.set(request),
            ("GET", "requests"): app.requests.snapshot,
            ("GET", "relay"): app.settings.snapshot,
            ("POST", "relay"): lambda: app.settings.update(request),
            ("GET", "queue"): app.queue_report,
            ("GET", "delivery"): lambda: {"rounds": app.delivery.rounds},
            ("POST", "flush"): lambda: {"scheduled": app.flush(request.get("domain"))},
        }
        route = routes.get((method, name))
        if route is None:
            self._send(404, {"error": f"no admin endpoint {method} {ADMIN_PREFIX}{name}"})
            return
        try:
            self._send(200, route())
        except (ValueError, TypeError, KeyError) as error:
            self._send(400, {"error": str(error)})


# ---------------------------------------------------------------------------
# SMTP: the relays' receiving side
# ---------------------------------------------------------------------------


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP plus ETRN, which Roller Network's relays support."""

    @syntax("ETRN domain")
    async def smtp_ETRN(self, arg: str) -> None:
        node = (arg or "").strip().lstrip("@")
        if not node:
            await self.push("501 Syntax: ETRN domain")
            return
        await self.push(self.event_handler.etrn(node))


class RelayController(Controller):
    def factory(self):
        return RelaySMTP(self.handler, **self.SMTP_kwargs)


class RelayHandler:
    """One relay host (``mail.rollernet.us`` or ``mail2``): which mail it accepts, and queueing it."""

    def __init__(self, app: "Rollernet", host: str):
        self.app = app
        self.host = host

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname  # the 5-argument hook must do what smtp_EHLO otherwise does
        # No AUTH for the world, and ETRN on offer, as at a store-and-forward relay.
        lines = [line for line in responses[:-1] if not line[4:].startswith("AUTH")]
        return lines + ["250-ETRN", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.app.rcpt_refusal(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        queued = []
        for domain, rcpts in group_by_domain(envelope.rcpt_tos).items():
            content = received_header(self.host, session, rcpts) + envelope.original_content
            meta = self.app.queue.add(self.host, envelope.mail_from, rcpts, domain, content)
            queued.append(meta["id"])
            log.info("%s queued %s for %s (%d bytes)", self.host, meta["id"], domain, meta["size"])
        self.app.delivery.wake()
        return f"250 2.0.0 Ok: queued as {' '.join(queued)}"

    async def handle_exception(self, error: Exception) -> str:
        # One line instead of aiosmtpd's traceback (a client rejecting our
        # certificate during STARTTLS is a normal event for a public relay).
        cause = error.__cause__ or error
        log.warning("%s: SMTP session ended by %s: %s", self.host, type(cause).__name__, cause)
        return "421 4.3.0 Error: session aborted"

    def etrn(self, node: str) -> str:
        if self.app.store.domain(node) is None:
            return f"459 4.7.1 <{node}>: node not allowed"
        self.app.flush(node.lower())
        return f"250 2.0.0 Queuing for node {node} started"


def group_by_domain(rcpts: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rcpt in rcpts:
        groups.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
    return groups


def received_header(host: str, session, rcpts: list[str]) -> bytes:
    """The trace header a real relay prepends on acceptance (Postfix's layout)."""
    peer_ip = session.peer[0] if session.peer else "unknown"
    helo = session.host_name or "unknown"
    protocol = "ESMTP" if session.extended_smtp else "SMTP"
    tls = ""
    if session.ssl:
        ssl_object = session.ssl.get("ssl_object")
        cipher = session.ssl.get("cipher") or ("unknown", "", 0)
        version = ssl_object.version() if ssl_object else cipher[1]
        tls = f"\r\n\t(using {version} with cipher {cipher[0]} ({cipher[2]}/{cipher[2]} bits))"
        protocol += "S"
    queue_id = secrets.token_hex(5).upper()
    recipient = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
    header = (
        f"Received: from {helo} (unknown [{peer_ip}]){tls}\r\n"
        f"\tby {host} (Roller Network relay, backupmx sandbox) with {protocol} id {queue_id}"
        f"{recipient}; {formatdate(localtime=False)}\r\n"
    )
    return header.encode("utf-8", "replace")


# ---------------------------------------------------------------------------
# Delivery: PROXY v2 + SMTP to the mail host, on a sliding retry schedule
# ---------------------------------------------------------------------------



class ProxySMTP(smtplib.SMTP):
    """An SMTP client whose connection opens with a PROXY v2 header, as HAProxy's would.

    ``connect`` then reads the 220 greeting before anything else is sent, so the
    client never talks before the server (postscreen's pregreet test).
    """

    def __init__(self, claimed_source: str, local_hostname: str, timeout: float):
        self.claimed_source = claimed_source
        super().__init__(local_hostname=local_hostname, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        # connect() does not record the host as SMTP(host) does; starttls() needs it.
        self._host = host
        sock = socket.create_connection((host, port), timeout)
        try:
            dst_ip, dst_port = sock.getpeername()[:2]
            sock.sendall(proxy_v2_header(self.claimed_source, random.randint(32768, 60999), dst_ip, dst_port))
        except OSError:
            sock.close()
            raise
        return sock


class Deferred(Exception):
    """The whole attempt failed temporarily (4xx greeting, HELO or MAIL FROM)."""


class Bounced(Exception):
    """The whole attempt failed permanently (5xx greeting, HELO or MAIL FROM)."""


def _failure(code: int, text: str) -> Exception:
    return Deferred(text) if code < 500 else Bounced(text)


def _said(host: str, code: int, message: bytes | str, command: str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"host {host}[{host}] said: {code} {' '.join(text.split())} (in reply to {command} command)"


def smtp_transaction(client: ProxySMTP, host: str, port: int, meta: dict, content: bytes) -> dict[str, tuple]:
    """One delivery attempt; per recipient ("delivered"|"deferred"|"bounced", reply text).

    Raises ``Deferred``/``Bounced`` (or OSError/SMTPException) when no recipient got
    as far as a reply of its own.
    """
    code, message = client.connect(host, port)
    if code != 220:
        raise _failure(code, _said(host, code, message, "initial greeting"))
    code, message = client.ehlo()
    if not 200 <= code < 300:
        code, message = client.helo()
        if code != 250:
            raise _failure(code, _said(host, code, message, "HELO"))
    if client.has_extn("starttls"):
        # Opportunistic TLS, unauthenticated, as MTAs do between MXes.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()
    options = ["BODY=8BITMIME"] if client.has_extn("8bitmime") and any(b > 127 for b in content) else []
    code, message = client.mail(meta["from"], options)
    if code != 250:
        raise _failure(code, _said(host, code, message, "MAIL FROM"))
    results: dict[str, tuple] = {}
    accepted = []
    for rcpt in meta["to"]:
        code, message = client.rcpt(rcpt)
        if code in (250, 251):
            accepted.append(rcpt)
        else:
            results[rcpt] = ("deferred" if code < 500 else "bounced", _said(host, code, message, "RCPT TO"))
    if not accepted:
        client.rset()
        return results
    try:
        code, message = client.data(content)
        command = "end of DATA"
    except smtplib.SMTPDataError as error:
        code, message, command = error.smtp_code, error.smtp_error, "DATA"
    if code == 250:
        outcome = ("delivered", _said(host, code, message, command))
    else:
        outcome = ("deferred" if code < 500 else "bounced", _said(host, code, message, command))
    results.update({rcpt: outcome for rcpt in accepted})
    return results


class Delivery(threading.Thread):
    """Retries every due message to the mail host's PROXY-v2 listener."""

    POLL_SECONDS = 0.25

    def __init__(self, app: "Rollernet", mailhost: dict, timeout: float):
        super().__init__(name="delivery", daemon=True)
        self.app = app
        self.mailhost = mailhost
        self.timeout = timeout
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.rounds = 0  # delivery rounds done (GET /_sandbox/delivery): a test waits for rounds, not for time

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.POLL_SECONDS)
            self._wake.clear()
            try:
                self.deliver_due()
            except Exception:  # keep the relay alive; the next round retries
                log.exception("delivery round failed")
            self.rounds += 1

    def deliver_due(self) -> None:
        if not self.app.settings.get("deliver"):
            return
        now = time.time()
        for meta in self.app.queue.messages():
            if self._stopping.is_set():
                return
            if meta["next_attempt"] > now or self.app.is_held(meta["domain"]):
                continue
            self.attempt(meta)

    def attempt(self, meta: dict) -> None:
        queue = self.app.queue
        content = queue.content(meta["id"])
        if content is None:
            return  # removed (reset) since it was listed
        if time.time() - meta["queued_at"] > self.app.settings.get("max_queue_age"):
            self._finish(meta, {rcpt: ("bounced", f"message expired in queue; last error: {meta['last_error']}")
                                for rcpt in meta["to"]})
            return
        host, port = self.target()
        source = self.app.settings.get("source_override") or self.app.relay_source(meta["relay"])
        client = ProxySMTP(source, local_hostname=meta["relay"], timeout=self.timeout)
        try:
            results = smtp_transaction(client, host, port, meta, content)
        except Bounced as bounce:
            results = {rcpt: ("bounced", str(bounce)) for rcpt in meta["to"]}
        except Deferred as deferred:
            results = {rcpt: ("deferred", str(deferred)) for rcpt in meta["to"]}
        except (OSError, smtplib.SMTPException) as error:
            reason = f"connect to {host}[{host}]:{port}: {describe(error)}"
            results = {rcpt: ("deferred", reason) for rcpt in meta["to"]}
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()
        self._finish(meta, results)

    def target(self) -> tuple[str, int]:
        override = self.app.settings.get("deliver_to")
        if override:
            host, _, port = override.rpartition(":")
            return host, int(port)
        return self.mailhost["host"], self.mailhost["port"]

    def _finish(self, meta: dict, results: dict[str, tuple]) -> None:
        queue = self.app.queue
        # Under the queue's lock, so a reset during the attempt wins: the message
        # it cleared leaves no delivered/bounced record behind.
        with queue.lock:
            if not queue.contains(meta["id"]):
                return
            attempts = meta["attempts"] + 1
            by_outcome: dict[str, list[str]] = {}
            for rcpt, (outcome, _) in results.items():
                by_outcome.setdefault(outcome, []).append(rcpt)
            for outcome in ("delivered", "bounced"):
                if by_outcome.get(outcome):
                    self._record(outcome, meta, by_outcome[outcome], attempts, results)
            deferred = by_outcome.get("deferred", [])
            if deferred:
                self._defer(meta, deferred, attempts, results[deferred[0]][1])
            else:
                queue.remove(meta["id"])

    def _record(self, outcome: str, meta: dict, rcpts: list[str], attempts: int, results: dict) -> None:
        self.app.queue.record(outcome, {
            "id": meta["id"], "relay": meta["relay"], "domain": meta["domain"], "from": meta["from"],
            "to": rcpts, "attempts": attempts, "queued_at": iso(meta["queued_at"]), "at": iso(time.time()),
            "reply": results[rcpts[0]][1],
        })
        log.info("%s %s to %d recipient(s) after %d attempt(s)", meta["id"], outcome, len(rcpts), attempts)

    def _defer(self, meta: dict, rcpts: list[str], attempts: int, error: str) -> None:
        """Keep the recipients not yet done; next try per the sliding schedule."""
        schedule = self.app.settings.get("retry_schedule")
        delay = float(schedule[min(attempts - 1, len(schedule) - 1)])
        now = time.time()
        log.info("%s deferred (attempt %d, retry in %.0fs): %s", meta["id"], attempts, delay, error)
        self.app.queue.update(meta["id"], {"to": rcpts, "attempts": attempts, "last_attempt": now,
                                           "next_attempt": now + delay, "last_error": error})


def describe(error: Exception) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "Connection timed out"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return f"lost connection ({error})"
    return f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------------------
# The whole fake
# ---------------------------------------------------------------------------


class Rollernet:
    def __init__(self, config: dict):
        data_dir = Path(config["data_dir"])
        queue_dir = data_dir / "queue"
        queue_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.relays = config["relays"]
        self.store = Store(data_dir / "state.json", config["seed"])
        self.queue = MailQueue(queue_dir, data_dir / "delivered.jsonl", data_dir / "bounced.jsonl")
        self.settings = RelaySettings(config["delivery"])
        self.faults = Faults()
        self.requests = RequestLog()
        self.api = AccApi(self, config["acc"]["user"], config["acc"]["keys"])
        self.delivery = Delivery(self, config["mailhost"], float(config["delivery"]["timeout"]))
        self.controllers: list[Controller] = []
        self.http: ThreadingHTTPServer | None = None

    # -- questions the parts ask ----------------------------------------------

    def relay_source(self, relay_host: str) -> str:
        return next(relay["source"] for relay in self.relays if relay["host"] == relay_host)

    def is_held(self, domain: str) -> bool:
        record = self.store.domain(domain)
        return bool(record and record["hold"])

    def rcpt_refusal(self, address: str) -> str | None:
        """The SMTP refusal for this recipient, or None to accept it."""
        override = self.settings.get("rcpt_reply")
        if override:
            return override
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return f"501 5.1.3 <{address}>: Bad recipient address syntax"
        record = self.store.domain(domain)
        if record is None or not record["enabled"] or record["mode"] not in RELAYED_MODES:
            return f"554 5.7.1 <{address}>: Relay access denied"
        if record["user_table_default"] == "allow_any":
            return None
        known = {user.lower() for user in record.get("users", [])} | set(PROTECTED_USERS)
        if local.lower() in known:
            return None
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in relay recipient table"

    def queue_listing(self, domain: str | None) -> list[dict]:
        return [queue_view(meta, self.is_held(meta["domain"])) for meta in self.queue.messages(domain)]

    def queue_report(self) -> dict:
        # One snapshot, under the queue's lock: a message that finishes meanwhile is either still
        # queued or already delivered/bounced, never both (nor neither).
        with self.queue.lock:
            return {
                "queued": self.queue_listing(None),
                "delivered": self.queue.history("delivered"),
                "bounced": self.queue.history("bounced"),
            }

    # -- changes ----------------------------------------------------------------

    def flush(self, domain: str | None) -> int:
        count = self.queue.make_due(domain)
        self.delivery.wake()
        return count

    def release(self, domain: str) -> None:
        """Hold lifted: everything held is due now."""
        self.flush(domain)

    def reset(self) -> dict:
        self.store.reset()
        self.faults.clear()
        self.settings.reset()
        self.queue.clear()
        self.requests.clear()
        return {"status": "reset"}

    def set_state(self, request: dict) -> dict:
        request = dict(request)
        allowed = {"domain", "mode", "enabled", "user_table_default", "hold", "users", "remove", "relay_cidrs"}
        unknown = set(request) - allowed
        if unknown:
            raise ValueError(f"unknown state field(s): {', '.join(sorted(unknown))}")
        if "relay_cidrs" in request:
            cidrs = request.pop("relay_cidrs")
            for cidr in cidrs:
                ipaddress.ip_network(cidr, strict=False)
            self.store.set_relay_cidrs(cidrs)
        domain = str(request.pop("domain", self.config["default_domain"])).lower()
        if request.pop("remove", False):
            self.store.remove_domain(domain)
        elif request:
            check_domain_fields(request)
            was_held = self.is_held(domain)
            record = self.store.update_domain(domain, request, create=True)
            if was_held and not record["hold"]:
                self.release(domain)
        return self.store.snapshot()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        for relay in self.relays:
            self.controllers.append(self._start_relay(relay))
        handler = type("BoundHttpHandler", (HttpHandler,), {"app": self})
        self.http = ThreadingHTTPServer((self.config["acc"]["host"], self.config["acc"]["port"]), handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="acc-http", daemon=True).start()
        self.delivery.start()

    def _start_relay(self, relay: dict) -> Controller:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(relay["cert"], relay["key"])
        controller = RelayController(
            RelayHandler(self, relay["host"]),
            hostname=relay["listen"],
            port=relay["port"],
            server_hostname=relay["host"],
            ident="Roller Network ESMTP (backupmx sandbox)",
            tls_context=context,
            require_starttls=False,  # sending MTAs may not do TLS; Roller Network accepts them
        )
        controller.start()
        log.info("relay %s listening on %s:%d", relay["host"], relay["listen"], relay["port"])
        return controller

    def stop(self) -> None:
        self.delivery.stop()
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        for controller in self.controllers:
            controller.stop()
        # An attempt cut short is simply not counted; the metadata is written atomically.
        self.delivery.join(timeout=2)


def check_domain_fields(fields: dict) -> None:
    if "mode" in fields and fields["mode"] not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if "user_table_default" in fields and fields["user_table_default"] not in USER_TABLE_DEFAULTS:
        raise ValueError(f"user_table_default must be one of {', '.join(USER_TABLE_DEFAULTS)}")
    for flag in ("enabled", "hold"):
        if flag in fields and not isinstance(fields[flag], bool):
            raise ValueError(f"{flag} must be true or false")
    if "users" in fields and not all(isinstance(user, str) for user in fields["users"]):
        raise ValueError("users must be a list of local parts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The sandbox's fake Roller Network (ACC API + SMTP relays).")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    app = Rollernet(json.loads(args.config.read_text()))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    app.start()
    log.info("ACC API on http://%s:%d%s", app.config["acc"]["host"], app.config["acc"]["port"], API_PATH)
    while not stopping.wait(1.0):
        pass
    app.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
