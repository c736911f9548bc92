"""Add the backup MX, stage by stage; the gate sequence is the code's order.

    pyinfra inventory/production.py deploys/backupmx.py --dry   # review: gates + diff
    pyinfra inventory/production.py deploys/backupmx.py         # go live

Review runs are ``--dry`` without ``-y``: with ``-y`` pyinfra skips change
detection and would show no diff.
"""

from pyinfra import host, inventory, logger
from pyinfra.api import DeployError

from backupmx.core.report import FAIL
from backupmx.lifecycle.deploy.run import current_run
from operations.budget import report_outage_coverage
from operations.dns import backup_mx_records
from operations.mailhost import is_mailhost, mailhost_settings, relay_access, verify_live
from operations.mailhost_proof import assess_mailhost, report_mailhost, start_reads
from operations.monitoring import is_monitoring_host, monitoring_stage, prepare_monitoring
from operations.provider import provider_domain_reenabled
from operations.relayhost import assess_relayhost, relay_config, relay_settings, verify_relay
from operations.stages import boundary

# Every mail host of the inventory, connected or not: --limit cannot shrink what
# the ordering guard asks to be proven.
mailhost_names = [target.name for target in inventory if is_mailhost(target)]

# Stage 0 for the mail hosts: every mail host's `mailhost` data is validated here,
# whichever host is prepared first, so bad data stops the run before Vault or a
# gate is contacted (the run's settings were validated before pyinfra connected: config.py).
mailhost_data = {target.name: mailhost_settings(target) for target in inventory if is_mailhost(target)}
# Stages 0 (inventory data) and 1 (secrets): once per run, whatever the host.
run = current_run()
relay_cidrs = run.settings.relay_cidrs
probe_domain = run.settings.domains[0].name
# Provider selfhosted: the relay hosts (the inventory's `relay` group) are the
# backup MX this deploy configures; their `relayhost` data is validated here too.
# With another provider they take no part (nothing is read or changed on them).
relay_names = run.settings.relay_hosts
domain_names = [domain.name for domain in run.settings.domains]
if relay_names:
    relay_data = {target.name: relay_settings(target) for target in inventory if target.name in relay_names}

if run.first_pass():
    # Stage 2: gates G1-G4, read-only; then stage 5, read-only: the record plan per
    # domain, quota and MTA-STS checks. Both run while the hosts below are assessed,
    # and every mail host is read meanwhile (each on its own connection).
    run.start_run_checks([target.name for target in inventory if is_monitoring_host(target)])
    start_reads(mailhost_data, [target for target in inventory.get_active_hosts() if is_mailhost(target)],
                relay_cidrs, probe_domain)

# Stages 3-4, read-only part, on each mail host: its `mailhost` data (bad data
# stops here, nothing contacted), what stage 3 would change, and, when nothing,
# the proof that the whitelist and the exemption are live already.
if is_mailhost(host):
    mailhost = mailhost_data[host.name]
    mailhost_assessment = assess_mailhost(mailhost, relay_cidrs, probe_domain)
    report_mailhost(run, host.name, mailhost_assessment)
    # Gate G2's figure: how long an outage the provider's quota covers at this host's volume.
    report_outage_coverage(run, host.name, mailhost)

# Relay stage, read-only part, on each relay host: gates G1, G2, G4 of this
# provider are checks of the relay itself; a relay not configured yet is a
# planned change (3r), the proof that it is live already is 4r.
if host.name in relay_names:
    relay = relay_data[host.name]
    relay_assessment = assess_relayhost(relay, domain_names, relay_cidrs, run.relay_rolled_back())
    run.add_relay_rows(host.name, relay_assessment.rows, relay_assessment.message_size_limit)

# Stage 6, read-only part, on each monitoring host: render and validate the files
# here while the mail hosts are assessed; a problem is a failed row of the report.
monitoring_prepared = None
if is_monitoring_host(host):
    try:
        monitoring_prepared = prepare_monitoring(run.settings)
    except DeployError as error:
        run.report.add("6", "monitoring files", FAIL, str(error))
    except Exception as error:  # never raise before the report: the other hosts wait for this one
        logger.debug("stage 6 preparation failed", exc_info=True)
        run.report.add("6", "monitoring files", FAIL, f"unexpected error: {type(error).__name__}: {error}")

# The whole report, once, after every host's assessment; a failed gate stops here.
run.print_report_when_all_assessed(host.name, {target.name for target in inventory.get_active_hosts()})

if host.name in relay_names:
    # Relay stage, before stage 3 and the stage-5 boundary: configure the relay
    # (catch-all, 4xx only, queue lifetime, relays only to the primary over TLS),
    # then prove it live. Stage 5 refuses unless every relay host is proven.
    relay_config(
        name="Relay stage: configure the store-and-forward relay",
        relay=relay,
        domains=domain_names,
    )
    if relay_assessment.proof is not None:
        run.relay_proofs.record(host.name, relay_assessment.proof.live, relay_assessment.proof.evidence())
    else:
        verify_relay(
            name="Relay stage: prove the relay accepts, queues and forwards only to the primary",
            relay=relay,
            domains=domain_names,
            record=run.relay_proofs.record,
        )

if is_mailhost(host):
    # Stage 3: the exemption, then the whitelist (relay_access says why in that
    # order); each is one transaction on the mail host: files swapped atomically,
    # validated (postfix check, rspamadm configtest, postmap probes) before any
    # reload, the previous files restored on failure.
    relay_access(mailhost=mailhost, relay_cidrs=relay_cidrs)
    # Stage 4: the ordering guard's proof. Proven while preparing if stage 3 has
    # nothing to change; otherwise checked at execution, after stage 3.
    if mailhost_assessment.proof is not None:
        run.mailhost_proofs.record(host.name, mailhost_assessment.proof.live, mailhost_assessment.proof.evidence())
    else:
        verify_live(
            name="Stage 4: prove the whitelist and exemption are live",
            mailhost=mailhost,
            relay_cidrs=relay_cidrs,
            domain=probe_domain,
            record=run.mailhost_proofs.record,
        )

# Every host passes here: stage 5 cannot start before stages 3-4 (and the relay
# stage) ended everywhere.
boundary(name="Stages 3-4 finished on every mail host", stage="stages 3-4")

if "controller" in host.groups:
    # G1's planned change, if any: a domain this tool's rollback disabled is
    # enabled again at the provider before its MX records go in (a failure here
    # fails the controller: stage 5 then publishes nothing).
    for domain in run.settings.domains:
        if domain.name in run.reenable:
            provider_domain_reenabled(
                name=f"G1: enable {domain.name} again at the provider",
                run=run,
                domain=domain,
            )
    # Stage 5 refuses unless stage 4 proved every mail host of the inventory
    # (and, with provider selfhosted, the relay stage every relay host).
    for domain in run.settings.domains:
        backup_mx_records(
            name=f"Stage 5: backup MX records for {domain.name}",
            run=run,
            domain=domain,
            mailhost_names=mailhost_names,
        )

# Stage 6, after the records exist: a drift probe pushed earlier would alert on
# the MX set it is about to see change.
boundary(name="Stage 5 finished", stage="stage 5")
monitoring_stage(run.settings, monitoring_prepared, after=run.all_published)
