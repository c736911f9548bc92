"""The run's own rows of deploys/backupmx.py's gate report, in words (stages 0, 1, 3r, 5, 6).

``Run`` (backupmx.lifecycle.deploy.run) reads; these functions say what it read. The
mail hosts' rows are ``operations.mailhost_proof.report_mailhost``'s, the relay hosts'
``operations.relayhost.assess_relayhost``'s, the gates' ``backupmx.gates``'.
"""

from __future__ import annotations

from backupmx.core.errors import BackupMXError
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, WARN, Check, Report
from backupmx.core.settings import Settings
from backupmx.dns import render as mxrender
from backupmx.dns.stage import Assessment

DNS_TITLE = "DNS: backup MX records"


def title(settings: Settings) -> str:
    return f"backupmx gate report: {', '.join(domain.name for domain in settings.domains)}"


def inventory_row(settings: Settings) -> Check:
    """Stage 0: what the validated inventory data holds."""
    backup = settings.backup_mx
    relays = (f"; provider selfhosted: relay host(s) {', '.join(settings.relay_hosts)}"
              if settings.selfhosted else "")
    return Check("0", "inventory data", PASS,
                 f"{len(settings.domains)} domain(s); backups {', '.join(backup.hosts)} at "
                 f"{backup.priority}; {len(settings.relay_cidrs)} relay CIDR(s){relays}")


def secrets_row(settings: Settings, keys: list[str], error: BackupMXError | None) -> Check:
    """Stage 1: the secrets read up front, or why one could not be."""
    if error is not None:
        return Check("1", "secrets", FAIL, str(error))
    return Check("1", "secrets", PASS, f"{', '.join(keys)} from vault {settings.vault.secret_path}")


def dns_not_read_row() -> Check:
    return Check("5", DNS_TITLE, SKIP, "not read: an earlier stage failed")


def dns_unavailable_row(error: BackupMXError) -> Check:
    return Check("5", DNS_TITLE, FAIL, str(error))


def dns_rows(domain_name: str, assessment: Assessment | BackupMXError) -> list[Check]:
    """Stage 5, read-only: one domain's record plan, its MTA-STS decision and the plan's warnings."""
    heading = f"DNS {domain_name}"
    if isinstance(assessment, BackupMXError):
        return [Check("5", heading, FAIL, str(assessment))]
    plan = assessment.plan
    if assessment.refused:
        rows = [Check("5", heading, FAIL, assessment.refusal)]
    elif plan.changed:
        rows = [Check("5", heading, CHANGE, "; ".join(mxrender.diff(plan)) + " (after stage 4 proves every mail host)")]
    else:
        rows = [Check("5", heading, PASS, "backup MX records already published")]
    rows.append(Check("5", f"MTA-STS {domain_name}", assessment.mta_sts.status, assessment.mta_sts.reason))
    rows += [Check("5", heading, WARN, warning) for warning in plan.warnings]
    return rows


def relays_not_assessed_rows(relay_hosts, assessed: set[str]) -> list[Check]:
    """Relay hosts left out of this run (--limit): nothing checked them, so stage 5 will refuse."""
    return [Check("3r", f"relay host {name}", WARN, "not part of this run (--limit): not checked or configured; "
                  "stage 5 refuses until it is proven in the same run",
                  "run without --limit, or include the relay group")
            for name in relay_hosts if name not in assessed]


def monitoring_row(host_names: list[str]) -> Check:
    """Stage 6, read-only: where the monitoring files go."""
    if not host_names:
        return Check("6", "monitoring and runbook", SKIP, "no host in the inventory's monitoring group")
    return Check("6", "monitoring and runbook", PASS, f"validated files go to {', '.join(host_names)} after "
                 "stage 5; runbook rendered with live values")


def stop_line(report: Report) -> str:
    """The one line a blocked run stops with: its first failed row."""
    failed = next(check for check in report.checks if check.status == FAIL)
    return f"stage {failed.key} ({failed.title}) failed: {failed.evidence}"
