"""The gate report's outage coverage (gate G2's figure) on each mail host of deploys/backupmx.py.

Read-only and informational: the mail host's Postfix log gives the volume it received
per day (the ``MailLogVolume`` fact, one summary line per day), and the provider's
quota what an outage may relay (``backupmx.gates.outage``, docs/budget.md). A provider
without a quota reads nothing. A log that cannot be read is a warning row, never a
failed host.
"""

from __future__ import annotations

from pyinfra import host

from backupmx.gates.outage import coverage_check
from backupmx.mailhost.maillog import default_log
from backupmx.mailhost.model import MailHost
from backupmx.providers.quota import quota
from facts.mailhost import facts_args
from facts.maillog import MailLogVolume


def report_outage_coverage(run, host_name: str, mailhost: MailHost) -> None:
    """Add G2's "outage covered by the quota" row of one mail host to the run's gate report."""
    if quota(run.settings) is None:
        return
    volume = host.get_fact(MailLogVolume, mail_log=mailhost.mail_log, config_dir=mailhost.postfix_config_dir,
                           default=default_log(mailhost), _ignore_errors=True, **facts_args(mailhost))
    check = coverage_check(run.settings, host_name, volume)
    if check is not None:
        run.report.checks.append(check)
