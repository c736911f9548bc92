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

By job: ``rollernet_state`` (domains, relay CIDRs), ``rollernet_queue`` (the relays'
queue and their delivered/bounced logs), ``rollernet_knobs`` (relay switches, faults,
request log), ``rollernet_api`` (the ACC actions), ``rollernet_http`` (the API and admin
endpoints over HTTP), ``rollernet_smtp`` (the relays' receiving side),
``rollernet_delivery`` (their sending side); this module ties them into one process.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller

from backupmx_sandbox.rollernet_api import AccApi
from backupmx_sandbox.rollernet_delivery import Delivery
from backupmx_sandbox.rollernet_http import API_PATH, HttpHandler
from backupmx_sandbox.rollernet_knobs import Faults, RelaySettings, RequestLog
from backupmx_sandbox.rollernet_queue import MailQueue, queue_view
from backupmx_sandbox.rollernet_smtp import RelayController, RelayHandler
from backupmx_sandbox.rollernet_state import (
    PROTECTED_USERS,
    RELAYED_MODES,
    Store,
    check_domain_fields,
)

log = logging.getLogger("rollernet")


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

    def bounce_listing(self, domain: str) -> list[dict]:
        """What the relays bounced for ``domain`` (kept until a reset), oldest first."""
        fields = ("id", "from", "to", "relay", "queued_at", "at", "attempts", "reply")
        return [{name: entry.get(name) for name in fields} for entry in self.queue.history("bounced")
                if entry.get("domain") == domain]

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
