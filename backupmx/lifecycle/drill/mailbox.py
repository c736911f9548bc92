"""The failover drill after the primary is back (steps 6-8): wait for the provider's queue to
drain while polling the mailbox, judge every message delivered, then remove them.

The mail host is reached through ``remote(argv) -> (ok, stdout_lines, stderr_text)``, as in
``backupmx.lifecycle.drill.run`` (docs/failover-drill.md).
"""

from __future__ import annotations

import re
import time

from backupmx.core.errors import BackupMXError
from backupmx.core.progress import Throttled
from backupmx.core.report import FAIL, PASS, SKIP, WARN
from backupmx.lifecycle.drill.messages import is_tagged, judge, title
from backupmx.lifecycle.drill.run import Drill, Log, Remote
from backupmx.lifecycle.probes import NOT_SCANNED, queue_id
from backupmx.mailhost.maildir import MAILDIR_SCRIPT, Delivered, parse_maildir_listing
from backupmx.mailhost.maillog import log_reader, milter_awk, parse_milter_misses


def read_mailbox(drill: Drill, remote: Remote) -> dict[str, list[Delivered]]:
    argv = drill.mailhost.in_target(["sh", "-c", MAILDIR_SCRIPT, "sh", drill.failover.maildir,
                                    *[p.message_id for p in drill.probes]])
    ok, lines, err = remote(argv)
    if not ok:
        raise BackupMXError(f"cannot read the mailbox {drill.failover.maildir} on {drill.host_name}: {err}")
    return parse_maildir_listing(lines)


def drain(drill: Drill, remote: Remote, log: Log) -> bool:
    """Step 6: wait, bounded, until the queue holds no probe and the mailbox has each one."""
    f = drill.failover
    deadline = drill.clock() + f.drain_seconds
    progress = Throttled(log, 1.0, drill.clock)
    found: dict[str, list[Delivered]] = {}
    first = True
    while True:
        drill.check_interrupt()
        queue = drill.queue_by_sender()
        found = read_mailbox(drill, remote)
        now = drill.clock()
        for probe in drill.probes:
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
        queued = [p for p in drill.probes if p.left_queue is None]
        delivered = [p for p in drill.probes if p.delivered_at is not None]
        if not queued and (len(delivered) == len(drill.probes) or now >= deadline or
                           all(p.left_queue and now - p.left_queue > 5 for p in drill.probes
                               if p.delivered_at is None)):
            break
        if now >= deadline:
            break
        progress(f"failover 6: queued {len(queued)}, delivered {len(delivered)}/{len(drill.probes)}; "
                 f"waiting at most {deadline - now:.0f} s more")
        drill.wait(f.poll_seconds)
    queued = [p for p in drill.probes if p.left_queue is None]
    if queued:
        drill.add("6", "provider queue drained", FAIL, f"{len(queued)} probe(s) still queued after "
                 f"{f.drain_seconds:.0f} s: " + "; ".join(f"{title(p)}: {p.last_error}" for p in queued),
                 "look at the provider's queue (last error) and the mail host's postscreen log")
    else:
        last = max(p.left_queue for p in drill.probes)
        drill.add("6", "provider queue drained", PASS, f"no probe left in the queue {last - drill.up_at:.1f} s "
                 "after the primary came back")
    verify(drill, remote, found)
    clean_up(drill, remote, found, log)
    return not queued


def verify(drill: Drill, remote: Remote, found: dict[str, list[Delivered]]) -> None:
    """Step 7: per message, from the delivered copies (and the primary's log for one it did not scan)."""
    cidrs = [str(c) for c in drill.settings.relay_cidrs]
    for probe in drill.probes:
        judge(probe, found.get(probe.message_id, []), cidrs)
        if not probe.copies:
            if probe.left_queue:
                probe.problems[-1] = (f"left {probe.relay}'s queue but never arrived: bounced by the primary "
                                      f"(the hop {probe.relay} -> {drill.host_name}) or lost between them; last "
                                      f"relay error seen: {probe.last_error}")
            continue
        if probe.retried_after_up:
            probe.problems.append(f"postscreen/primary delayed it: {probe.retried_after_up}")
        else:
            probe.verdicts.append("first attempt after primary-up")
    explain_unscanned(drill, remote, found)
    for probe in drill.probes:
        queued = probe.queued_at or "-"
        delivered = "-"
        if probe.delivered_at and drill.up_at:
            delivered = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(probe.delivered_wall))} "
                         f"({probe.delivered_at - drill.up_at:+.1f} s after primary-up)")
        untagged = probe.kind == "spam" and not is_tagged(probe)
        status = FAIL if probe.problems else (WARN if probe.warnings or untagged else PASS)
        text = "; ".join(probe.problems + probe.warnings + probe.verdicts)
        drill.add("7", title(probe), status, f"queued at {queued}, delivered at {delivered}: {text}",
                  UNSCANNED_NEXT_STEP if probe.warnings and not probe.problems else None)
    bad = [p for p in drill.probes if p.problems]
    unscanned = [p for p in drill.probes if p.warnings and not p.problems]
    clean = len(drill.probes) - len(bad) - len(unscanned)
    drill.add("7", "mailbox verdicts", FAIL if bad else (WARN if unscanned else PASS),
             f"{clean}/{len(drill.probes)} messages delivered once and clean"
             + (f"; delivered but not scanned: {', '.join(title(p) for p in unscanned)}" if unscanned else "")
             + (f"; failing: {', '.join(title(p) for p in bad)}" if bad else ""))


UNSCANNED_NEXT_STEP = ("nothing to change for the backup MX; to have the primary defer such mail until rspamd is "
                       "up (the backups keep it meanwhile) instead of taking it unscanned, set "
                       "milter_default_action = tempfail in its Postfix main.cf (docker-mailserver: "
                       "postfix-main.cf in its config dir)")


def explain_unscanned(drill: Drill, remote: Remote, found: dict[str, list[Delivered]]) -> None:
    """A message delivered without rspamd's header is a failure unless the primary's own log says
    why: its Postfix could not reach its milter for that message and took it anyway
    (``milter_default_action = accept``), as docker-mailserver does when a relay delivers in the
    seconds after a restart before rspamd listens. That is a warning, never a pass."""
    unscanned = {}
    for probe in drill.probes:
        copies = found.get(probe.message_id, [])
        found_id = queue_id(copies[0].message) if copies and NOT_SCANNED in probe.problems else None
        if found_id:
            unscanned[found_id] = probe
    if not unscanned:
        return
    ok, lines, err = remote(log_reader(drill.mailhost, milter_awk(unscanned)))
    misses = parse_milter_misses(lines) if ok else {}
    for found_id, probe in unscanned.items():
        warning = misses.get(found_id)
        at = probe.problems.index(NOT_SCANNED)
        if warning is None:
            why = (f"its Postfix log names no milter failure for queue id {found_id}" if ok
                   else f"the primary's Postfix log could not be read: {err.strip()[-200:]}")
            probe.problems[at] = f"{NOT_SCANNED}: {why}"
            continue
        del probe.problems[at]
        probe.warnings.append(f"not scanned: {drill.host_name}'s Postfix took it (queue id {found_id}) without its "
                              f"milter ({warning}), so no spam, DKIM or SPF/DMARC verdict was applied: rspamd was "
                              f"not up yet when the relay delivered")


def clean_up(drill: Drill, remote: Remote, found: dict[str, list[Delivered]], log: Log) -> None:
    """Remove the drill's delivered messages from the mailbox; on a failure keep them to look at."""
    paths = [copy.path for probe in drill.probes for copy in found.get(probe.message_id, [])]
    if not paths:
        return
    if any(p.problems for p in drill.probes):
        drill.add("8", "drill messages removed", SKIP, f"kept for inspection (the drill failed): "
                 f"{', '.join(paths)}", f"remove them by hand when done: rm {' '.join(paths)}")
        return
    ok, out, err = remote(drill.mailhost.in_target(["rm", "-f", "--", *paths]))
    if not ok:
        drill.add("8", "drill messages removed", FAIL, f"rm in {drill.failover.maildir} failed: {err or out}",
                 f"remove them by hand: rm {' '.join(paths)}")
        return
    drill.add("8", "drill messages removed", PASS, f"{len(paths)} from {drill.failover.maildir}")
    log(f"failover 8: removed the {len(paths)} drill messages from {drill.failover.maildir}")
