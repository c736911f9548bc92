"""The canary's operations (deploys/canary.py), run on the mail host, acting at execution.

Two operations, each one Python callback at execution (``FunctionCommand``):

- ``canary_send``: hand one canary to each backup MX host, from the host
  ``canary.send_from`` names (the mail host by default), over its SSH connection;
- ``canary_verify``: wait (bounded) for each in the mailbox (the ``MaildirMessages``
  fact), read the provider's queue to name a failing hop, judge every delivered
  copy and delete the canaries.

The report is printed once at exit whatever happened, and the metrics file is
written then (also after a failure), like the failover drill's report.
"""

from __future__ import annotations

from functools import partial

import click
from pyinfra import logger
from pyinfra.api import DeployError, FunctionCommand, QuoteString, StringCommand, operation
from pyinfra.api.exceptions import ConnectError

from backupmx.core.context import deploy_error, settings_of
from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.core.pyinfra_glue import RunEnd, at_exit, inventory_host
from backupmx.core.review import show
from backupmx.lifecycle.budget import SpendCheck, canary_spend, per_domain, recorder
from backupmx.lifecycle.canary.run import CanaryRun, by_message_id
from backupmx.lifecycle.canary.settings import load_canary
from backupmx.lifecycle.canary.verdict import MESSAGE_ID_PREFIX
from facts.maildir import MaildirMessages
from facts.mailhost import facts_args
from operations.mailhost import mailhost_settings, one_mailhost_run

COMMAND_TIMEOUT = 90


def current_canary(target) -> CanaryRun:
    """The canary of the pyinfra run in progress (one mail host); its report is printed at exit."""
    return one_mailhost_run("canary", "the canary reads one mail host's mailbox at a time", target, _start)


def _start(target) -> CanaryRun:
    try:
        settings = settings_of(target.data)
        mailhost = mailhost_settings(target)
        canary = load_canary(target.data.get("canary"), settings)
        if canary.send_from is not None and inventory_host(canary.send_from) is None:
            raise ConfigError("canary.send_from", f"{canary.send_from!r} is not a host of this inventory",
                              "name an inventory host with outbound port 25, or leave it out (the mail host)")
    except BackupMXError as error:
        raise deploy_error(error, target.name) from None
    run = CanaryRun(settings, mailhost, canary, target.name)
    # The provider's budget, read now: a run that would go over this tool's share stops here, nothing sent.
    refusal = _budget(run)
    if refusal:
        raise DeployError(f"{target.name}: canary {refusal}")
    run.record = recorder(settings, run.run_id)
    at_exit(partial(_finish, run))
    return run


def _budget(run: CanaryRun) -> str:
    """Fill the run's budget lines from the spend ledger read now; the refusal, or ""."""
    counts = per_domain(run.canaries)
    try:
        checks = {domain: SpendCheck.read(run.settings, domain) for domain in counts}
    except BackupMXError as error:
        return f"refused, nothing sent: {error}"
    run.budget_lines, refusal = canary_spend(checks, counts)
    return refusal


def _finish(run: CanaryRun, end: RunEnd) -> None:
    if not end.executed:
        click.echo("\n".join([run.report.title + " (review: nothing was sent)", *run.plan_lines()]))
        run.close()
        return
    if len(run.verdicts) < len(run.canaries):
        run.judge_all()
    click.echo(run.render())
    if end.interrupted or run.budget_refusal:
        # A run cut short (or refused) proves nothing either way: the metrics keep the last complete run.
        click.echo(f"  metrics not written: {'the run was interrupted' if end.interrupted else 'nothing was sent'}")
        run.close()
        return
    try:
        path = run.write_metrics()
        if path:
            click.echo(f"  metrics: {path}")
    except OSError as error:
        click.echo(f"  metrics NOT written to {run.config.metrics_file}: {error.strerror}")
    run.close()


def _log(target, message: str) -> None:
    target.log(message, logger.info)


def runner(target):
    """``argv -> (ok, stdout lines, stderr)`` on ``target`` over its SSH connection (connected if
    ``--limit`` left it out); a broken connection is one ``BackupMXError`` line."""

    def run(argv):
        if not target.connected:
            try:
                target.connect(reason="canary", show_errors=False, raise_exceptions=True)
            except ConnectError as error:
                raise BackupMXError(f"{target.name}: cannot connect over SSH ({error})") from None
        command = StringCommand(*[QuoteString(part) for part in argv])
        try:
            ok, output = target.run_shell_command(command, print_output=False, print_input=False,
                                                  _timeout=COMMAND_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - a dropped connection or a timeout: one line
            raise BackupMXError(f"{target.name}: {argv[0]} did not complete ({type(error).__name__})") from None
        return ok, list(output.stdout_lines), output.stderr

    return run


def _send(state, host, run: CanaryRun):  # (state, host): pyinfra passes them to a FunctionCommand
    refusal = _budget(run)  # read again: another run may have spent since this one was prepared
    if refusal:
        run.refuse(refusal)
        host.log(f"canary: {refusal}", logger.error)
        return False
    sender = inventory_host(run.config.send_from) if run.config.send_from else host
    run.send_all(runner(sender), partial(_log, host))
    return True  # a refusal is a row of the report, judged after the wait


def _mailbox(target, run: CanaryRun):
    try:
        found = target.get_fact(MaildirMessages, maildir=run.config.maildir, prefix=MESSAGE_ID_PREFIX,
                                **facts_args(run.mailhost))
    except Exception as error:  # noqa: BLE001 - e.g. the container is down: one line
        raise BackupMXError(f"cannot read the mailbox {run.config.maildir} on {target.name} "
                            f"({type(error).__name__})") from None
    if not found["present"]:
        raise BackupMXError(f"canary.maildir {run.config.maildir} is not a Maildir on {target.name} "
                            "(no new/ or cur/ in it)")
    return by_message_id(found["messages"])


def _delete(target, run: CanaryRun, paths: list[str]) -> None:
    ok, _, stderr = runner(target)(run.mailhost.in_target(["rm", "-f", "--", *paths]))
    if not ok:
        raise BackupMXError(f"rm on {target.name} failed: {(stderr.strip().splitlines() or ['no error output'])[-1]}")


def _verify(state, host, run: CanaryRun):
    log = partial(_log, host)
    try:
        mailbox = run.wait(partial(_mailbox, host, run), log)
    except BackupMXError as error:
        run.mailbox_error = str(error)
        run.judge_all()
        host.log(f"canary: {error}", logger.error)
        return False
    run.judge_all()
    run.clean_up(mailbox, partial(_delete, host, run), log)
    if run.failed:
        host.log("canary: FAILED (report at the end)", logger.error)
        return False
    return True


@operation(is_idempotent=False)
def canary_send(run: CanaryRun):
    """
    Hand one uniquely tagged canary to each backup MX host, for each domain.

    + run: the run's ``backupmx.lifecycle.canary.run.CanaryRun``

    **Example:**

    .. code:: python

        canary_send(name="Canary 1: one message to each backup MX host", run=current_canary(host))
    """
    for line in run.plan_lines()[:-1]:
        show(line, review_only=True)
    yield FunctionCommand(_send, (run,), {})


@operation(is_idempotent=False)
def canary_verify(run: CanaryRun):
    """
    Wait for each canary in the mailbox; judge it, name the failing hop, delete it.

    + run: the run's ``backupmx.lifecycle.canary.run.CanaryRun``

    **Example:**

    .. code:: python

        canary_verify(name="Canary 2: delivered, judged and deleted", run=current_canary(host))
    """
    show(run.plan_lines()[-1], review_only=True)
    yield FunctionCommand(_verify, (run,), {})
