"""Operations on the domain's DNS at Cloudflare, run on the control machine (``@local``)."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation

from backupmx.core.errors import BackupMXError
from backupmx.dns import render as mxrender


@operation()
def backup_mx_records(run, domain, mailhost_names):
    """
    Publish the backup MX records of ``domain``: only after stage 4 proved the
    postscreen whitelist and rspamd exemption live on every mail host in this run.

    + run: the deploy's ``backupmx.lifecycle.deploy.run.Run`` (holds the plan made while preparing)
    + domain: the ``backupmx.core.settings.Domain`` to change
    + mailhost_names: every mail host of the inventory; each must be proven live

    Creates come before deletes, so the MX set never shrinks mid-change; the
    primary record is never part of a plan. The plan shown (also under ``--dry``)
    is made again from the zone as it is when the change runs.

    **Example:**

    .. code:: python

        backup_mx_records(
            name="Stage 5: backup MX records for viktorbarzin.me",
            run=run,
            domain=domain,
            mailhost_names=["mail.viktorbarzin.me"],
        )
    """
    assessment = run.dns.plans[domain.name]
    if not assessment.plan.changed:
        run.dns.publish(domain.name)
        host.noop(f"backup MX records of {domain.name} are already published")
        return
    for line in mxrender.diff(assessment.plan):
        host.log(line, logger.info)
    yield FunctionCommand(_publish_when_proven, (run, domain, list(mailhost_names)), {})


def _publish_when_proven(state, host, run, domain, mailhost_names) -> bool:
    # The ordering guard: it is checked here, at execution, because only now do
    # stage 4's proofs from this very run exist. No flag skips it.
    unproven = run.mailhost_proofs.unproven(mailhost_names)
    if unproven:
        host.log(f"DNS {domain.name}: refused: whitelist and exemption not proven live on "
                 f"{', '.join(unproven)} in this run; nothing was changed in DNS", log_func=logger.error)
        return False
    # With provider selfhosted, every relay host of the inventory too: an MX record
    # must not send mail to a relay not proven, in this run, to queue and forward it.
    unproven = run.unproven_relays()
    if unproven:
        host.log(f"DNS {domain.name}: refused: relay not proven configured and live on relay host(s) "
                 f"{', '.join(unproven)} in this run; nothing was changed in DNS", log_func=logger.error)
        return False
    try:
        applied = run.dns_stage.apply(domain, lambda message: host.log(message, logger.info))
    except BackupMXError as error:
        host.log(str(error), log_func=logger.error)
        return False
    run.dns.publish(domain.name, mxrender.diff(applied) if applied.changed else None)
    return True
