"""The fake Roller Network's relays, sending side: PROXY v2 + SMTP to the mail host on a sliding retry schedule.

Part of the fake Roller Network (``fake_rollernet.py``).
"""

from __future__ import annotations

import logging
import random
import smtplib
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING

from backupmx_sandbox.rollernet_state import iso
from backupmx_sandbox.smtp_client import proxy_v2_header

if TYPE_CHECKING:  # the world that holds these parts; imported for its type only
    from backupmx_sandbox.fake_rollernet import Rollernet

log = logging.getLogger("rollernet")


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
