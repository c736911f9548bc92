"""Test messages through the backup path, shared by the failover drill and the canary: built
(DKIM-signed when a key is given, uniquely tagged) and, once read back from the Maildir
(``backupmx.mailhost.maildir``), judged (which rspamd symbols, which relay address in the
Received header).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate

from dkim import sign as dkim_sign

from backupmx.mailhost.model import EXEMPT, EXTERNAL_RELAY, RSPAMD_RELAY_SYMBOL

# --- probes -------------------------------------------------------------------


@dataclass
class Probe:
    index: int
    relay: str
    sender: str  # unique envelope sender: how the provider's queue listing names it
    message_id: str
    kind: str = "probe"  # or "large", "spam" (backupmx.lifecycle.drill.messages)
    size: int | None = None  # bytes sent
    lines: int = 0  # CRLF line ends sent (a Maildir stores LF: that much smaller)
    size_note: str = ""  # why it is smaller than wanted (a limit on the way)
    sent_at: float | None = None
    send_error: str | None = None
    queued_at: str | None = None  # as the provider reports it
    seen_queued: float | None = None
    attempts_at_up: int = 0
    last_error: str | None = None
    retried_after_up: str | None = None  # a deferral seen after the primary was back
    left_queue: float | None = None
    delivered_at: float | None = None
    delivered_wall: float | None = None  # the same moment, as wall-clock time for the report
    copies: int = 0
    verdicts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # delivered, but not as judged: said, never failed


def build_probe(probe: Probe, recipient: str, sender_domain: str, selector: str, key: bytes, run_id: str) -> bytes:
    """An RFC 5322 message from ``sender_domain``, DKIM-signed with its key (dkimpy)."""
    body = (f"Probe {probe.index} of the backupmx failover drill {run_id}, sent to {probe.relay} while the "
            f"primary was down. Safe to delete.\r\n")
    return compose_message(f"Failover drill <{probe.sender}>", recipient, probe.message_id,
                           f"backupmx failover drill {run_id} probe {probe.index}", body,
                           dkim=(selector, sender_domain, key))


def compose_message(author: str, recipient: str, message_id: str, subject: str, body: str,
                    extra_headers: Sequence[str] = (),
                    dkim: tuple[str, str, bytes] | None = None) -> bytes:
    """An RFC 5322 message (CRLF), DKIM-signed when ``dkim`` = (selector, domain, private key) is given."""
    headers = [
        f"From: {author}",
        f"To: <{recipient}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: {message_id}",
        *extra_headers,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    message = ("\r\n".join(headers) + "\r\n\r\n" + body).encode()
    if dkim is None:
        return message
    selector, domain, key = dkim
    signature = dkim_sign(message, selector.encode(), domain.encode(), key,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + message


SYMBOL = re.compile(r"([A-Z0-9_]+)\(")
RECEIVED_IP = re.compile(r"\[([0-9a-fA-F.:]+)\]")
# A Received header of the last, local hop into the mailbox (LMTP or local delivery).
DELIVERY_HOP = re.compile(r"\bwith\s+(?:LMTPS?A?|local)\b", re.IGNORECASE)
# Postfix's own Received header: "... by mail.example.org (Postfix) with ESMTPS id 4ABC123 for <...>".
QUEUE_ID = re.compile(r"\bwith\s+\S+\s+id\s+([0-9A-Za-z]+)\b")
NOT_SCANNED = "no X-Spamd-Result header (was it scanned by rspamd?)"


def verdicts(message, relay_cidrs: Sequence[str], dkim_signed: bool = True,
             scoring: str = EXEMPT) -> tuple[list[str], list[str]]:
    """(what the delivered headers show, the problems among them).

    ``scoring`` is the mail host's ``relay_scoring``: ``exempt`` forbids any SPF/DMARC
    symbol; ``external_relay`` requires the original sender scored (our rule's symbol
    and an SPF verdict). DKIM must verify when the message was signed.
    """
    spamd = " ".join(str(v) for v in (message.get_all("X-Spamd-Result") or []))
    if spamd:
        shown, problems = _judge_symbols(set(SYMBOL.findall(spamd)), scoring, dkim_signed)
    else:
        # Unscanned: no symbol is there to judge, so SPF/DMARC and DKIM say nothing.
        shown, problems = [], [NOT_SCANNED]
    seen = client_address(message)
    networks = [ipaddress.ip_network(c, strict=False) for c in relay_cidrs]
    if seen is None:
        problems.append("the mail host's Received header names no client address")
    elif not any(_ip(seen) in net for net in networks if _ip(seen).version == net.version):
        problems.append(f"postscreen saw {seen}, outside the relay CIDRs (not whitelisted: SPF/postscreen "
                        f"apply)")
    else:
        shown.append(f"via {seen} (whitelisted)")
    return shown, problems


def _judge_symbols(symbols: set[str], scoring: str, dkim_signed: bool) -> tuple[list[str], list[str]]:
    shown, problems = [], []
    penalties = sorted(s for s in symbols if s.startswith(("R_SPF_", "DMARC_")))
    if scoring == EXTERNAL_RELAY:
        spf = sorted(s for s in penalties if s.startswith("R_SPF_"))
        if RSPAMD_RELAY_SYMBOL not in symbols or not spf:
            problems.append(f"external_relay did not score the original sender: {RSPAMD_RELAY_SYMBOL} "
                            f"{'present' if RSPAMD_RELAY_SYMBOL in symbols else 'missing'}, SPF "
                            f"{', '.join(spf) or 'not scored'}")
        else:
            shown.append(f"original sender scored ({RSPAMD_RELAY_SYMBOL}, {', '.join(spf)})")
    elif penalties:
        problems.append(f"SPF/DMARC penalty: {', '.join(penalties)} (relay_scoring exempt forbids any)")
    else:
        shown.append("no SPF/DMARC symbol")
    if "R_DKIM_ALLOW" in symbols:
        shown.append("DKIM R_DKIM_ALLOW")
    elif dkim_signed:
        dkim = sorted(s for s in symbols if "DKIM" in s) or ["no DKIM symbol"]
        problems.append(f"DKIM does not verify: {', '.join(dkim)}")
    return shown, problems


def mailhost_hop(message) -> str:
    """The mail host's own SMTP Received header: it names the client address postscreen and
    rspamd saw (the one the relay announced in its PROXY header) and Postfix's queue id."""
    # Hops that only hand the message to the mailbox come first and name no client
    # (docker-mailserver's Dovecot LMTP: "from mail.example.org by mail.example.org with LMTP").
    received = [str(header) for header in message.get_all("Received") or []]
    return next((header for header in received if not DELIVERY_HOP.search(header)), "")


def client_address(message) -> str | None:
    return next((a for a in RECEIVED_IP.findall(mailhost_hop(message)) if _ip(a) is not None), None)


def queue_id(message) -> str | None:
    """The queue id the mail host's Postfix gave the message (its log names it so)."""
    found = QUEUE_ID.search(mailhost_hop(message))
    return found.group(1) if found else None


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


