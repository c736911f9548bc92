"""Monitoring of the backup MX (seed change 4), rendered from the model: pure, no I/O.

Three files, pushed to the inventory's ``monitoring`` hosts by ``operations.monitoring``:

- ``blackbox-backupmx.yml`` — blackbox_exporter modules: the MX-set drift guard
  (DNS) and an informational SMTP banner probe (TCP:25) of the backup hosts;
- ``backupmx-alerts.rules.yml`` — the Prometheus alert on MX-set drift (for 15m,
  naming the runbook), an alert when the drift guard is not scraped at all, a
  recording rule of the backup hosts' weekly SMTP availability (no paging), and the
  weekly canary's two alerts (a failing canary, a canary that has not run: its
  metrics come from node_exporter's textfile collector, ``canary_metrics``);
- ``prometheus-backupmx.yml`` — the scrape jobs that run those probes, as a
  Prometheus configuration file of its own (``promtool check config`` checks it
  and, through ``rule_files``, the rules).

Why one DNS module per wanted MX record. blackbox_exporter validates each answer RR
on its own: ``fail_if_none_matches_regexp`` passes as soon as *any* RR matches
*any* of its regexps, so one regexp per host cannot see a host that is missing;
``fail_if_not_matches_regexp`` says every RR matches, not that every host is
there; RE2 has no look-ahead to count. So each wanted record gets a module of
its own that fails when that record is absent (``fail_if_none_matches_regexp``
with the one record) or when the answer holds anything that is not a wanted
record (``fail_if_not_matches_regexp`` with all of them). The alert adds the
answer count (``probe_dns_answer_rrs``), which is what catches a duplicate
preference or an extra record the regexps would let by.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


from backupmx.core.errors import BackupMXError
from backupmx.core.settings import Domain, Settings
from backupmx.core.templates import render
from backupmx.monitoring import canary_metrics
from backupmx.monitoring.checks import check_blackbox_shape, check_rules_shape
from backupmx.monitoring.settings import BLACKBOX_FILE, RULES_FILE, SCRAPE_FILE, Monitoring

MX_JOB = "backupmx-mx"
SMTP_JOB = "backupmx-relay-smtp"
SMTP_MODULE = "backupmx_smtp_banner"
DRIFT_ALERT = "BackupMXSetDrift"
ABSENT_ALERT = "BackupMXProbeAbsent"
SMTP_RECORD = "backupmx:relay_smtp_up:avg7d"
RUNBOOK_NAME = "backup-mx"
ALERT_FOR = "15m"


@dataclass(frozen=True)
class MXRecord:
    domain: str
    priority: int
    host: str
    role: str  # "primary" or "backup"


def wanted_mx(domain: Domain, settings: Settings) -> list[MXRecord]:
    """The apex MX set the drift guard expects: every primary, then every backup."""
    records = [MXRecord(domain.name, mx.priority, mx.host, "primary") for mx in domain.primary_mx]
    records += [MXRecord(domain.name, settings.backup_mx.priority, host, "backup") for host in settings.backup_mx.hosts]
    return records


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def module_name(record: MXRecord) -> str:
    return f"backupmx_mx_{slug(record.domain)}__{slug(record.host)}"


def _name_re(name: str) -> str:
    # Host names hold only [a-z0-9.-]: the dot is the one character to escape,
    # in a form RE2 (blackbox) and Python's re read alike.
    return name.replace(".", r"\.")


def rr_regexp(record: MXRecord) -> str:
    """Matches blackbox's text of exactly this MX record (miekg/dns ``RR.String()``), any TTL."""
    return rf"(?i)^{_name_re(record.domain)}\.\s+\d+\s+IN\s+MX\s+{record.priority}\s+{_name_re(record.host)}\.$"


def set_regexp(records: Sequence[MXRecord]) -> str:
    """Matches any one of the wanted records of a domain, nothing else."""
    domain = records[0].domain
    choices = "|".join(rf"{record.priority}\s+{_name_re(record.host)}" for record in records)
    return rf"(?i)^{_name_re(domain)}\.\s+\d+\s+IN\s+MX\s+({choices})\.$"


@dataclass(frozen=True)
class DNSModule:
    name: str
    record: MXRecord
    present: str  # the regexp of its own record
    allowed: str  # the regexp of every wanted record of the domain
    expected: int  # how many records the answer must hold


def dns_modules(settings: Settings) -> list[DNSModule]:
    modules = []
    for domain in settings.domains:
        records = wanted_mx(domain, settings)
        allowed = set_regexp(records)
        modules += [DNSModule(module_name(record), record, rr_regexp(record), allowed, len(records))
                    for record in records]
    return modules


def smtp_targets(settings: Settings) -> list[tuple[str, str]]:
    """(backup host, host:port the TCP probe connects to): its override (sandbox) or host:smtp_port."""
    targets = []
    for host in settings.backup_mx.hosts:
        address, port = settings.backup_mx.smtp_endpoint(host)
        address = f"[{address}]" if ":" in address else address
        targets.append((host, f"{address}:{port}"))
    return targets


def _context(settings: Settings, monitoring: Monitoring) -> dict[str, Any]:
    modules = dns_modules(settings)
    domains = []
    for domain in settings.domains:
        records = wanted_mx(domain, settings)
        domains.append({
            "name": domain.name,
            "records": records,
            "expected": len(records),
            "modules": [module for module in modules if module.record.domain == domain.name],
            "set_text": ", ".join(f"{record.priority} {record.host}" for record in records),
        })
    return {
        "settings": settings,
        "monitoring": monitoring,
        "modules": modules,
        "domains": domains,
        "smtp_targets": smtp_targets(settings),
        "mx_job": MX_JOB,
        "smtp_job": SMTP_JOB,
        "smtp_module": SMTP_MODULE,
        "drift_alert": DRIFT_ALERT,
        "absent_alert": ABSENT_ALERT,
        "smtp_record": SMTP_RECORD,
        "runbook_name": RUNBOOK_NAME,
        "alert_for": ALERT_FOR,
        "rules_file": RULES_FILE,
        "blackbox_file": BLACKBOX_FILE,
        "canary": canary_metrics,
        "canary_not_run_hours": canary_metrics.NOT_RUN_AFTER_SECONDS // 3600,
    }


def render_blackbox(settings: Settings, monitoring: Monitoring) -> str:
    text = render("blackbox.yml.j2", **_context(settings, monitoring))
    problems = check_blackbox_shape(text, expected_modules=[m.name for m in dns_modules(settings)] + [SMTP_MODULE])
    if problems:  # a template bug: never push what would not work
        raise BackupMXError(f"rendered {BLACKBOX_FILE} is not a valid blackbox configuration: {problems[0]}")
    return text


def render_rules(settings: Settings, monitoring: Monitoring) -> str:
    text = render("backupmx-alerts.rules.yml.j2", **_context(settings, monitoring))
    problems = check_rules_shape(text)
    if problems:
        raise BackupMXError(f"rendered {RULES_FILE} is not a valid rule file: {problems[0]}")
    return text


def render_scrape(settings: Settings, monitoring: Monitoring) -> str:
    return render("prometheus-backupmx.yml.j2", **_context(settings, monitoring))


def render_all(settings: Settings, monitoring: Monitoring) -> dict[str, str]:
    """File name -> content of every file pushed to the monitoring host."""
    return {
        BLACKBOX_FILE: render_blackbox(settings, monitoring),
        RULES_FILE: render_rules(settings, monitoring),
        SCRAPE_FILE: render_scrape(settings, monitoring),
    }
