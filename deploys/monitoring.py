"""Monitoring and runbook (seed changes 4 and 5): push the probe and alert files, render the docs.

    pyinfra inventory/production.py deploys/monitoring.py --dry   # review: unified diff of every file
    pyinfra inventory/production.py deploys/monitoring.py         # push, validate, render the runbook

On each host of the inventory's ``monitoring`` group: the blackbox_exporter modules
(MX-set drift guard, SMTP probe of the backups), the Prometheus alert rules and the
scrape jobs, rendered from the inventory, into ``monitoring.dir``; validated in
place (blackbox_exporter --config.check, promtool check rules/config) before they
replace the old files, which come back on any failure. On the control machine the
same files are validated first when the validators are installed here, and the
runbook and architecture page are rendered (``monitoring.runbook``,
``monitoring.architecture``). Changes nothing on the mail hosts or in DNS; needs no
secrets. See docs/monitoring.md.
"""

import click
from pyinfra import host

from backupmx.core.context import deploy_error, run_value, settings_of
from backupmx.core.errors import BackupMXError
from backupmx.core.plan_log import file_changes
from backupmx.core.pyinfra_glue import at_exit
from backupmx.lifecycle.deploy.summary import files_summary_lines
from operations.monitoring import is_monitoring_host, monitoring_stage


def _last_lines(title: str) -> bool:
    # The run's last lines, after every diff and pyinfra's table: what changed, or would.
    at_exit(lambda end: click.echo("\n".join(files_summary_lines(title, end, file_changes()))))
    return True


if is_monitoring_host(host):
    try:
        settings = settings_of(host.data)
    except BackupMXError as error:
        raise deploy_error(error) from None
    names = ", ".join(domain.name for domain in settings.domains)
    run_value("monitoring_last_lines", lambda: _last_lines(f"backupmx monitoring: {names}"))
    summary = monitoring_stage(settings)
    host.log(f"monitoring: {summary}")
