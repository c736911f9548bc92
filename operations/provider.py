"""Operations on the backup provider's account, run on the control machine (``@local``).

Accept-and-Hold for planned maintenance: read while the deploy is prepared (also
under ``--dry``), changed at execution in a Python callback, then read back.
"""

from __future__ import annotations

from functools import partial

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation

from backupmx.core.context import once_per_run
from backupmx.core.errors import BackupMXError
from backupmx.core.review import show, stop
from backupmx.lifecycle.deploy.run import take_run_lock
from backupmx.lifecycle.maintenance import REMINDER, Maintenance, parse_action
from backupmx.providers.base import ManualStepRequired


def current_maintenance(data) -> Maintenance:
    """The maintenance run of the pyinfra run in progress (settings validated once)."""
    return once_per_run("maintenance", data, partial(_start_maintenance, data=data))


def _start_maintenance(settings, data) -> Maintenance:
    # Changing the hold serialises with backupmx.py and rollback.py on the same
    # domains; reading it does not (a status check must work while they run).
    if parse_action(data.get("hold")) != "status":
        take_run_lock(settings, data)
    return Maintenance(settings)


def _set_hold(state, host, maintenance, domain, on) -> bool:  # pyinfra calls it with (state, host, ...)
    try:
        after = maintenance.set_hold(domain, on)
    except ManualStepRequired as manual:
        host.log(f"Accept-and-Hold {domain}: not changed: {manual}", log_func=logger.error)
        return False
    except BackupMXError as error:
        steps = maintenance.provider_steps("hold_on" if on else "hold_off", domain)
        host.log(f"Accept-and-Hold {domain}: not changed: {error}; by hand: {'; '.join(steps)}",
                 log_func=logger.error)
        return False
    host.log(f"Accept-and-Hold is now {'ON' if after.value else 'off'} for {domain} ({after.evidence})", logger.info)
    host.log(REMINDER["on" if after.value else "off"], logger.warning if after.value else logger.info)
    return True


@operation(is_idempotent=False)
def accept_and_hold(maintenance, domain, on: bool):
    """
    Turn the provider's Accept-and-Hold on or off for ``domain``.

    + maintenance: the run's ``backupmx.lifecycle.maintenance.Maintenance``
    + domain: the ``backupmx.core.settings.Domain``
    + on: ``True`` holds (accept and queue, deliver nothing), ``False`` releases

    The state is read first (nothing changes when it already is as wanted) and
    read back after the change. The ledger backend cannot change it: the step
    fails with the steps to take in the provider's console.
    """
    word = "on" if on else "off"
    try:
        hold = maintenance.hold(domain.name)
    except BackupMXError as error:
        steps = maintenance.provider_steps(f"hold_{word}", domain.name)
        yield from stop(f"Accept-and-Hold {domain.name}: cannot read the provider: {error}; or by hand: "
                         f"{'; '.join(steps)}")
        return
    if hold.known and hold.value is on:
        already = f"Accept-and-Hold is already {word} for {domain.name} ({hold.evidence})"
        show(already)
        show(REMINDER[word], log_func=logger.warning if on else logger.info)
        host.noop(already)
        return
    now = ("ON" if hold.value else "off") if hold.known else f"unknown: {hold.evidence}"
    show(f"Accept-and-Hold {domain.name}: turn it {word} (now {now})")
    yield FunctionCommand(_set_hold, (maintenance, domain.name, on), {})


@operation(is_idempotent=False)
def hold_status(maintenance, domain):
    """
    Report Accept-and-Hold and the provider's queue for ``domain``; changes nothing.

    + maintenance: the run's ``backupmx.lifecycle.maintenance.Maintenance``
    + domain: the ``backupmx.core.settings.Domain``
    """
    try:
        lines = maintenance.status(domain.name)
    except BackupMXError as error:
        yield from stop(f"Accept-and-Hold {domain.name}: cannot read the provider: {error}")
        return
    for line in lines:
        show(line)
    host.noop(lines[0])


def _reenable(state, host, run, domain) -> bool:  # pyinfra calls it with (state, host, ...)
    problem = run.reenable_domain(domain, lambda message: host.log(message, logger.info))
    if problem:
        host.log(problem, log_func=logger.error)
        return False
    return True


@operation(is_idempotent=False)
def provider_domain_reenabled(run, domain):
    """
    Enable ``domain`` again at the provider when this tool's own rollback disabled it.

    + run: the deploy's ``backupmx.lifecycle.deploy.run.Run``
    + domain: the ``backupmx.core.settings.Domain``

    Only for a domain gate G1 planned to re-enable (``Run.reenable``: the change
    log's last entry for it is the rollback's disable, and the provider still
    shows it disabled); at execution the provider and the log are read again. A
    failure fails the control machine, so stage 5 publishes nothing.
    """
    entry = run.reenable.get(domain.name)
    if entry is None:
        host.noop(f"{domain.name}: nothing to enable again at the provider")
        return
    show(f"G1: enable {domain.name} again at {run.settings.provider.name} (disabled by the rollback of "
          f"{entry.get('when', '?')}), before stage 5")
    yield FunctionCommand(_reenable, (run, domain.name), {})
