"""The fake Roller Network over HTTP: the ACC API at ``/api/api.php`` and the test-only ``/_sandbox/`` admin endpoints.

Part of the fake Roller Network (``fake_rollernet.py``).
"""

from __future__ import annotations

import json
import logging
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from backupmx_sandbox.rollernet_state import AccError, iso

if TYPE_CHECKING:  # the world that holds these parts; imported for its type only
    from backupmx_sandbox.fake_rollernet import Rollernet

log = logging.getLogger("rollernet")

API_PATH = "/api/api.php"
ADMIN_PREFIX = "/_sandbox/"


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
