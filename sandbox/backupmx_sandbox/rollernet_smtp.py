"""The fake Roller Network's relays, receiving side: which mail each accepts, queued with its trace header.

Part of the fake Roller Network (``fake_rollernet.py``).
"""

from __future__ import annotations

import logging
import secrets
from email.utils import formatdate
from typing import TYPE_CHECKING

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, syntax

if TYPE_CHECKING:  # the world that holds these parts; imported for its type only
    from backupmx_sandbox.fake_rollernet import Rollernet

log = logging.getLogger("rollernet")


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
            content = received_header(self.host, session, rcpts, self.app.settings.get("client_address")) \
                + envelope.original_content
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


def received_header(host: str, session, rcpts: list[str], client_address: str | None = None) -> bytes:
    """The trace header a real relay prepends on acceptance (Postfix's layout); ``client_address``:
    the address to record for the client instead of the one it connected from."""
    peer_ip = client_address or (session.peer[0] if session.peer else "unknown")
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
