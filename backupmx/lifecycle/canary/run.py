"""The weekly canary (deploys/canary.py): proof that each backup MX host still delivers, with the
primary up (docs/canary.md).

For each domain and each backup MX host: one uniquely tagged message (DKIM-signed when
the inventory names a key) to the domain's canary address, handed directly to that host
(by its name, or its ``backup_mx.smtp_endpoints`` entry), from the host the inventory
names (the mail host by default). The relay forwards it at once to the primary, through
the same listener, whitelist and scoring an outage would use. Then, bounded: the
provider's queue and the mailbox are read until every canary is delivered or settled
(refused, held, deferred, gone); each delivered copy is judged from its headers and
deleted, with any canary of an earlier run that arrived late. One row per host, the
time from hand-off to delivery, and the metrics file for node_exporter.

The hosts are reached through callables, so the same code runs over pyinfra's SSH
connections and in unit tests: ``send(argv)`` on the send host, ``read_mailbox()``
(the Maildir fact), ``delete(paths)`` on the mail host, and the provider's queue.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from backupmx.core.errors import BackupMXError
from backupmx.core.files import write_atomically
from backupmx.core.progress import Throttled
from backupmx.core.report import FAIL, PASS, Report
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings
from backupmx.lifecycle.budget import Record, canary_spent
from backupmx.lifecycle.canary.send import Remote, hand_off
from backupmx.lifecycle.canary.settings import CanarySettings
from backupmx.lifecycle.canary.verdict import (
    BUDGET,
    MARKER_HEADER,
    MESSAGE_ID_PREFIX,
    Canary,
    SendOutcome,
    Verdict,
    judge,
    maildir_time,
    observe_queue,
    settled,
)
from backupmx.lifecycle.probes import compose_message
from backupmx.mailhost.maildir import Delivered
from backupmx.mailhost.model import MailHost
from backupmx.monitoring.canary_metrics import CanaryResult, render_metrics
from backupmx.providers.registry import open_provider

Log = Callable[[str], None]
# message-id -> every copy (its header, size and file): the Maildir fact's answer.
Mailbox = Mapping[str, Sequence[Delivered]]


def by_message_id(found: Mailbox) -> dict[str, list[Delivered]]:
    """The Maildir fact's copies (listed per searched prefix) keyed by each message's own Message-ID."""
    mailbox: dict[str, list[Delivered]] = {}
    for copies in found.values():
        for copy in copies:
            mailbox.setdefault(str(copy.message.get("Message-ID", "")).strip(), []).append(copy)
    return mailbox


class CanaryRun:
    def __init__(self, settings: Settings, mailhost: MailHost, canary: CanarySettings, host_name: str,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 wall: Callable[[], float] = time.time, provider=None):
        self.settings = settings
        self.mailhost = mailhost
        self.config = canary
        self.host_name = host_name
        self.clock = clock
        self.sleep = sleep
        self.wall = wall
        self.run_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(4)
        self.canaries = self._plan()
        self.verdicts: dict[tuple[str, str], Verdict] = {}
        self.report = Report(f"backupmx canary: {', '.join(d.name for d in settings.domains)} via "
                             f"{', '.join(settings.backup_mx.hosts)} ({settings.provider.name}), mailbox on "
                             f"{host_name}, sent from {canary.send_from or host_name}")
        self.started = clock()
        self.removed_late: list[str] = []
        self.cleanup_error: str | None = None
        self.mailbox_error: str | None = None  # the Maildir could not be read: nothing can be verified
        self._provider = provider  # opened on first use (the ACC key from Vault) unless given
        # The budget (docs/budget.md): what the run would spend per domain, and the spend ledger's writer.
        self.budget_lines: list[str] = []
        self.budget_refusal = ""
        self.record: Record | None = None

    # -- the plan ------------------------------------------------------------------

    def _plan(self) -> list[Canary]:
        c = self.config
        canaries = []
        for domain in self.settings.domains:
            for index, relay in enumerate(self.settings.backup_mx.hosts, start=1):
                address, port = self.settings.backup_mx.smtp_endpoint(relay)
                tag = f"{self.run_id}.{domain.name}.{index}"
                canaries.append(Canary(
                    domain=domain.name, relay=relay, endpoint=f"{address}:{port}",
                    sender=f"backupmx-canary-{self.run_id}-{len(canaries) + 1}@{c.sender_domain}",
                    recipient=c.recipient(domain.name),
                    message_id=f"{MESSAGE_ID_PREFIX}{tag}@{c.sender_domain}>", signed=c.signed))
        return canaries

    def plan_lines(self) -> list[str]:
        c = self.config
        lines = [f"canary: would send {len(self.canaries)} message(s) from {c.send_from or self.host_name} "
                 f"(HELO {c.helo}, sender domain {c.sender_domain}"
                 f"{f', DKIM s={c.dkim_selector}' if c.signed else ', not DKIM-signed'}):"]
        lines += [f"canary:   {k.recipient} via {k.relay} ({k.endpoint})" for k in self.canaries]
        lines += [f"canary: would spend {line}" for line in self.budget_lines]
        lines.append(f"canary: then wait up to {c.wait_seconds:.0f} s for each in {c.maildir} on {self.host_name}, "
                     f"judge it ({self.mailhost.relay_scoring} scoring) and delete it")
        return lines

    def refuse(self, refusal: str) -> None:
        """The budget refused the run at execution: nothing is sent, every row says why."""
        self.budget_refusal = refusal
        for canary in self.canaries:
            canary.send = SendOutcome(False, refusal, BUDGET)

    # -- plumbing --------------------------------------------------------------------

    def provider(self):
        if self._provider is None:
            self._provider = open_provider(self.settings, SecretStore(self.settings.vault))
        return self._provider

    def close(self) -> None:
        if self._provider is not None:
            self._provider.close()

    def message(self, canary: Canary) -> bytes:
        c = self.config
        dkim = (c.dkim_selector, c.sender_domain, Path(c.dkim_key).read_bytes()) if c.signed else None
        body = (f"backupmx canary {self.run_id}: proof that {canary.relay} still relays mail for "
                f"{canary.domain} to its mailbox. Deleted by the canary itself; safe to delete.\r\n")
        return compose_message(f"backupmx canary <{canary.sender}>", canary.recipient, canary.message_id,
                               f"backupmx canary {self.run_id} via {canary.relay}", body,
                               extra_headers=[f"{MARKER_HEADER}: {self.run_id} {canary.relay}"], dkim=dkim)

    # -- 1. hand-off -----------------------------------------------------------------

    def send_all(self, remote: Remote, log: Log) -> bool:
        for canary in self.canaries:
            host, _, port = canary.endpoint.rpartition(":")
            try:
                message = self.message(canary)
            except OSError as error:
                canary.send = SendOutcome(False, f"cannot read canary.dkim_key {self.config.dkim_key}: "
                                          f"{error.strerror}", "send host")
                continue
            try:
                canary.send = hand_off(remote, host, int(port), self.config.helo, canary.sender, canary.recipient,
                                       message)
            except BackupMXError as error:
                canary.send = SendOutcome(False, str(error), "send host")
            canary.handed_off = self.clock()
            if self.record is not None and canary_spent(canary.send):
                self.record(canary.domain, "canary", len(message), canary.relay)
            state = "taken" if canary.send.ok else "REFUSED"
            log(f"canary: {canary.relay} for {canary.domain}: {state}: {canary.send.reply}")
        return any(c.send.ok for c in self.canaries)

    # -- 2. wait, bounded --------------------------------------------------------------

    def _queues(self) -> dict[str, dict[str, object]]:
        """Per domain: envelope sender -> its entry in the provider's queue listing."""
        listings = {}
        for domain in {c.domain for c in self.canaries if c.send and c.send.ok}:
            listings[domain] = {m.sender: m for m in self.provider().queue(domain)}
        return listings

    def _look_for_bounces(self, canaries: list[Canary]) -> None:
        """The provider's bounce listing, for canaries neither in the mailbox nor in the queue now: a relay
        that the primary refused at once bounces before a poll ever sees the canary queued."""
        for domain in sorted({canary.domain for canary in canaries}):
            mine = [canary for canary in canaries if canary.domain == domain]
            try:
                listed = {bounce.sender: bounce for bounce in self.provider().bounces(domain)}
            except BackupMXError as error:
                for canary in mine:
                    canary.bounce_error = str(error) or f"provider {self.settings.provider.name} lists no bounces"
                continue
            for canary in mine:
                canary.bounce = listed.get(canary.sender)

    def wait(self, read_mailbox: Callable[[], Mailbox], log: Log) -> Mailbox:
        """Poll the queue and the mailbox until every canary settled or the wait is over; the last mailbox."""
        c = self.config
        grace = max(3 * c.poll_seconds, 3.0)
        deadline = self.clock() + c.wait_seconds
        progress = Throttled(log, 5.0, self.clock, at_once=False)
        mailbox: Mailbox = {}
        while True:
            mailbox = read_mailbox()
            now = self.clock()
            pending = [k for k in self.canaries if k.send and k.send.ok and not k.copies]
            for canary in pending:
                copies = list(mailbox.get(canary.message_id, ()))
                if copies:
                    canary.copies = copies
                    canary.delivered_at = now
                    canary.delivered_wall = maildir_time(copies[0].path)
            pending = [k for k in pending if not k.copies]
            if pending:
                try:
                    queues = self._queues()
                    now = self.clock()
                    for canary in pending:
                        observe_queue(canary, queues.get(canary.domain, {}).get(canary.sender), now)
                except BackupMXError as error:
                    for canary in pending:
                        canary.queue_error = str(error)
                # No trace of it for `grace` (never queued, or gone from the queue): bounced?
                unlisted = [k for k in pending if k.bounce is None and k.bounce_error is None
                            and (k.seen_queued is None or k.left_queue is not None)
                            and now - _last_trace(k, now) >= grace]
                if unlisted:
                    self._look_for_bounces(unlisted)
            waiting = [k for k in pending if not settled(k, now, c.settle_seconds, grace)]
            if not waiting or now >= deadline:
                return mailbox
            progress(f"canary: waiting for {len(waiting)} of {len(self.canaries)} "
                     f"({', '.join(k.relay for k in waiting)}); at most {deadline - now:.0f} s more")
            self.sleep(c.poll_seconds)

    # -- 3. judge, clean up ------------------------------------------------------------

    def judge_all(self) -> None:
        for canary in self.canaries:
            waited = self.clock() - (canary.handed_off or self.started)
            verdict = judge(canary, [str(n) for n in self.settings.relay_cidrs], self.mailhost.relay_scoring, waited,
                            self.mailbox_error)
            self.verdicts[canary.key] = verdict
            self.report.put("canary", f"{canary.domain} via {canary.relay}", verdict.status, verdict.text,
                            verdict.next_step)

    def to_delete(self, mailbox: Mailbox) -> list[str]:
        """The files of this run's canaries and of earlier runs' late ones (never another message)."""
        ours = {c.message_id for c in self.canaries}
        paths = []
        for copies in mailbox.values():
            for copy in copies:
                message_id = str(copy.message.get("Message-ID", "")).strip()
                if copy.path and message_id.startswith(MESSAGE_ID_PREFIX):
                    paths.append(copy.path)
                    if message_id not in ours:
                        self.removed_late.append(message_id)
        return sorted(set(paths))

    def clean_up(self, mailbox: Mailbox, delete: Callable[[list[str]], None], log: Log) -> None:
        paths = self.to_delete(mailbox)
        if not paths:
            return
        try:
            delete(paths)
        except BackupMXError as error:
            self.cleanup_error = str(error)
            self.report.put("canary", "clean up", FAIL, f"could not delete {len(paths)} canary file(s) in "
                            f"{self.config.maildir}: {error}", "delete them by hand; the next run tries again")
            return
        log(f"canary: deleted {len(paths)} canary message(s) from {self.config.maildir}"
            + (f", {len(self.removed_late)} of them from earlier runs" if self.removed_late else ""))

    # -- the outcome -------------------------------------------------------------------

    def results(self) -> list[CanaryResult]:
        results = []
        for canary in self.canaries:
            verdict = self.verdicts.get(canary.key)
            ok = verdict is not None and verdict.status == PASS
            results.append(CanaryResult(canary.domain, canary.relay, ok, canary.seconds if canary.copies else None,
                                        None if ok or verdict is None or verdict.hop is None else verdict.hop[0]))
        return results

    def write_metrics(self) -> str | None:
        """The textfile-collector file (``canary.metrics_file``), replaced atomically; its path, if any."""
        path = self.config.metrics_file
        if not path:
            return None
        try:
            previous = Path(path).read_text()
        except OSError:
            previous = None
        write_atomically(path, render_metrics(self.results(), self.wall(), previous))
        return path

    @property
    def failed(self) -> bool:
        return self.report.blocked or len(self.verdicts) < len(self.canaries)

    def render(self) -> str:
        lines = [self.report.render().rsplit("\n", 1)[0]]
        delivered = [c.seconds for c in self.canaries if c.copies and c.seconds is not None]
        timing = f"  wall time {self.clock() - self.started:.1f} s"
        if delivered:
            spread = f"{min(delivered):.2f}" + (f"-{max(delivered):.2f}" if len(delivered) > 1 else "")
            timing += f"; hand-off to mailbox {spread} s"
        lines.append(timing)
        if self.removed_late:
            lines.append(f"  {len(self.removed_late)} canary(ies) of earlier runs arrived late and were deleted: "
                         f"{', '.join(self.removed_late)}")
        failing = [c for c in self.canaries if self.verdicts.get(c.key) and self.verdicts[c.key].status != PASS]
        if failing:
            hops = sorted({self.verdicts[c.key].hop[1] for c in failing if self.verdicts[c.key].hop})
            lines.append(f"  => CANARY FAILED for {', '.join(c.relay + ' (' + c.domain + ')' for c in failing)}: "
                         f"{'; '.join(hops)}")
        elif self.failed:
            lines.append("  => CANARY FAILED (see the rows above)")
        else:
            lines.append(f"  => canary passed: every backup MX host delivered to the mailbox "
                         f"({len(self.canaries)} message(s), deleted)")
        return "\n".join(lines)


def _last_trace(canary: Canary, now: float) -> float:
    """When the canary was last known to be on its way: it left the queue, or was handed off."""
    if canary.left_queue is not None:
        return canary.left_queue
    return canary.handed_off if canary.handed_off is not None else now
