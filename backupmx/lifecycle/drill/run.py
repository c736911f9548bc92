"""Gate G5, the live failover drill, in plain Python (deploys/failover_test.py runs it).

1. refuse unless the backup MX set is live in DNS and the whitelist/exemption are
   live on the mail host (stage 4's proof, read again now);
2. take the primary mail path down with the inventory's ``failover.stop_command``,
   for a bounded window;
3. send N probes (DKIM-signed by a sender domain whose SPF does not list the
   relays, unique Message-ID and envelope sender) to the backup MX hosts, and a
   large and a spam message (backupmx.lifecycle.drill.messages);
4. confirm each probe is queued at the provider (its queue listing);
5. bring the primary back with ``failover.start_command``: always, in a
   ``finally``, also after a failure or SIGINT/SIGTERM during the window;
6. wait, bounded, until the provider's queue drained;
7. read the mailbox on the mail host (over its connection, never from local
   files): every probe delivered once, no R_SPF_*/DMARC_* symbol, R_DKIM_ALLOW,
   the relay's announced address in the Received header and delivered on the
   first attempt after the primary came back (postscreen did not delay it); the
   large one whole, the spam one tagged; then they are removed (kept on a failure);
8. one report row per step and per message; any FAIL fails the run.

Steps 6-8 are in ``backupmx.lifecycle.drill.mailbox``, step 8's report in
``backupmx.lifecycle.drill.report``, the messages in ``backupmx.lifecycle.drill.messages``.
The mail host is reached through two callables, so the same code runs over SSH
(pyinfra's host) and in unit tests: ``remote(argv) -> (ok, stdout_lines,
stderr_text)``. See docs/failover-drill.md.
"""

from __future__ import annotations

import secrets
import shlex
import smtplib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backupmx.core.errors import BackupMXError
from backupmx.core.progress import Throttled
from backupmx.core.report import FAIL, PASS, Check, Report
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings
from backupmx.dns import check as dnscheck
from backupmx.lifecycle.budget import Record
from backupmx.lifecycle.drill.messages import build_message, kinds, large_size, title
from backupmx.lifecycle.drill.settings import FailoverSettings
from backupmx.lifecycle.drill.signals import Interrupted
from backupmx.lifecycle.probes import Probe, build_probe
from backupmx.mailhost.model import MailHost
from backupmx.providers.registry import open_provider

Log = Callable[[str], None]
Remote = Callable[[Sequence[str]], tuple[bool, list[str], str]]

# A relay's clean refusal: the message was not taken, so it is not spent.
REFUSED = (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)

STEP_TITLES = {"2": "take the primary down", "3": "send probes", "4": "probes queued at the provider",
               "5": "bring the primary back", "6": "provider queue drained", "7": "mailbox verdicts",
               "8": "drill messages removed"}


# --- the drill ------------------------------------------------------------------


class Drill:
    def __init__(self, settings: Settings, mailhost: MailHost, failover: FailoverSettings, host_name: str,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.mailhost = mailhost
        self.failover = failover
        self.host_name = host_name
        self.domain = settings.domains[0].name
        self.clock = clock
        self.sleep = sleep
        self.run_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        self.report = Report(f"backupmx failover drill (G5): {self.domain} via {', '.join(settings.backup_mx.hosts)}, "
                             f"primary {host_name}")
        self.started = clock()
        self.probes: list[Probe] = []
        self.down_at: float | None = None
        self.up_at: float | None = None
        self.primary_down = False
        self.step = "2"  # the step in progress in the down window
        self.interrupted: str | None = None
        self.finished: float | None = None
        self.primary_size_limit: int | None = None  # Postfix's message_size_limit (0: none), read while preparing
        self.size_error = "not read"
        self._provider = None
        self._secrets = None
        # Writes each message a relay took (or may have taken) to the spend ledger (docs/budget.md).
        self.record: Record | None = None

    # -- plumbing ----------------------------------------------------------------

    def add(self, key: str, title: str, status: str, evidence: str, next_step: str | None = None) -> Check:
        return self.report.put(key, title, status, evidence, next_step)

    def t(self, at: float | None = None) -> str:
        return f"{(self.clock() if at is None else at) - self.started:5.1f}s"

    def provider(self):
        if self._provider is None:
            self._secrets = SecretStore(self.settings.vault)
            self._provider = open_provider(self.settings, self._secrets)
        return self._provider

    def close(self) -> None:
        if self._provider is not None:
            self._provider.close()

    def check_interrupt(self) -> None:
        if self.interrupted:
            raise Interrupted(f"interrupted by {self.interrupted}")

    def wait(self, seconds: float) -> None:
        """Sleep in short steps, so a signal is acted on at once."""
        end = self.clock() + seconds
        while True:
            self.check_interrupt()
            left = end - self.clock()
            if left <= 0:
                return
            self.sleep(min(0.1, left))

    # -- step 1 ------------------------------------------------------------------

    def check_dns(self, log: Log) -> bool:
        backup = self.settings.backup_mx
        wanted = {(backup.priority, h) for h in backup.hosts}
        try:
            answer = dnscheck.live_mx(self.domain, self.settings.dns_servers)
        except BackupMXError as error:
            self.add("1", "backup MX live in DNS", FAIL, str(error))
            return False
        missing = sorted(wanted - set(answer))
        if missing:
            self.add("1", "backup MX live in DNS", FAIL, f"the authoritative DNS answers {dnscheck.render(answer)}; "
                     f"missing {dnscheck.render(missing)}", "publish them first (deploys/backupmx.py)")
            return False
        self.add("1", "backup MX live in DNS", PASS, dnscheck.render(answer))
        log(f"failover 1: DNS {self.domain}: {dnscheck.render(answer)}")
        return True

    def record_whitelist(self, live: bool, evidence: str) -> bool:
        self.add("1", "whitelist + exemption live", PASS if live else FAIL, evidence,
                 None if live else "run deploys/backupmx.py (stage 3-4) first; the primary was not stopped")
        return live

    def check_size_limit(self) -> bool:
        """The large message needs the primary's message_size_limit: never a size it would refuse."""
        if not self.failover.large_message_bytes:
            return True
        if self.primary_size_limit is None:
            self.add("1", "primary's message size limit", FAIL, f"message_size_limit not read on {self.host_name}: "
                     f"{self.size_error}", "check Postfix on the mail host (postconf), or set "
                     "failover.large_message_bytes: 0")
            return False
        decision = large_size(self.failover.large_message_bytes, self.primary_size_limit)
        limit = "no limit" if self.primary_size_limit == 0 else f"{self.primary_size_limit} bytes"
        self.add("1", "primary's message size limit", PASS, f"message_size_limit {limit}: large message "
                 f"{decision.size} bytes" + (f" ({decision.note})" if decision.note else ""))
        return True

    # -- steps 2-5 ---------------------------------------------------------------

    def down_window(self, remote: Remote, log: Log) -> bool:
        """Steps 2-5: stop, probe, confirm queued, and always start the primary again."""
        f = self.failover
        ok = False
        try:
            self.check_interrupt()
            log(f"failover 2: stopping the primary mail path: {shlex.join(f.stop_command)} "
                f"(window at most {f.window_seconds:.0f} s)")
            self.primary_down = True  # from here on a failure may have left it down
            self.down_at = self.clock()
            done, out, err = remote(f.stop_command)
            if not done:
                self.add("2", "take the primary down", FAIL, f"{shlex.join(f.stop_command)} failed: {err or out}")
                return False
            if self._listener_up(remote):
                self.add("2", "take the primary down", FAIL, f"{f.up_check} still accepts connections after "
                         f"{shlex.join(f.stop_command)}")
                return False
            self.add("2", "take the primary down", PASS, f"{shlex.join(f.stop_command)}; {f.up_check} refuses")
            self.step = "3"
            ok = self.send_probes(log)
            self.step = "4"
            ok = ok and self.wait_queued(log)
        except Interrupted as error:
            self.add(self.step, STEP_TITLES[self.step], FAIL,
                     f"{error} {self.t().strip()} into the drill; the primary is brought back")
            log(f"failover: {error}: bringing the primary back")
            ok = False
        except BackupMXError as error:
            self.add(self.step, STEP_TITLES[self.step], FAIL, str(error))
            ok = False
        finally:
            if self.primary_down:
                ok = self.bring_back(remote, log) and ok
        return ok and not self.interrupted

    def send_probes(self, log: Log) -> bool:
        f = self.failover
        key = Path(f.dkim_key).read_bytes()
        hosts = self.settings.backup_mx.hosts
        for index, kind in enumerate(kinds(f.probes, f.large_message_bytes, f.spam_message), start=1):
            self.check_interrupt()
            relay = hosts[(index - 1) % len(hosts)]
            tag = f"failover-{self.run_id}-{index}"
            probe = Probe(index, relay, f"{tag}@{f.sender_domain}", f"<{tag}@{f.sender_domain}>", kind)
            self.probes.append(probe)
            address, port = self.settings.backup_mx.smtp_endpoint(relay)
            try:
                with smtplib.SMTP(address, port, timeout=60, local_hostname="failover-drill.invalid") as client:
                    client.ehlo()
                    message = self._compose(probe, key, client.esmtp_features.get("size"), log)
                    probe.size, probe.lines = len(message), message.count(b"\r\n")
                    # smtplib announces SIZE= itself: a backup that would not take it refuses at MAIL FROM.
                    client.sendmail(probe.sender, [f.recipient], message)
                probe.sent_at = self.clock()
                self._spent(probe)
            except (OSError, smtplib.SMTPException) as error:
                probe.send_error = f"{relay} ({address}:{port}) refused it: {error}"
                if probe.size is not None and not isinstance(error, REFUSED):
                    self._spent(probe)  # lost after the message was on its way: the relay may have taken it
        failed = [p for p in self.probes if p.send_error]
        if failed:
            self.add("3", "send probes", FAIL, "; ".join(f"{title(p)}: {p.send_error}" for p in failed),
                     "a backup must take all mail the primary takes: look at the backup's limits")
            return False
        extras = [f"{p.kind} message via {p.relay} ({p.size} bytes{'; ' + p.size_note if p.size_note else ''})"
                  for p in self.probes if p.kind != "probe"]
        self.add("3", "send probes", PASS, f"{f.probes} probes DKIM-signed ({f.sender_domain}, s={f.dkim_selector}) "
                 f"to {', '.join(hosts)}, for {f.recipient}" + (f"; {'; '.join(extras)}" if extras else ""))
        log(f"failover 3: {len(self.probes)} messages sent at {self.t()}")
        return True

    def _spent(self, probe: Probe) -> None:
        if self.record is not None:
            self.record(self.failover.recipient.rsplit("@", 1)[1], f"drill {probe.kind}", probe.size or 0, probe.relay)

    def _compose(self, probe: Probe, key: bytes, announced: str | None, log: Log) -> bytes:
        f = self.failover
        if probe.kind == "probe":
            return build_probe(probe, f.recipient, f.sender_domain, f.dkim_selector, key, self.run_id)
        size = 0
        if probe.kind == "large":
            relay_size = int(announced) if announced and announced.isdigit() else None
            decision = large_size(f.large_message_bytes, self.primary_size_limit or 0, probe.relay, relay_size)
            size, probe.size_note = decision.size, decision.note
            if decision.note:
                log(f"failover 3: large message: {decision.note}")
        return build_message(probe, f.recipient, f.sender_domain, f.dkim_selector, key, self.run_id, size)

    def queue_by_sender(self) -> dict[str, Any]:
        domain = self.failover.recipient.rsplit("@", 1)[1]  # the provider queues per recipient domain
        return {m.sender: m for m in self.provider().queue(domain)}

    def wait_queued(self, log: Log) -> bool:
        """Step 4: every probe in the provider's queue (and tried at least once against the down primary)."""
        f = self.failover
        window_end = self.down_at + f.window_seconds
        deadline = min(self.clock() + f.queue_seconds, window_end)
        progress = Throttled(log, 1.0, self.clock)
        while True:
            self.check_interrupt()
            queue = self.queue_by_sender()
            now = self.clock()
            for probe in self.probes:
                message = queue.get(probe.sender)
                if message is not None:
                    probe.queued_at = probe.queued_at or message.queued_at
                    probe.seen_queued = probe.seen_queued or now
                    probe.attempts_at_up = message.attempts or 0
                    probe.last_error = message.last_error
            waiting = [p for p in self.probes if p.seen_queued is None or p.attempts_at_up < 1]
            if not waiting:
                break
            if now >= deadline:
                self.add("4", "probes queued at the provider", FAIL,
                         f"not queued (or never tried) after {f.queue_seconds:.0f} s: "
                         + ", ".join(title(p) for p in waiting))
                return False
            progress(f"failover 4: queued {len(self.probes) - len(waiting)}/{len(self.probes)}; primary down "
                     f"{now - self.down_at:.1f} s, window ends in {window_end - now:.1f} s")
            self.wait(f.poll_seconds)
        evidence = "; ".join(f"{title(p)} queued {p.queued_at} ({p.attempts_at_up} attempt(s), "
                             f"last error: {p.last_error})" for p in self.probes)
        self.add("4", "probes queued at the provider", PASS, evidence)
        log(f"failover 4: all {len(self.probes)} probes queued at {self.provider().name} at {self.t()}")
        return True

    def _listener_up(self, remote: Remote) -> bool:
        host, _, port = self.failover.up_check.rpartition(":")
        code = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()\n"
                "except OSError:\n sys.exit(1)\n")
        ok, _, _ = remote(self.mailhost.in_target(["python3", "-c", code, host.strip("[]"), port]))
        return ok

    def bring_back(self, remote: Remote, log: Log) -> bool:
        """Step 5: always. Retried until the listener accepts, bounded."""
        f = self.failover
        log(f"failover 5: bringing the primary back: {shlex.join(f.start_command)}")
        deadline = self.clock() + f.up_seconds
        errors = []
        while True:
            try:
                done, out, err = remote(f.start_command)
                if not done:
                    errors.append((err or " ".join(out)).strip()[-300:])
                up = self._listener_up(remote)
            except Exception as error:  # noqa: BLE001 - e.g. the SSH connection broke: keep trying
                errors.append(f"{type(error).__name__}: {error}")
                up = False
            if up:
                self.up_at = self.clock()
                self.primary_down = False
                self.add("5", "bring the primary back", PASS, f"{shlex.join(f.start_command)}; {f.up_check} accepts "
                         f"after {self.up_at - self.down_at:.1f} s down")
                log(f"failover 5: primary up at {self.t()} ({self.up_at - self.down_at:.1f} s down)")
                return True
            if self.clock() >= deadline:
                self.add("5", "bring the primary back", FAIL, f"{f.up_check} still refuses after {f.up_seconds:.0f} s"
                         f"{': ' + errors[-1] if errors else ''}",
                         f"THE MAIL HOST IS DOWN: run `{shlex.join(f.start_command)}` on {self.host_name} now "
                         f"(mail queues at the backups meanwhile)")
                return False
            time.sleep(1.0)  # never interrupted: the restore must finish
