"""The canary's pure part: one record per message, when to stop waiting, and which hop failed.

A canary is handed to one backup MX host; then the run watches the provider's queue
and the mailbox. What it saw decides the row:

| what was seen | hop |
|---|---|
| the backup host refused it (or could not be reached) | refused by the relay |
| in the relay's queue, held (Accept-and-Hold) or deferred by the primary | stuck in the relay's queue (not lost) |
| the relay's last error is a 5xx from the primary, or its bounce listing has it with the primary's 5xx | refused by the primary |
| gone from the queue, never in the mailbox (and no bounce listed) | lost between the relay and the mailbox |
| in the mailbox, but not as relayed mail must arrive | delivered, but judged wrongly |
| in the mailbox, clean | pass |
| the mailbox could not be read | not verified |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from backupmx.core.report import FAIL, PASS
from backupmx.lifecycle.probes import verdicts
from backupmx.mailhost.maildir import Delivered
from backupmx.providers.base import BouncedMessage

# (slug for the metric's ``hop`` label, what the row says)
NOT_SENT = ("not_sent", "not sent")
# SendOutcome.stage of a canary the provider's budget kept from being sent (docs/budget.md).
BUDGET = "budget"
REFUSED_BY_RELAY = ("refused_by_relay", "refused by the relay")
STUCK = ("stuck_in_relay_queue", "stuck in the relay's queue")
REFUSED_BY_PRIMARY = ("refused_by_primary", "refused by the primary")
LOST = ("lost_between", "lost between the relay and the mailbox")
JUDGED = ("delivered_with_problems", "delivered, but")
UNREAD = ("mailbox_unreadable", "the mailbox could not be read")
MESSAGE_ID_PREFIX = "<backupmx-canary."
MARKER_HEADER = "X-BackupMX-Canary"
_PERMANENT = re.compile(r"\b5\d\d\b")
# A relay's record of the remote server's permanent refusal (Postfix's and the fake's wording).
_PRIMARY_SAID = re.compile(r"\bsaid: 5\d\d\b")


@dataclass
class SendOutcome:
    ok: bool
    reply: str  # the last SMTP reply, or why nothing was sent
    stage: str | None = None  # the command refused ("RCPT TO", "DATA", "connect" ...) when not ok
    code: int | None = None
    at: float | None = None  # the send host's wall clock at the relay's 250 to DATA


@dataclass
class Canary:
    """One uniquely tagged message through one backup MX host, and what the run saw of it."""

    domain: str
    relay: str  # the backup MX host it is handed to
    endpoint: str  # where it was handed ("host:port")
    sender: str  # unique envelope sender: how the queue listing names it
    recipient: str
    message_id: str
    signed: bool
    handed_off: float | None = None  # run clock, at the relay's 250 to DATA
    send: SendOutcome | None = None
    seen_queued: float | None = None
    held: bool = False
    last_error: str | None = None
    deferred_seen: float | None = None  # first time the queue showed a failed attempt
    left_queue: float | None = None  # first poll that did not list it after it was listed
    delivered_at: float | None = None  # run clock, at the poll that found it
    delivered_wall: float | None = None  # the mail host's clock, from the Maildir file name
    copies: list[Delivered] = field(default_factory=list)
    queue_error: str | None = None  # the queue could not be read
    bounce: BouncedMessage | None = None  # its entry in the provider's bounce listing
    bounce_error: str | None = None  # the bounce listing could not be read

    @property
    def key(self) -> tuple[str, str]:
        return self.domain, self.relay

    @property
    def seconds(self) -> float | None:
        """Hand-off to delivery: from the two hosts' clocks when both are known (the mail host sends
        by default: one clock), else from the run's clock (rounded up to a poll)."""
        at = self.send.at if self.send else None
        if at is not None and self.delivered_wall is not None and 0 <= self.delivered_wall - at < 86400:
            return self.delivered_wall - at
        if self.delivered_at is None or self.handed_off is None:
            return None
        return self.delivered_at - self.handed_off


# Maildir file names start with the delivery time: Postfix local(8) "SECONDS.V<dev>I<inode>M<usec>.host",
# Dovecot "SECONDS.M<usec>P<pid>.host".
_MAILDIR_NAME = re.compile(r"^(\d{9,})\.(?:[^.]*?M(\d{1,6})(?![0-9]))?")


def maildir_time(path: str | None) -> float | None:
    """The delivery time a Maildir file's name records (None if it records none)."""
    match = _MAILDIR_NAME.match((path or "").rsplit("/", 1)[-1])
    if not match:
        return None
    return int(match.group(1)) + (int(match.group(2)) / 1e6 if match.group(2) else 0.0)


def observe_queue(canary: Canary, listed, now: float) -> None:
    """Update ``canary`` from its entry in the provider's queue listing (``QueuedMessage`` or None)."""
    if listed is None:
        if canary.seen_queued is not None and canary.left_queue is None:
            canary.left_queue = now
        return
    canary.seen_queued = canary.seen_queued or now
    canary.left_queue = None
    canary.held = bool(listed.held)
    if listed.last_error:
        canary.last_error = listed.last_error
        canary.deferred_seen = canary.deferred_seen or now


def settled(canary: Canary, now: float, settle_seconds: float, grace_seconds: float) -> bool:
    """Nothing more to wait for: delivered, refused, held, deferred for ``settle_seconds``, or gone
    from the queue ``grace_seconds`` ago without reaching the mailbox."""
    if canary.copies or (canary.send is not None and not canary.send.ok):
        return True
    if canary.held or canary.bounce is not None:
        return True
    if canary.deferred_seen is not None and now - canary.deferred_seen >= settle_seconds:
        return True
    return canary.left_queue is not None and now - canary.left_queue >= grace_seconds


@dataclass(frozen=True)
class Verdict:
    status: str  # PASS or FAIL
    hop: tuple[str, str] | None  # the failing hop, None on PASS
    text: str  # the row's evidence
    next_step: str | None = None


def judge(canary: Canary, relay_cidrs: Sequence[str], scoring: str, waited: float,
          mailbox_error: str | None = None) -> Verdict:
    """The row of one canary, once the run stopped waiting for it."""
    send = canary.send
    if send is None:
        return Verdict(FAIL, NOT_SENT, "not sent (an earlier step failed)")
    if not send.ok:
        if send.stage == BUDGET:
            return Verdict(FAIL, NOT_SENT, f"not sent: {send.reply}", "wait until it frees up (docs/budget.md)")
        if send.stage in (None, "send host"):
            return Verdict(FAIL, NOT_SENT, f"not sent: {send.reply}",
                           "check the host the canary is sent from (canary.send_from)")
        if send.stage == "connect" and send.code is None:
            return Verdict(FAIL, REFUSED_BY_RELAY, f"{REFUSED_BY_RELAY[1]}: cannot connect to {canary.endpoint}: "
                           f"{send.reply}", f"is {canary.relay} up, and port 25 open from the send host?")
        return Verdict(FAIL, REFUSED_BY_RELAY, f"{REFUSED_BY_RELAY[1]}: {send.stage} answered {send.reply}",
                       f"is {canary.domain} enabled at the provider, and {canary.recipient} allowed? "
                       "(pyinfra INVENTORY deploys/backupmx.py --dry shows gate G1)")
    if canary.copies:
        return _judge_delivered(canary, relay_cidrs, scoring)
    if mailbox_error:
        return Verdict(FAIL, UNREAD, f"taken by the relay ({send.reply}), not verified: {mailbox_error}",
                       "check canary.maildir and the mail host (docs/canary.md)")
    if canary.held:
        return Verdict(FAIL, STUCK, f"{STUCK[1]}: Accept-and-Hold is on (queued, held; not lost: it is delivered "
                       "when the hold is lifted)", "deploys/maintenance.py --data hold=off when the maintenance is over")
    if canary.bounce is not None:
        return _judge_bounce(canary)
    last = canary.last_error
    if last and _PERMANENT.search(last):
        return Verdict(FAIL, REFUSED_BY_PRIMARY, f"{REFUSED_BY_PRIMARY[1]}: the relay's last attempt: {last}",
                       "the primary refuses relayed mail: check its whitelist and restrictions (deploys/drift.py)")
    if canary.seen_queued is not None and canary.left_queue is None:
        because = f"the relay's last attempt: {last}" if last else "not tried yet"
        return Verdict(FAIL, STUCK, f"{STUCK[1]}, not lost: {because}; it is retried until the primary "
                       f"takes it", "is the primary's Postfix up and its PROXY listener reachable from the relay?")
    unlisted = f"; no bounce listed ({canary.bounce_error})" if canary.bounce_error else ""
    if canary.left_queue is not None:
        return Verdict(FAIL, LOST, f"{LOST[1]}: gone from the relay's queue, not in the mailbox "
                       f"{waited:.0f} s after the hand-off" + (f" (last error: {last})" if last else "") + unlisted,
                       f"look for {canary.message_id} in the primary's mail log (a bounce or a reject)")
    why = f"the relay's queue could not be read: {canary.queue_error}" if canary.queue_error else \
        "never seen in the relay's queue"
    return Verdict(FAIL, LOST, f"{LOST[1]}: not in the mailbox {waited:.0f} s after the hand-off; {why}{unlisted}",
                   f"look for {canary.message_id} in the relay's and the primary's mail logs")


def _judge_bounce(canary: Canary) -> Verdict:
    """The relay bounced it: refused by the primary when the reply it bounced on is the primary's 5xx."""
    reply = " ".join(canary.bounce.reply.split()) or "no reply recorded"
    if _PRIMARY_SAID.search(reply):
        return Verdict(FAIL, REFUSED_BY_PRIMARY, f"{REFUSED_BY_PRIMARY[1]}: the relay bounced it on the primary's "
                       f"reply: {reply}",
                       "the primary refuses relayed mail for this address: check its restrictions and access "
                       "maps for the recipient (deploys/drift.py checks the whitelist and the exemption)")
    return Verdict(FAIL, LOST, f"{LOST[1]}: bounced by the relay itself: {reply}",
                   f"look for {canary.message_id} in the relay's mail log")


def _judge_delivered(canary: Canary, relay_cidrs: Sequence[str], scoring: str) -> Verdict:
    message = canary.copies[0].message
    shown, problems = verdicts(message, relay_cidrs, dkim_signed=canary.signed, scoring=scoring)
    if len(canary.copies) > 1:
        problems.append(f"delivered {len(canary.copies)} times")
    took = f"delivered in {canary.seconds:.2f} s" if canary.seconds is not None else "delivered"
    if problems:
        return Verdict(FAIL, JUDGED, f"{JUDGED[1]} {'; '.join(problems)} ({took}; {'; '.join(shown)})",
                       "run deploys/drift.py: the whitelist or the rspamd exemption on the mail host changed")
    return Verdict(PASS, None, f"{took}: {'; '.join(shown)}")
