"""The failover drill's operations (gate G5), run on the mail host, acting at execution.

Three operations, each one Python callback at execution (``FunctionCommand``):

- ``drill_preflight`` (step 1): the backup MX set live in DNS and the whitelist
  + exemption proven live on this mail host (stage 4's ``prove_live`` again);
- ``drill_down_window`` (steps 2-5): stop the primary, send and confirm the probes,
  and bring the primary back in a ``finally``, with SIGINT/SIGTERM turned into
  "restore, then fail" for the whole window;
- ``drill_verify`` (steps 6-7): wait for the queue to drain, read the mailbox.

A failed operation fails the host, so the later ones do not run; the report is
printed once at exit whatever happened (like the rollback's).
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from functools import partial

import click
from pyinfra import host, logger
from pyinfra.api import DeployError, FunctionCommand, QuoteString, StringCommand, operation

from backupmx.core.context import deploy_error, settings_of
from backupmx.core.errors import BackupMXError
from backupmx.core.pyinfra_glue import RunEnd, at_exit, executing
from backupmx.core.relayhost import postfix_size
from backupmx.core.report import CHANGE, FAIL, PASS
from backupmx.core.review import show
from backupmx.dns import check as dnscheck
from backupmx.lifecycle.budget import SpendCheck, drill_spend, recorder
from backupmx.lifecycle.drill.mailbox import drain
from backupmx.lifecycle.drill.messages import large_size
from backupmx.lifecycle.drill.report import render, skip_rest
from backupmx.lifecycle.drill.run import Drill
from backupmx.lifecycle.drill.settings import load_failover
from backupmx.lifecycle.drill.signals import signals_flag
from backupmx.providers.quota import quota
from facts.mailhost import PostscreenListeners
from operations.mailhost import mailhost_settings, one_mailhost_run
from operations.mailhost_proof import prove_live
from operations.mailhost_state import listeners_args


def current_drill(target) -> Drill:
    """The drill of the pyinfra run in progress (one mail host); its report is printed at exit."""
    return one_mailhost_run("drill", "the failover drill takes one mail host at a time", target, _start_drill)


def _start_drill(target) -> Drill:
    try:
        settings = settings_of(target.data)
        mailhost = mailhost_settings(target)
        failover = load_failover(target.data.get("failover"), mailhost, settings.domains[0].name,
                                 metered=settings.provider.name if quota(settings) else "")
        # The budget, read now: a drill whose small messages would not fit is refused before anything runs.
        refusal = drill_spend(_spend_check(settings, failover), failover.probes, failover.spam_message, 0).refusal
    except BackupMXError as error:
        raise deploy_error(error, target.name) from None
    if refusal:
        raise DeployError(f"{target.name}: failover drill {refusal}")
    drill = Drill(settings, mailhost, failover, target.name)
    drill.record = recorder(settings, drill.run_id)
    at_exit(partial(_print_report, drill))
    return drill


def _spend_check(settings, failover) -> SpendCheck:
    """This tool's share of the provider's budget for the drill's recipient domain (the one the provider counts)."""
    return SpendCheck.read(settings, failover.recipient.rsplit("@", 1)[1])


def _large_bytes(drill: Drill) -> int:
    """The large message's size as far as known now: shrunk to the primary's limit once that is read."""
    wanted = drill.failover.large_message_bytes
    if not wanted or drill.primary_size_limit is None:
        return wanted
    return large_size(wanted, drill.primary_size_limit).size


def _check_budget(drill: Drill, log) -> None:
    """Step 1: the drill's messages against this tool's share of the budget, read again now; the large
    message is left out if it would go over, the drill refused if the rest would."""
    f = drill.failover
    try:
        spend = drill_spend(_spend_check(drill.settings, f), f.probes, f.spam_message, _large_bytes(drill))
    except BackupMXError as error:
        drill.add("1", "provider budget", FAIL, str(error), "fix the spend ledger (docs/budget.md)")
        return
    if spend.refusal:
        drill.add("1", "provider budget", FAIL, spend.refusal, "wait until it frees up, or lower failover.probes")
        return
    if spend.left_out:
        drill.failover = replace(f, large_message_bytes=0, large_off=spend.left_out)
        log(f"failover 1: {spend.left_out}")
    drill.add("1", "provider budget", PASS, spend.line)


def _print_report(drill: Drill, end: RunEnd) -> None:
    if not end.executed:
        drill.report.title += " (review: nothing was stopped or sent)"
        click.echo(drill.report.render().rsplit("\n", 1)[0])
    else:
        skip_rest(drill, "not run: an earlier step failed")
        click.echo(render(drill))
    drill.close()


def _log(message: str, log_func=logger.info) -> None:
    host.log(message, log_func)


def _plan(drill: Drill, key: str, title: str, evidence: str) -> None:
    if not executing():
        drill.add(key, title, CHANGE, evidence)


def remote_runner(target):
    """``argv -> (ok, stdout lines, stderr)`` on the mail host, over its pyinfra connection."""

    def run(argv):
        command = StringCommand(*[QuoteString(part) for part in argv])
        ok, output = target.run_shell_command(command, print_output=False, print_input=False)
        return ok, list(output.stdout_lines), output.stderr

    return run


def _preflight(state, host, drill):  # (state, host): pyinfra passes them to a FunctionCommand
    log = lambda message: host.log(message, logger.info)
    _check_budget(drill, log)
    dns_ok = drill.check_dns(log)
    dns_ok = drill.check_size_limit() and dns_ok
    try:
        proof = prove_live(drill.mailhost, drill.settings.relay_cidrs, drill.domain, target=host)
        live, evidence = proof.live, proof.evidence()
    except BackupMXError as error:
        live, evidence = False, str(error)
    drill.record_whitelist(live, evidence)
    if not (dns_ok and live):
        failed = next(c for c in drill.report.checks if c.status == FAIL)
        host.log(f"failover 1: refused: {failed.title}: {failed.evidence}; the primary was not stopped",
                 logger.error)
        return False
    host.log("failover 1: backup MX live in DNS, whitelist + exemption live", logger.info)
    return True


def _down_window(state, host, drill):
    log = lambda message: host.log(message, logger.info)
    with signals_flag(drill, log):
        ok = drill.down_window(remote_runner(host), log)
    if not ok:
        host.log("failover 2-5: failed (report at the end); the primary is "
                 f"{'STILL DOWN' if drill.primary_down else 'up again'}", logger.error)
    return ok


def _verify(state, host, drill):
    log = lambda message: host.log(message, logger.info)
    with signals_flag(drill, log):
        try:
            drain(drill, remote_runner(host), log)
        except BackupMXError as error:
            drill.add("6", "provider queue drained", FAIL, str(error))
    if drill.report.blocked:
        host.log("failover 6-7: failed (report at the end)", logger.error)
        return False
    return True


def _read_size_limit(drill: Drill) -> None:
    """The primary's message_size_limit (the large message stays under it), read with stage 3's fact."""
    if not drill.failover.large_message_bytes:
        return
    listeners = host.get_fact(PostscreenListeners, **listeners_args(drill.mailhost))
    if not listeners["postconf"]:
        drill.primary_size_limit, drill.size_error = None, listeners["error"]
        return
    drill.primary_size_limit = postfix_size(listeners["main"].get("message_size_limit"))
    drill.size_error = "not a number" if drill.primary_size_limit is None else ""


@operation(is_idempotent=False)
def drill_preflight(drill: Drill):
    """
    Step 1: refuse unless the backup MX set is live in DNS and the whitelist is live; read the
    primary's message_size_limit (the large message stays under it).

    + drill: the run's ``backupmx.lifecycle.drill.run.Drill``
    """
    backup = drill.settings.backup_mx
    show(f"failover 1: would check the authoritative DNS of {drill.domain} lists "
          f"{', '.join(f'{backup.priority} {h}' for h in backup.hosts)} and prove the whitelist + exemption live", review_only=True)
    if not executing():
        try:
            answer = dnscheck.render(dnscheck.live_mx(drill.domain, drill.settings.dns_servers))
        except BackupMXError as error:
            answer = f"not readable now ({error})"
        show(f"failover 1: the authoritative DNS answers now: {answer}", review_only=True)
    _plan(drill, "1", "backup MX live in DNS", "checked when the drill runs")
    _read_size_limit(drill)
    _plan(drill, "1", "whitelist + exemption live", "proven when the drill runs")
    yield FunctionCommand(_preflight, (drill,), {})


def _show_messages(drill: Drill):
    """Step 3 of the review: the large and the spam message, and what the drill would spend of the budget."""
    f = drill.failover
    spend = None
    if not executing():
        try:
            spend = drill_spend(_spend_check(drill.settings, f), f.probes, f.spam_message, _large_bytes(drill))
        except BackupMXError as error:
            show(f"failover 3: the budget cannot be read: {error}", review_only=True)
    if f.large_message_bytes and spend is not None and spend.left_out:
        show(f"failover 3: would send no large message: {spend.left_out}", review_only=True)
    elif f.large_message_bytes:
        if drill.primary_size_limit is None:
            size = f"the primary's message_size_limit is not readable ({drill.size_error}): the drill would refuse"
        else:
            decision = large_size(f.large_message_bytes, drill.primary_size_limit)
            size = (f"{decision.size} bytes ({decision.note or 'the primary takes ' + str(drill.primary_size_limit)}"
                    f"); smaller if a backup announces a smaller SIZE")
        show(f"failover 3: would send a large message: {size}", review_only=True)
    elif f.large_off:
        show(f"failover 3: would send no large message: {f.large_off}", review_only=True)
    if f.spam_message:
        show("failover 3: would send a spam message (content scoring over 11): it must arrive tagged, never "
              "rejected", review_only=True)
    if spend is not None:
        show(f"failover 3: would spend {spend.spending}", review_only=True)
    return spend


@operation(is_idempotent=False)
def drill_down_window(drill: Drill):
    """
    Steps 2-5: stop the primary, send the probes, confirm them queued, start the primary (always).

    + drill: the run's ``backupmx.lifecycle.drill.run.Drill``
    """
    f = drill.failover
    hosts = drill.settings.backup_mx.hosts
    show(f"failover 2: would stop the primary mail path: {shlex.join(f.stop_command)} "
          f"(at most {f.window_seconds:.0f} s)", review_only=True)
    show(f"failover 3: would send {f.probes} DKIM-signed probe(s) from {f.sender_domain} to {f.recipient} via "
          f"{', '.join(hosts)}", review_only=True)
    spend = _show_messages(drill)
    show(f"failover 4: would wait up to {f.queue_seconds:.0f} s for each in the {drill.settings.provider.name} queue", review_only=True)
    show(f"failover 5: would start it again (always): {shlex.join(f.start_command)}; then {f.up_check} must accept", review_only=True)
    if spend is not None:
        _plan(drill, "1", "provider budget", f"would spend {spend.line}")
    _plan(drill, "2", "take the primary down", f"would run {shlex.join(f.stop_command)}")
    large = bool(f.large_message_bytes) and not (spend is not None and spend.left_out)
    extras = " + a large message" * large + " + a spam message" * f.spam_message
    _plan(drill, "3", "send probes", f"would send {f.probes}{extras} to {', '.join(hosts)}")
    _plan(drill, "4", "probes queued at the provider", "would check the provider's queue listing")
    _plan(drill, "5", "bring the primary back", f"would run {shlex.join(f.start_command)}")
    yield FunctionCommand(_down_window, (drill,), {})


@operation(is_idempotent=False)
def drill_verify(drill: Drill):
    """
    Steps 6-7: wait for the provider's queue to drain; check each probe in the mailbox.

    + drill: the run's ``backupmx.lifecycle.drill.run.Drill``
    """
    f = drill.failover
    show(f"failover 6: would wait up to {f.drain_seconds:.0f} s for the queue to drain", review_only=True)
    show(f"failover 7: would read {f.maildir} on {drill.host_name}: each message delivered once, no "
          f"R_SPF_*/DMARC_*, R_DKIM_ALLOW, relay address in Received, first attempt after primary-up; the large one "
          f"whole, the spam one tagged", review_only=True)
    show(f"failover 8: would remove the drill's messages from {f.maildir} (kept if the drill fails)", review_only=True)
    _plan(drill, "6", "provider queue drained", f"would wait up to {f.drain_seconds:.0f} s")
    _plan(drill, "7", "mailbox verdicts", f"would read {f.maildir}")
    yield FunctionCommand(_verify, (drill,), {})
