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
import hashlib
import json
import signal
import sys
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from backupmx_sandbox.cf_api import Api, Response
from backupmx_sandbox.cf_faults import WRITE_METHODS, Faults, RequestLog, Throttle
from backupmx_sandbox.cf_records import HOSTNAME_PATTERN, ApiError, envelope, rate_limited
from backupmx_sandbox.cf_store import Store, Zone
from backupmx_sandbox.zonedns import ZoneResolver, start_servers

API_PREFIX = "/client/v4"
ADMIN_PREFIX = "/_sandbox"


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
