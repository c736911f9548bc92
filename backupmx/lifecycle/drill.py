"""Gate G5, the live failover drill, in plain Python (deploys/failover_test.py runs it).

1. refuse unless the backup MX set is live in DNS and the whitelist/exemption are
   live on the mail host (stage 4's proof, read again now);
2. take the primary mail path down with the inventory's ``failover.stop_command``,
   for a bounded window;
3. send N probes (DKIM-signed by a sender domain whose SPF does not list the
   relays, unique Message-ID and envelope sender) to the backup MX hosts;
4. confirm each probe is queued at the provider (its queue listing);
5. bring the primary back with ``failover.start_command``: always, in a
   ``finally``, also after a failure or SIGINT/SIGTERM during the window;
6. wait, bounded, until the provider's queue drained;
7. read the mailbox on the mail host (over its connection, never from local
   files): every probe delivered once, no R_SPF_*/DMARC_* symbol, R_DKIM_ALLOW,
   the relay's announced address in the Received header and delivered on the
   first attempt after the primary came back (postscreen did not delay it);
8. one report row per step and per probe; any FAIL fails the run.

The mail host is reached through two callables, so the same code runs over SSH
(pyinfra's host) and in unit tests: ``remote(argv) -> (ok, stdout_lines,
stderr_text)``. See docs/failover-drill.md.
"""

from __future__ import annotations

import re
import secrets
import shlex
import signal
import smtplib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backupmx.core.errors import BackupMXError
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, Check, Report
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings
from backupmx.dns import check as dnscheck
from backupmx.lifecycle.drill_settings import FailoverSettings
from backupmx.lifecycle.probes import MAILDIR_SCRIPT, Probe, build_probe, parse_maildir_listing, verdicts
from backupmx.mailhost.model import MailHost
from backupmx.providers.registry import open_provider

Log = Callable[[str], None]
Remote = Callable[[Sequence[str]], tuple[bool, list[str], str]]

STEP_TITLES = {"2": "take the primary down", "3": "send probes", "4": "probes queued at the provider",
               "5": "bring the primary back", "6": "provider queue drained", "7": "mailbox verdicts"}


class Interrupted(BackupMXError):
    """SIGINT/SIGTERM during the drill: the primary is brought back, then the run fails."""


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
        self._provider = None
        self._secrets = None

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
        for index in range(1, f.probes + 1):
            self.check_interrupt()
            relay = hosts[(index - 1) % len(hosts)]
            tag = f"failover-{self.run_id}-{index}"
            probe = Probe(index, relay, f"{tag}@{f.sender_domain}", f"<{tag}@{f.sender_domain}>")
            self.probes.append(probe)
            message = build_probe(probe, f.recipient, f.sender_domain, f.dkim_selector, key, self.run_id)
            address, port = self.settings.backup_mx.smtp_endpoint(relay)
            try:
                with smtplib.SMTP(address, port, timeout=20, local_hostname="failover-drill.invalid") as client:
                    client.sendmail(probe.sender, [f.recipient], message)
                probe.sent_at = self.clock()
            except (OSError, smtplib.SMTPException) as error:
                probe.send_error = f"{relay} ({address}:{port}): {error}"
        failed = [p for p in self.probes if p.send_error]
        if failed:
            self.add("3", "send probes", FAIL, "; ".join(f"probe {p.index}: {p.send_error}" for p in failed))
            return False
        self.add("3", "send probes", PASS, f"{len(self.probes)} DKIM-signed ({f.sender_domain}, s={f.dkim_selector}) "
                 f"to {', '.join(hosts)}, for {f.recipient}")
        log(f"failover 3: {len(self.probes)} probes sent at {self.t()}")
        return True

    def _queue(self) -> dict[str, Any]:
        domain = self.failover.recipient.rsplit("@", 1)[1]  # the provider queues per recipient domain
        return {m.sender: m for m in self.provider().queue(domain)}

    def wait_queued(self, log: Log) -> bool:
        """Step 4: every probe in the provider's queue (and tried at least once against the down primary)."""
        f = self.failover
        window_end = self.down_at + f.window_seconds
        deadline = min(self.clock() + f.queue_seconds, window_end)
        shown = 0.0
        while True:
            self.check_interrupt()
            queue = self._queue()
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
                         + ", ".join(f"probe {p.index} via {p.relay}" for p in waiting))
                return False
            if now - shown >= 1.0:
                shown = now
                log(f"failover 4: queued {len(self.probes) - len(waiting)}/{len(self.probes)}; primary down "
                    f"{now - self.down_at:.1f} s, window ends in {window_end - now:.1f} s")
            self.wait(f.poll_seconds)
        evidence = "; ".join(f"probe {p.index} via {p.relay} queued {p.queued_at} ({p.attempts_at_up} attempt(s), "
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

    # -- steps 6-7 ---------------------------------------------------------------

    def read_mailbox(self, remote: Remote) -> dict[str, list]:
        argv = self.mailhost.in_target(["sh", "-c", MAILDIR_SCRIPT, "sh", self.failover.maildir,
                                        *[p.message_id for p in self.probes]])
        ok, lines, err = remote(argv)
        if not ok:
            raise BackupMXError(f"cannot read the mailbox {self.failover.maildir} on {self.host_name}: {err}")
        return parse_maildir_listing(lines)

    def drain(self, remote: Remote, log: Log) -> bool:
        """Step 6: wait, bounded, until the queue holds no probe and the mailbox has each one."""
        f = self.failover
        deadline = self.clock() + f.drain_seconds
        shown = 0.0
        found: dict[str, list] = {}
        first = True
        while True:
            self.check_interrupt()
            queue = self._queue()
            found = self.read_mailbox(remote)
            now = self.clock()
            for probe in self.probes:
                message = queue.get(probe.sender)
                if message is None:
                    probe.left_queue = probe.left_queue or now
                elif first:
                    # The baseline: attempts made while the primary was still down
                    # (the relay may have tried again while it was coming back).
                    probe.attempts_at_up = message.attempts or 0
                elif (message.attempts or 0) > probe.attempts_at_up and probe.retried_after_up is None:
                    probe.retried_after_up = f"deferred after the primary was back: {message.last_error}"
                if message is not None:
                    probe.last_error = message.last_error
                    if probe.retried_after_up is None and re.search(r"said: 4\d\d", message.last_error or ""):
                        probe.retried_after_up = f"the primary answered 4xx: {message.last_error}"
                if probe.message_id in found and probe.delivered_at is None:
                    probe.delivered_at = now
                    probe.delivered_wall = time.time()
            first = False
            queued = [p for p in self.probes if p.left_queue is None]
            delivered = [p for p in self.probes if p.delivered_at is not None]
            if not queued and (len(delivered) == len(self.probes) or now >= deadline or
                               all(p.left_queue and now - p.left_queue > 3 for p in self.probes
                                   if p.delivered_at is None)):
                break
            if now >= deadline:
                break
            if now - shown >= 1.0:
                shown = now
                log(f"failover 6: queued {len(queued)}, delivered {len(delivered)}/{len(self.probes)}; "
                    f"waiting at most {deadline - now:.0f} s more")
            self.wait(f.poll_seconds)
        queued = [p for p in self.probes if p.left_queue is None]
        if queued:
            self.add("6", "provider queue drained", FAIL, f"{len(queued)} probe(s) still queued after "
                     f"{f.drain_seconds:.0f} s: " + "; ".join(f"probe {p.index}: {p.last_error}" for p in queued),
                     "look at the provider's queue (last error) and the mail host's postscreen log")
        else:
            last = max(p.left_queue for p in self.probes)
            self.add("6", "provider queue drained", PASS, f"no probe left in the queue {last - self.up_at:.1f} s "
                     "after the primary came back")
        self.verify(found)
        return not queued

    def verify(self, found: dict[str, list]) -> None:
        """Step 7: per probe, from the delivered copies."""
        for probe in self.probes:
            copies = found.get(probe.message_id, [])
            probe.copies = len(copies)
            if not copies:
                probe.problems.append(f"not delivered (last relay error: {probe.last_error})")
                continue
            if len(copies) > 1:
                probe.problems.append(f"delivered {len(copies)} times")
            shown, problems = verdicts(copies[0], [str(c) for c in self.settings.relay_cidrs])
            probe.verdicts = shown
            probe.problems.extend(problems)
            if probe.retried_after_up:
                probe.problems.append(f"postscreen/primary delayed it: {probe.retried_after_up}")
            else:
                probe.verdicts.append("first attempt after primary-up")
        for probe in self.probes:
            queued = probe.queued_at or "-"
            delivered = "-"
            if probe.delivered_at and self.up_at:
                delivered = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(probe.delivered_wall))} "
                             f"({probe.delivered_at - self.up_at:+.1f} s after primary-up)")
            status = FAIL if probe.problems else PASS
            text = "; ".join(probe.problems + probe.verdicts) if probe.problems else "; ".join(probe.verdicts)
            self.add("7", f"probe {probe.index} via {probe.relay}", status,
                     f"queued at {queued}, delivered at {delivered}: {text}")
        bad = [p for p in self.probes if p.problems]
        self.add("7", "mailbox verdicts", FAIL if bad else PASS,
                 f"{len(self.probes) - len(bad)}/{len(self.probes)} probes delivered once and clean"
                 + (f"; failing: {', '.join(str(p.index) for p in bad)}" if bad else ""))

    # -- step 8 ------------------------------------------------------------------

    def skip_rest(self, reason: str) -> None:
        titles = STEP_TITLES
        for index, check in enumerate(self.report.checks):
            if check.status == CHANGE:  # the plan made while preparing: never reached
                self.report.checks[index] = Check(check.key, check.title, SKIP, reason)
        have = {c.key for c in self.report.checks}
        for key, title in titles.items():
            if key not in have:
                self.add(key, title, SKIP, reason)

    def render(self) -> str:
        self.finished = self.finished or self.clock()
        lines = [self.report.render().rsplit("\n", 1)[0]]
        wall = self.finished - self.started
        last = [p.delivered_at for p in self.probes if p.delivered_at]
        timing = f"  wall time {wall:.1f} s"
        if self.up_at and self.down_at:
            timing += f"; primary down {self.up_at - self.down_at:.1f} s"
        if self.up_at and last and len(last) == len(self.probes):
            timing += f"; primary-up to last probe delivered {max(last) - self.up_at:.1f} s"
        lines.append(timing)
        if self.primary_down:
            lines.append(f"  => FAILED and THE PRIMARY MAY STILL BE DOWN: run "
                         f"`{shlex.join(self.failover.start_command)}` on {self.host_name}")
        elif self.report.blocked:
            failed = next(c for c in self.report.checks if c.status == FAIL)
            lines.append(f"  => DRILL FAILED at step {failed.key} ({failed.title}); the primary is up")
        else:
            lines.append("  => drill passed: the backups queued every probe and delivered it cleanly; primary up")
        return "\n".join(lines)


class SignalGuard:
    """During the down window: SIGINT/SIGTERM only flag the drill (which then restores), never kill it."""

    def __init__(self, drill: Drill, log: Log):
        self.drill = drill
        self.log = log
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self.drill.interrupted:
            self.drill.interrupted = name
        try:
            self.log(f"failover: {name}: bringing the primary back before stopping")
        except Exception:  # noqa: BLE001, S110 - a handler must never raise; the report says it anyway
            pass

    def __enter__(self) -> SignalGuard:  # noqa: PYI034
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: nothing to guard
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
