"""The failover drill's messages: which it sends, how large the large one may be, what each
must show in the mailbox, and its report row.

Besides the plain probes (``backupmx.lifecycle.probes``) the drill sends through the backup:

- a **large** message (over 10 MB by default): the relays and the primary must take it.
  Its size is the wanted one, or the largest that fits under the primary's
  ``message_size_limit`` and the relay's announced ``SIZE`` (never one the primary
  would refuse: a refusal there is a bounce by the relay);
- a **spam** message whose content alone scores over docker-mailserver's reject
  threshold (11) for a direct client: relayed, it must arrive tagged, never rejected
  (a reject makes the relay bounce it).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate

import dkim

from backupmx.lifecycle.probes import Probe, verdicts
from backupmx.mailhost.maildir import Delivered

LARGE_BYTES = 12_000_000  # over 10 MB and over Postfix's default message_size_limit (10240000)
# Room for what the relay and the primary add on the way (trace, scan and delivery
# headers) and for the envelope, which Postfix counts in message_size_limit.
HEADROOM = 64 * 1024
DMS_REJECT_SCORE = 11.0  # docker-mailserver's actions.conf: reject = 11
SPAM_HEADERS = ("X-Spam", "X-Spam-Flag", "X-Spam-Status")  # rspamd milter's spam header, and SpamAssassin's
SCORE = re.compile(r"\[\s*(-?[0-9.]+)\s*/\s*(-?[0-9.]+)\s*\]")

# Content only (no sender reputation, no network lookups): rspamd 3.4 scores it about
# 13 (LEAKED_PASSWORD_SCAM 7, SUBJ_ALL_CAPS 2.6, PHISHING 2, HTTP_TO_IP 1,
# HTTP_TO_HTTPS 0.5, MIME_HTML_ONLY 0.2). Not GTUBE: rspamd answers the GTUBE
# pattern with a reject before any rule or setting is looked up.
SPAM_HTML = """<html><body>
<p>This is the backupmx failover drill's spam test message {run_id}; it was sent through the
backup MX on purpose and is safe to delete.</p>
<p>Dear customer, your account is suspended. Verify your password now:</p>
<a href="http://203.0.113.99/bank/login.php">https://www.example.com/signin</a>
<p>I know your password. I recorded you. Pay 1000 USD in bitcoin to 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2
within 48 hours or I send the video to all your contacts.</p>
</body></html>
"""


@dataclass(frozen=True)
class SizeDecision:
    size: int  # bytes to send
    wanted: int
    note: str  # empty when the wanted size fits


def large_size(wanted: int, primary_limit: int, relay: str = "", relay_size: int | None = None) -> SizeDecision:
    """The large message's size: ``wanted``, or the largest that fits both limits (0: no limit).

    ``relay_size`` is the SIZE the backup announced in its EHLO (None: not announced).
    """
    size, limits = wanted, []
    for name, limit in ((f"the primary's message_size_limit {primary_limit}", primary_limit),
                        (f"{relay}'s SIZE {relay_size}", relay_size)):
        if limit and limit - HEADROOM < size:
            size = max(limit - HEADROOM, 0)
            limits.append(name)
    if not limits:
        return SizeDecision(size, wanted, "")
    return SizeDecision(size, wanted, f"{wanted} bytes wanted, over {' and '.join(limits)}: the largest that "
                                      f"fits is {size} bytes")


def kinds(probes: int, large_bytes: int, spam: bool) -> list[str]:
    """The messages of one drill, in sending order."""
    return ["probe"] * probes + (["large"] if large_bytes else []) + (["spam"] if spam else [])


def title(probe: Probe) -> str:
    if probe.kind == "probe":
        return f"probe {probe.index} via {probe.relay}"
    return f"{probe.kind} message via {probe.relay}"


def build_message(probe: Probe, recipient: str, sender_domain: str, selector: str, key: bytes, run_id: str,
                  size: int = 0) -> bytes:
    """The large or spam message, DKIM-signed like the probes; ``size``: the large one's bytes on the wire."""
    if probe.kind == "spam":
        subject = f"BACKUPMX FAILOVER DRILL {run_id.upper()} SPAM TEST: ACCOUNT SUSPENDED VERIFY NOW"
        content_type, body = "text/html; charset=utf-8", SPAM_HTML.format(run_id=run_id).replace("\n", "\r\n")
    else:
        subject = f"backupmx failover drill {run_id} large message"
        content_type, body = "text/plain; charset=us-ascii", ""
    headers = [
        f"From: Failover drill <{probe.sender}>",
        f"To: <{recipient}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: {probe.message_id}",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
    ]
    head = ("\r\n".join(headers) + "\r\n\r\n").encode()
    text = body.encode()
    if probe.kind == "large":
        intro = (f"The large message of the backupmx failover drill {run_id}, sent to {probe.relay} while the "
                 f"primary was down. Safe to delete.\r\n").encode()
        text = intro + _filler(size - len(head) - len(intro) - _SIGNATURE_BYTES)
    signature = dkim.sign(head + text, selector.encode(), sender_domain.encode(), key,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + head + text


# A DKIM-Signature header of rsa-sha256 over five headers with a 2048-bit key: about
# 560 bytes; the large message's filler leaves this much for it.
_SIGNATURE_BYTES = 600


def _filler(size: int) -> bytes:
    """``size`` bytes (or a little less) of base64-looking lines, 76 characters and CRLF each."""
    line = base64.b64encode(bytes(range(64)))[:76] + b"\r\n"
    count = max(size, 0) // len(line)
    return line * count


def judge(probe: Probe, copies: Sequence[Delivered], relay_cidrs: Sequence[str]) -> None:
    """Fill ``probe.verdicts``/``problems`` from the delivered copies (step 7)."""
    probe.copies = len(copies)
    if not copies:
        probe.problems.append(f"not delivered (last relay error: {probe.last_error})")
        return
    if len(copies) > 1:
        probe.problems.append(f"delivered {len(copies)} times")
    message = copies[0].message
    shown, problems = verdicts(message, relay_cidrs)
    if probe.kind == "large":
        if copies[0].size < (probe.size or 0) - probe.lines:
            problems.append(f"{copies[0].size} bytes in the mailbox, {probe.size} sent: truncated")
        shown.insert(0, f"{probe.size} bytes sent, {copies[0].size} in the mailbox (LF line ends)")
    if probe.kind == "spam":
        shown.insert(0, spam_verdict(message))
    probe.verdicts = shown
    probe.problems.extend(problems)


def spam_verdict(message) -> str:
    """Tagged or not (the spam header rspamd's milter adds for "add header"), and the score."""
    spamd = " ".join(str(v) for v in (message.get_all("X-Spamd-Result") or []))
    found = SCORE.search(spamd)
    score = f"score {found.group(1)} / {found.group(2)}" if found else "no score"
    tags = [f"{name}: {message[name]}" for name in SPAM_HEADERS
            if str(message.get(name, "")).strip().lower().startswith("yes")]
    if tags:
        return f"tagged ({tags[0]}), {score}, not rejected"
    return f"NOT tagged (no {'/'.join(SPAM_HEADERS)}: yes), {score}"


def is_tagged(probe: Probe) -> bool:
    return any(v.startswith("tagged") for v in probe.verdicts)
