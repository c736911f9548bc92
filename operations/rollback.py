"""Rollback operations, run on the control machine (``@local``), in the order DNS → DNS check → provider.

Each operation reads while the deploy is prepared (also under ``--dry``) to show
what it would do, and acts at execution in a Python callback that re-reads first.
A step that fails fails the ``@local`` host, so the later steps do not run: the
provider is never touched while DNS may still point at it. The provider step
never fails: trouble there is a warning with the manual steps.
"""

from __future__ import annotations

from functools import partial

import click
from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation

from backupmx.core.context import once_per_run
from backupmx.core.errors import BackupMXError
from backupmx.core.pyinfra_glue import EXIT_INTERRUPTED, RunEnd, at_exit, exit_now
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, WARN
from backupmx.core.review import show
from backupmx.dns import check as dnscheck
from backupmx.lifecycle.deploy.run import take_run_lock
from backupmx.lifecycle.rollback import Rollback

STEPS = (("1", "remove backup MX {}"), ("2", "DNS without backups {}"), ("3", "disable {} at {}"))
# Steps 1-2 done, DNS clear, but a provider step is left for the operator: not 0
# (scripts and tired operators must not read "all done"), not 1 (nothing failed
# that matters for mail routing). docs/rollback.md, "Exit codes".
EXIT_MANUAL_STEP_LEFT = 2


def current_rollback(data) -> Rollback:
    """The rollback of the pyinfra run in progress: settings validated once, summary printed at exit."""
    return once_per_run("rollback", data, partial(_start_rollback, data=data))


def _start_rollback(settings, data) -> Rollback:
    take_run_lock(settings, data)
    rollback = Rollback(settings)
    # One table at the very end, whatever happened: pyinfra stops running a
    # failed host's operations, and the operator must still see every step.
    at_exit(partial(_print_summary, rollback))
    return rollback


def _print_summary(rollback: Rollback, end: RunEnd) -> None:
    executed = end.executed
    settings = rollback.settings
    for domain in settings.domains:
        for key, title in STEPS:
            title = title.format(domain.name, settings.provider.name)
            if not any((c.key, c.title) == (key, title) for c in rollback.report.checks):
                rollback.add(key, title, SKIP, "not run: an earlier step failed" if executed else "not planned")
    failed = set(end.failed_hosts)
    rollback.mailhost_reverts(failed, executed)
    rollback.report.checks.sort(key=lambda check: check.key)
    if end.interrupted:
        rollback.report.title += (" (INTERRUPTED: stopped by Ctrl-C" + ("" if executed else " before any change")
                                  + "; run the rollback again to finish it)")
        click.echo(rollback.report.render().rsplit("\n", 1)[0])
        click.echo(f"  => ROLLBACK INTERRUPTED: a step shown as done may not have run; run the rollback again "
                   f"(exit {EXIT_INTERRUPTED})")
    elif not executed:
        rollback.report.title += " (review: nothing was changed)"
    if not end.interrupted:
        click.echo(rollback.render() if executed else rollback.report.render().rsplit("\n", 1)[0])
    controllers = end.group("controller")
    others = sorted(name for name in failed if name not in rollback.revert_mailhosts and name not in controllers)
    if others:
        click.echo(f"  note: not reached or failed: {', '.join(others)}; steps 1-3 do not need them, but pyinfra "
                   f"exits 1 because of them (`--limit controller` leaves the other hosts out)")
    rollback.close()
    if executed and not failed and not end.interrupted and rollback.manual_steps_left():
        exit_now(EXIT_MANUAL_STEP_LEFT)


def _log_check(check) -> None:
    log_func = {FAIL: logger.error, WARN: logger.warning}.get(check.status, logger.info)
    host.log(f"rollback {check.key}: {check.title}: {check.status}: {check.evidence}", log_func)
    if check.next_step and check.status != PASS:
        host.log(f"rollback {check.key}: next: {check.next_step}", log_func)


def _on_controller() -> bool:
    # Other hosts take the steps only for pyinfra's ordering (deploys/rollback.py).
    return "controller" in (host.groups or [])


def _run_step(state, host, step, domain) -> bool:  # pyinfra calls it with (state, host, ...)
    check = step(domain, lambda message: host.log(message, logger.info))
    _log_check(check)
    return check.status != FAIL


@operation(is_idempotent=False)
def backup_mx_removed(rollback, domain):
    """
    Delete the backup MX records of ``domain`` in Cloudflare: only those, never a primary.

    + rollback: the run's ``backupmx.lifecycle.rollback.Rollback``
    + domain: the ``backupmx.core.settings.Domain``

    Deleted are the records this tool created (marked in their comment) and exact
    matches of the wanted backup records; any other MX record is reported, not
    touched. The zone is read again when the step runs.
    """
    if not _on_controller():
        return
    title = f"remove backup MX {domain.name}"
    try:
        plan = rollback.plan(domain)
    except BackupMXError as error:
        show(f"rollback 1: {domain.name}: cannot read the zone now: {error}", log_func=logger.warning)
        rollback.add("1", title, WARN, f"zone not readable while preparing: {error}")
        yield FunctionCommand(_run_step, (rollback.remove_records, domain), {})
        return
    for warning in plan.warnings:
        show(f"rollback 1: warning: {warning}", log_func=logger.warning)
    if not plan.deletes:
        kept = dnscheck.render(rollback.kept.get(domain.name, ()))
        rollback.add("1", title, PASS, f"no backup MX record in the zone (kept: {kept})")
        host.noop(f"no backup MX record of {domain.name} in Cloudflare")
        return
    for record in plan.deletes:
        show(f"rollback 1: - {record.render()}")
    rollback.add("1", title, CHANGE, "would delete " + ", ".join(r.render() for r in plan.deletes))
    yield FunctionCommand(_run_step, (rollback.remove_records, domain), {})


@operation(is_idempotent=False)
def dns_without_backups(rollback, domain):
    """
    Wait until every authoritative server of ``domain`` answers without the backup MX hosts.

    + rollback: the run's ``backupmx.lifecycle.rollback.Rollback``
    + domain: the ``backupmx.core.settings.Domain``

    Up to ``dns_wait_seconds``; the servers are ``dns_servers`` or the zone's NS.
    """
    if not _on_controller():
        return
    title = f"DNS without backups {domain.name}"
    backup = rollback.settings.backup_mx
    try:
        answer = dnscheck.live_mx(domain.name, rollback.settings.dns_servers)
    except BackupMXError as error:
        answer = None
        show(f"rollback 2: {domain.name}: cannot ask the authoritative servers now: {error}", log_func=logger.warning)
    if answer is not None and not any(mx[1] in backup.hosts for mx in answer):
        check = rollback.wait_dns(domain, lambda message: None)
        if check.status != FAIL:
            host.noop(f"the authoritative DNS of {domain.name} lists no backup MX: {dnscheck.render(answer)}")
            return
    show(f"rollback 2: wait until the authoritative DNS of {domain.name} lists no backup MX "
          f"(up to {rollback.settings.dns_wait_seconds} s)")
    rollback.add("2", title, CHANGE, "would wait for the authoritative DNS to drop the backups")
    yield FunctionCommand(_run_step, (rollback.wait_dns, domain), {})


@operation(is_idempotent=False)
def provider_domain_disabled(rollback, domain):
    """
    Disable ``domain`` at the backup provider, once DNS no longer points there.

    + rollback: the run's ``backupmx.lifecycle.rollback.Rollback``
    + domain: the ``backupmx.core.settings.Domain``

    With the ``api`` backend through the provider's API; with the ``ledger`` backend,
    or when the API cannot be reached, a warning with the steps to take by hand.
    """
    if not _on_controller():
        return
    title = f"disable {domain.name} at {rollback.settings.provider.name}"
    try:
        facts = rollback.provider().domain_facts(domain.name)
    except BackupMXError as error:
        facts = None
        reason = str(error)
    else:
        reason = facts.present.evidence if not facts.present.known else None
    if facts is not None and facts.present.value is False:
        rollback.add("3", title, PASS, f"{domain.name} is not in the account ({facts.present.evidence})")
        host.noop(f"{domain.name} is not in the {rollback.settings.provider.name} account")
        return
    if facts is not None and facts.enabled.known and facts.enabled.value is False:
        rollback.add("3", title, PASS, f"already disabled ({facts.enabled.evidence})")
        host.noop(f"{domain.name} is already disabled at {rollback.settings.provider.name}")
        return
    if reason:
        show(f"rollback 3: {domain.name}: the provider cannot be read now ({reason}); when this step runs it "
              f"tries again, else warns with the steps to take by hand", log_func=logger.warning)
        rollback.add("3", title, WARN, f"provider not readable while preparing: {reason}")
    else:
        show(f"rollback 3: disable {domain.name} at {rollback.settings.provider.name} "
              f"(enabled now: {facts.enabled.evidence}) once DNS no longer lists the backups")
        rollback.add("3", title, CHANGE, f"would disable {domain.name} (enabled now: {facts.enabled.evidence})")
    yield FunctionCommand(_run_step, (rollback.disable_provider, domain), {})
