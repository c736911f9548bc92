"""Drift check: is everything still as the inventory wants it? Read-only, for cron.

    pyinfra -y inventory/production.py deploys/drift.py     # exit 0 "no drift", or exit 1 and one line per drift
    pyinfra inventory/production.py deploys/drift.py --dry  # the same: it never changes anything

One line per drift:

- ``mx`` — the apex MX set the authoritative servers publish, against the primaries
  and the backups at their preference (missing, wrong preference, foreign record);
- ``provider-cidrs`` — the provider's relay networks (its API, or the gate ledger
  where the API cannot tell) against ``relay_cidrs``;
- ``whitelist`` / ``exemption`` — per mail host, the postscreen table and listener
  options and the rspamd rule, against what stage 3 would write;
- ``monitoring`` — per monitoring host, the pushed files against the rendered ones;
- ``mta-sts`` — an enforce-mode policy that leaves an MX host out (the seed's
  "TXT published, no policy served" is printed as a note, not counted).

``--data drift_verbose=true`` also prints every check that passed.

A check that cannot be made (DNS or the provider not answering, a host
unreachable) prints ``UNKNOWN`` and counts as drift: cron must hear about it.
"""

from pyinfra import host, inventory

from backupmx.lifecycle import drift as dr
from operations.drift import (
    controller_findings,
    current_drift_run,
    mailhost_findings,
    monitoring_findings,
)
from operations.mailhost import is_mailhost
from operations.monitoring import is_monitoring_host

run = current_drift_run()

if "controller" in host.groups:
    run.add(controller_findings(run.settings))
elif not inventory.get_group("controller", []) and not run.findings_for_controller_noted:
    run.findings_for_controller_noted = True
    run.add([dr.Finding("mx", "inventory", dr.UNKNOWN, "the inventory has no `controller` group: DNS and the "
                        "provider were not checked; add controller = [(\"@local\", _settings)]")])

if is_mailhost(host):
    run.add(mailhost_findings(run.settings))

if is_monitoring_host(host):
    run.add(monitoring_findings(run.settings))

run.finish(host.name)
