"""The run of deploys/backupmx.py: settings, secrets, the gate report and the ordering guard's proofs.

pyinfra executes a deploy file once per host while preparing. Stages 0-2 are
about the run, not a host, so they happen once per pyinfra run (kept by
``backupmx.core.context``) and every host's pass through the deploy file gets the
same ``Run``. The report's rows are worded in ``backupmx.lifecycle.deploy.gate_report``.
"""

from __future__ import annotations

from collections.abc import Callable

import click
import gevent.event
from pyinfra import host as current_host

from backupmx.core import audit, lock
from backupmx.core.context import deploy_error, once_per_run
from backupmx.core.errors import BackupMXError
from backupmx.core.pyinfra_glue import RunEnd, at_exit, deploy_file, dry_run, one_line_error
from backupmx.core.report import CHANGE, FAIL, Report
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings
from backupmx.dns.stage import DNSStage
from backupmx.gates.checks import for_each_domain, g1_title, run_gates
from backupmx.gates.message_size import message_size_rows
from backupmx.lifecycle.deploy import gate_report
from backupmx.lifecycle.deploy.records import Assessed, DnsOutcome, HostProofs
from backupmx.lifecycle.deploy.summary import summary_lines
from backupmx.lifecycle.plan.output import PlanOutputs, plan_data, plan_outputs, write_plan
from backupmx.providers.registry import open_provider

CLOUDFLARE_TOKEN_KEY = "cloudflare_api_token"

# Rows of the stages about the run, not a host (stages 0-2).
RUN_LEVEL_KEYS = {"0", "1", "2", "G1", "G2", "G3", "G4"}
# How long a host's pass waits for the other hosts' assessments before the report.
REPORT_WAIT_SECONDS = 600


class Run:
    """One deploy run: its settings and secrets, the report, and what the run learns (the records of
    ``backupmx.lifecycle.deploy.records``), written through its methods by the deploy file and the
    operations."""

    def __init__(self, settings: Settings, plan_outputs: PlanOutputs | None = None):
        self.settings = settings
        self.secrets = SecretStore(settings.vault)
        self.report = Report(gate_report.title(settings))
        # --data plan_markdown / plan_json under --dry: the plan as documents (docs/ci.md).
        self.plan_outputs = plan_outputs or PlanOutputs()
        self.assessed = Assessed()
        self.mailhost_proofs = HostProofs()
        # Provider selfhosted: the relay stage's proof per relay host; stage 5 needs them all too.
        self.relay_proofs = HostProofs()
        self.dns = DnsOutcome()
        self.dns_stage: DNSStage | None = None
        # G1: domains this tool's rollback disabled, enabled again before stage 5 (change-log entries).
        self.reenable: dict[str, dict] = {}
        self._first_pass = True
        self._all_assessed = gevent.event.Event()
        self._run_checks: gevent.Greenlet | None = None
        self._report_printed = False

    def check_inventory(self) -> None:
        self.report.checks.append(gate_report.inventory_row(self.settings))

    def required_secrets(self) -> list[str]:
        """Keys read up front, so a missing one stops the run before anything is contacted."""
        provider = self.settings.provider
        return [CLOUDFLARE_TOKEN_KEY] + ([provider.key_secret] if provider.backend == "api" else [])

    def check_secrets(self) -> None:
        keys, error = self.required_secrets(), None
        try:
            for key in keys:
                self.secrets.get(key)
        except BackupMXError as failed:
            error = failed
        self.report.checks.append(gate_report.secrets_row(self.settings, keys, error))

    def check_gates(self) -> None:
        """Stage 2: G1-G4, read-only; every gate runs so the report shows them all.

        A domain this tool's own rollback disabled (the change log says so, and the
        provider still shows it disabled) is G1's planned change: kept in
        ``reenable`` for ``reenable_domain`` before stage 5.
        """
        rolled_back = {} if self.settings.selfhosted else {
            domain.name: entry for domain in self.settings.domains
            if (entry := audit.disabled_by_rollback(self.settings, domain.name)) is not None}
        rows = run_gates(self.settings, self.secrets, self.report, rolled_back=rolled_back)
        planned = {(row.title, row.status) for row in rows if row.key == "G1"}
        self.reenable = {name: entry for name, entry in rolled_back.items() if (g1_title(name), CHANGE) in planned}

    def relay_rolled_back(self) -> dict[str, dict]:
        """Provider selfhosted: per domain, the change-log entry of this tool's rollback that disabled it last."""
        return {domain.name: entry for domain in self.settings.domains
                if (entry := audit.disabled_by_rollback(self.settings, domain.name)) is not None}

    def reenable_domain(self, domain: str, log: Callable[[str], None]) -> str | None:
        """At execution: enable ``domain`` again at the provider (G1's planned change); None, or why not.

        Read again first: enabled meanwhile is nothing to do; disabled, it is enabled
        only if the change log still says this tool's rollback did it.
        """
        name = self.settings.provider.name
        try:
            provider = open_provider(self.settings, self.secrets)
            try:
                facts = provider.domain_facts(domain)
                if facts.enabled.known and facts.enabled.value is True:
                    log(f"{name}: {domain} is enabled already ({facts.enabled.evidence})")
                    return None
                if audit.disabled_by_rollback(self.settings, domain) is None:
                    return (f"{domain} is disabled at {name}, but the change log no longer says this tool's "
                            f"rollback did it: in the ACC enable {domain}, then run again")
                after = provider.set_enabled(domain, True)
            finally:
                provider.close()
        except BackupMXError as error:
            return (f"{name}: enabling {domain} failed: {error}; the MX records were not published; "
                    f"in the ACC enable {domain} (or fix the access), then run again")
        audit.append(self.settings, "provider.domain_enabled", domain,
                     {"enabled": facts.enabled.value}, {"enabled": after.value, "evidence": after.evidence})
        log(f"{name}: {domain} enabled again ({after.evidence})")
        return None

    def start_run_checks(self, monitoring_hosts: list[str]) -> None:
        """Stage 2 (gates) and stage 5's read-only part, in a greenlet of their own.

        They are about the run, not a host, and only wait on HTTP and DNS: run
        beside the mail hosts' facts (SSH) instead of before them. The report
        waits for them (``print_report_when_all_assessed``).
        """
        def checks() -> None:
            self.check_gates()
            self.assess_dns()
            self.report.checks.append(gate_report.monitoring_row(monitoring_hosts))

        self._run_checks = gevent.spawn(checks)

    def assess_dns(self) -> None:
        """Stage 5, read-only part: the record plan and MTA-STS decision per domain."""
        # Only the run-level stages count here: a mail host's row may be in the
        # report already (its assessment runs alongside), and does not stop this read.
        if any(check.status == FAIL for check in self.report.checks if check.key in RUN_LEVEL_KEYS):
            self.report.checks.append(gate_report.dns_not_read_row())
            return
        try:
            self.dns_stage = DNSStage(self.settings, self.secrets.get(CLOUDFLARE_TOKEN_KEY))
        except BackupMXError as error:
            self.report.checks.append(gate_report.dns_unavailable_row(error))
            return
        def assess(domain):
            try:
                return self.dns_stage.assess(domain)
            except BackupMXError as error:
                return error

        results = for_each_domain(assess, list(self.settings.domains))
        for domain, assessment in zip(self.settings.domains, results):
            if not isinstance(assessment, BackupMXError):
                self.dns.plans[domain.name] = assessment
            self.report.checks.extend(gate_report.dns_rows(domain.name, assessment))

    def all_published(self) -> bool:
        """Whether stage 5 ended well for every domain of the run: stage 6's monitoring expects the records."""
        return self.dns.all_published(domain.name for domain in self.settings.domains)

    def unproven_relays(self) -> list[str]:
        """Provider selfhosted: the relay hosts of the inventory (all, whatever --limit) not proven in this run."""
        return self.relay_proofs.unproven(self.settings.relay_hosts)

    def add_mailhost_rows(self, host_name: str, rows, message_size: int | None) -> None:
        """A mail host's rows (stages 3 and 4) and the message size limit its Postfix has."""
        for key, title, status, evidence, next_step in rows:
            self.report.add(key, title, status, evidence, next_step)
        self.assessed.mailhost(host_name, message_size)

    def add_relay_rows(self, host_name: str, rows, message_size: int | None) -> None:
        """A relay host's rows (gates G1, G2, G4 and its plan/proof), from ``assess_relayhost``."""
        self.report.checks.extend(rows)
        self.assessed.relay(host_name, message_size)

    def first_pass(self) -> bool:
        """True once per run: for the run-level reads a deploy file does on its first host."""
        first, self._first_pass = self._first_pass, False
        return first

    def print_report_when_all_assessed(self, host_name: str, host_names: set[str]) -> None:
        """Print the report once every host's pass has added its rows; stop if it is blocked.

        Each host's pass through the deploy file calls this after its read-only
        assessment; the last one to arrive prints the whole table, the others wait
        for it, so the report is complete and shown exactly once, before anything
        changes.
        """
        self.assessed.hosts.add(host_name)
        if self.assessed.hosts >= host_names:
            try:
                if self._run_checks is not None:
                    self._run_checks.get()  # re-raises what failed in there
            except Exception as error:
                # A failed row stops the other hosts' passes too (never leave them
                # waiting); this one shows the traceback.
                self.report.add("2", "gates and DNS assessment", FAIL, f"unexpected error: {type(error).__name__}")
                self._all_assessed.set()
                raise
            self.report.checks.extend(gate_report.relays_not_assessed_rows(self.settings.relay_hosts,
                                                                           self.assessed.relays))
            # Provider selfhosted, G2: needs every host's size, so only now.
            self.report.checks.extend(message_size_rows(self.assessed.primary_message_sizes,
                                                              self.assessed.relay_message_sizes))
            click.echo(self.report.render())
            self._report_printed = True
            self._all_assessed.set()
        elif not self._all_assessed.wait(timeout=REPORT_WAIT_SECONDS):
            missing = ", ".join(sorted(host_names - self.assessed.hosts))
            raise one_line_error(f"gave up waiting {REPORT_WAIT_SECONDS}s for the assessment of {missing}")
        if self.report.blocked:
            raise one_line_error(gate_report.stop_line(self.report))

    def finish(self, end: RunEnd) -> None:
        """At exit, once, whatever stopped the run: the plan documents of a --dry review where the
        user asked for them, then the verdict and what changed as the run's last lines."""
        data = plan_data(self.report, self.dns.plans, [domain.name for domain in self.settings.domains],
                         self.secrets.values_read())
        if not end.executed and self.plan_outputs:
            write_plan(self.plan_outputs, data)
        title = f"backupmx deploy: {', '.join(domain.name for domain in self.settings.domains)}"
        click.echo("\n".join(summary_lines(title, self.report, data, end, self._report_printed, self.dns.applied)))


def current_run() -> Run:
    """The run of the pyinfra state being prepared, made (stages 0 and 1) on first use."""
    return once_per_run("deploy", current_host.data, _start_run)


def _start_run(settings: Settings) -> Run:
    try:
        outputs = plan_outputs(current_host.data)
    except BackupMXError as error:
        raise deploy_error(error) from None
    take_run_lock(settings, current_host.data)
    run = Run(settings, outputs if dry_run() else None)
    at_exit(run.finish)
    run.check_inventory()
    run.check_secrets()
    return run


def take_run_lock(settings: Settings, data) -> None:
    """The per-domain locks (backupmx.core.lock), before any stage reads state to change it; not under --dry."""
    if dry_run():
        return
    try:
        wait = lock.parse_wait(data.get("lock_wait"))
        lock.acquire(settings.state_dir, [domain.name for domain in settings.domains], deploy_file(), wait,
                     sleep=gevent.sleep, log=current_host.log)
    except BackupMXError as error:
        raise deploy_error(error) from None

