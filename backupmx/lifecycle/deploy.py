"""One deploy run's shared context: settings, secrets and the gate report.

pyinfra executes a deploy file once per host while preparing. Stages 0-2 are
about the run, not a host, so they happen once per pyinfra ``State`` and every
host's pass through the deploy file gets the same ``Run``.
"""

from __future__ import annotations

import weakref
from typing import TypeVar

import click
import gevent.event
import gevent.lock
from pyinfra import host as current_host
from pyinfra.api import DeployError

from backupmx.core import lock
from backupmx.core.audit import deploy_name
from backupmx.core.context import once_per_state
from backupmx.core.errors import BackupMXError
from backupmx.core.relayhost import refuses_what_the_primary_takes
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, TODO, WARN, Report
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings
from backupmx.dns import render as mxrender
from backupmx.dns.stage import Assessment, DNSStage
from backupmx.gates.checks import for_each_domain, run_gates

CLOUDFLARE_TOKEN_KEY = "cloudflare_api_token"

_runs: "weakref.WeakKeyDictionary[object, Run]" = weakref.WeakKeyDictionary()
# pyinfra prepares hosts in parallel greenlets; a greenlet switches out during the
# Vault read, so making the Run must be serialised or each host would get its own.
_runs_lock = gevent.lock.BoundedSemaphore()
T = TypeVar("T")
# Rows of the stages about the run, not a host (stages 0-2).
RUN_LEVEL_KEYS = {"0", "1", "2", "G1", "G2", "G3", "G4"}
# How long a host's pass waits for the other hosts' assessments before the report.
REPORT_WAIT_SECONDS = 600


class Run:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.secrets = SecretStore(settings.vault)
        self.report = Report(self._title())
        self.reported = False
        self._first_pass = True
        self._assessed: set[str] = set()
        self._all_assessed = gevent.event.Event()
        self._run_checks: gevent.Greenlet | None = None
        # Stage 4's proof per mail host, filled in at execution time; stage 5
        # (DNS) refuses unless every mail host of the inventory is in here as live.
        self.mailhost_proofs: dict[str, tuple[bool, str]] = {}
        # Provider selfhosted: the relay stage's proof per relay host, the same way;
        # stage 5 also refuses unless every relay host of the inventory is in here.
        self.relay_proofs: dict[str, tuple[bool, str]] = {}
        self.relays_assessed: set[str] = set()
        # Postfix's message_size_limit per host, as read while preparing (None: not read).
        self.primary_message_sizes: dict[str, int | None] = {}
        self.relay_message_sizes: dict[str, int | None] = {}
        self.dns_stage: DNSStage | None = None
        self.dns: dict[str, Assessment] = {}

    def _title(self) -> str:
        names = ", ".join(domain.name for domain in self.settings.domains)
        return f"backupmx gate report: {names}"

    def check_inventory(self) -> None:
        settings = self.settings
        backup = settings.backup_mx
        relays = (f"; provider selfhosted: relay host(s) {', '.join(settings.relay_hosts)}"
                  if settings.selfhosted else "")
        self.report.add("0", "inventory data", PASS,
                        f"{len(settings.domains)} domain(s); backups {', '.join(backup.hosts)} at "
                        f"{backup.priority}; {len(settings.relay_cidrs)} relay CIDR(s){relays}")

    def required_secrets(self) -> list[str]:
        """Keys read up front, so a missing one stops the run before anything is contacted."""
        provider = self.settings.provider
        return [CLOUDFLARE_TOKEN_KEY] + ([provider.key_secret] if provider.backend == "api" else [])

    def check_secrets(self) -> None:
        keys = self.required_secrets()
        try:
            for key in keys:
                self.secrets.get(key)
        except BackupMXError as error:
            self.report.add("1", "secrets", FAIL, str(error))
            return
        self.report.add("1", "secrets", PASS, f"{', '.join(keys)} from vault {self.settings.vault.secret_path}")

    def check_gates(self) -> None:
        """Stage 2: G1-G4, read-only; every gate runs so the report shows them all."""
        run_gates(self.settings, self.secrets, self.report)

    def start_run_checks(self, monitoring_hosts: list[str]) -> None:
        """Stage 2 (gates) and stage 5's read-only part, in a greenlet of their own.

        They are about the run, not a host, and only wait on HTTP and DNS: run
        beside the mail hosts' facts (SSH) instead of before them. The report
        waits for them (``print_report_when_all_assessed``).
        """
        def checks() -> None:
            self.check_gates()
            self.assess_dns()
            self.report_monitoring_targets(monitoring_hosts)

        self._run_checks = gevent.spawn(checks)

    def assess_dns(self) -> None:
        """Stage 5, read-only part: the record plan and MTA-STS decision per domain."""
        # Only the run-level stages count here: a mail host's row may be in the
        # report already (its assessment runs alongside), and does not stop this read.
        if any(check.status == FAIL for check in self.report.checks if check.key in RUN_LEVEL_KEYS):
            self.report.add("5", "DNS: backup MX records", SKIP, "not read: an earlier stage failed")
            return
        try:
            self.dns_stage = DNSStage(self.settings, self.secrets.get(CLOUDFLARE_TOKEN_KEY))
        except BackupMXError as error:
            self.report.add("5", "DNS: backup MX records", FAIL, str(error))
            return
        def assess(domain):
            try:
                return self.dns_stage.assess(domain)
            except BackupMXError as error:
                return error

        results = for_each_domain(assess, list(self.settings.domains))
        for domain, assessment in zip(self.settings.domains, results):
            title = f"DNS {domain.name}"
            if isinstance(assessment, BackupMXError):
                self.report.add("5", title, FAIL, str(assessment))
                continue
            self.dns[domain.name] = assessment
            plan = assessment.plan
            if assessment.refused:
                self.report.add("5", title, FAIL, assessment.refusal)
            elif plan.changed:
                self.report.add("5", title, CHANGE,
                                "; ".join(mxrender.diff(plan)) + " (after stage 4 proves every mail host)")
            else:
                self.report.add("5", title, PASS, "backup MX records already published")
            self.report.add("5", f"MTA-STS {domain.name}", assessment.mta_sts.status, assessment.mta_sts.reason)
            for warning in plan.warnings:
                self.report.add("5", title, WARN, warning)

    def record_mailhost_proof(self, host_name: str, live: bool, evidence: str) -> None:
        self.mailhost_proofs[host_name] = (live, evidence)

    def unproven_mailhosts(self, host_names: list[str]) -> list[str]:
        """The mail hosts whose whitelist and exemption were not proven live in this run."""
        return [name for name in host_names if not self.mailhost_proofs.get(name, (False, ""))[0]]

    def record_relay_proof(self, host_name: str, live: bool, evidence: str) -> None:
        self.relay_proofs[host_name] = (live, evidence)

    def unproven_relays(self) -> list[str]:
        """Provider selfhosted: the relay hosts of the inventory (all, whatever --limit) not proven in this run."""
        return [name for name in self.settings.relay_hosts if not self.relay_proofs.get(name, (False, ""))[0]]

    def add_relay_rows(self, host_name: str, rows) -> None:
        """A relay host's rows (gates G1, G2, G4 and its plan/proof), from ``assess_relayhost``."""
        self.relays_assessed.add(host_name)
        self.report.checks.extend(rows)

    def report_message_sizes(self) -> None:
        """Provider selfhosted, G2: every relay takes the largest message a primary takes.

        A smaller limit answers 552 (5xx) to mail the primary would accept: during
        an outage that is a bounce the primary would never have sent.
        """
        if not self.relay_message_sizes:
            return
        title = "relay takes the primary's largest message"
        read = {name: size for name, size in self.primary_message_sizes.items() if size is not None}
        if not read:
            self.report.add("G2", title, WARN, "the primary's message_size_limit was not read (no mail host in this "
                            "run, or its Postfix did not answer)", "run with the mail hosts")
            return
        largest = 0 if 0 in read.values() else max(read.values())
        primary = f"primary {_size(largest)} ({', '.join(sorted(read))})"
        for name, size in sorted(self.relay_message_sizes.items()):
            if size is None:
                self.report.add("G2", title, WARN, f"{name}: its message_size_limit was not read; {primary}",
                                f"set relayhost.message_size_limit = {largest} for {name}")
            elif refuses_what_the_primary_takes(size, largest):
                self.report.add("G2", title, FAIL, f"{name}: message_size_limit {_size(size)} < {primary}: the "
                                f"backup would answer 552 (5xx) to mail the primary takes, a bounce during an outage",
                                f"set relayhost.message_size_limit = {largest} for {name} in the inventory, then "
                                f"run again")
            else:
                self.report.add("G2", title, PASS, f"{name}: message_size_limit {_size(size)}, {primary}")

    def report_relays_not_assessed(self) -> None:
        """Relay hosts left out of this run (--limit): nothing checked them, so stage 5 will refuse."""
        for name in self.settings.relay_hosts:
            if name not in self.relays_assessed:
                self.report.add("3r", f"relay host {name}", WARN, "not part of this run (--limit): not checked "
                                "or configured; stage 5 refuses until it is proven in the same run",
                                "run without --limit, or include the relay group")

    def report_monitoring_targets(self, host_names: list[str]) -> None:
        if not host_names:
            self.report.add("6", "monitoring and runbook", SKIP, "no host in the inventory's monitoring group")
            return
        self.report.add("6", "monitoring and runbook", PASS, f"validated files go to {', '.join(host_names)} after "
                        "stage 5 (diffs below); runbook rendered with live values")

    def first_pass(self) -> bool:
        """True once per run: for the run-level reads a deploy file does on its first host."""
        first, self._first_pass = self._first_pass, False
        return first

    def pending(self, key: str, title: str) -> None:
        self.report.add(key, title, TODO, "not implemented yet")

    def print_report_when_all_assessed(self, host_name: str, host_names: set[str]) -> None:
        """Print the report once every host's pass has added its rows; stop if it is blocked.

        Each host's pass through the deploy file calls this after its read-only
        assessment; the last one to arrive prints the whole table, the others wait
        for it, so the report is complete and shown exactly once, before anything
        changes.
        """
        self._assessed.add(host_name)
        if self._assessed >= host_names:
            try:
                if self._run_checks is not None:
                    self._run_checks.get()  # re-raises what failed in there
            except Exception as error:
                # A failed row stops the other hosts' passes too (never leave them
                # waiting); this one shows the traceback.
                self.report.add("2", "gates and DNS assessment", FAIL, f"unexpected error: {type(error).__name__}")
                self._all_assessed.set()
                raise
            self.report_relays_not_assessed()
            self.report_message_sizes()
            click.echo(self.report.render())
            self.reported = True
            self._all_assessed.set()
        elif not self._all_assessed.wait(timeout=REPORT_WAIT_SECONDS):
            missing = ", ".join(sorted(host_names - self._assessed))
            raise DeployError(f"gave up waiting {REPORT_WAIT_SECONDS}s for the assessment of {missing}")
        if self.report.blocked:
            failed = next(check for check in self.report.checks if check.status == FAIL)
            raise DeployError(f"stage {failed.key} ({failed.title}) failed: {failed.evidence}")


def current_run() -> Run:
    """The run of the pyinfra state being prepared, made (stages 0 and 1) on first use."""
    return once_per_state(_runs, current_host.data, _start_run)


def _start_run(settings: Settings) -> Run:
    take_run_lock(settings, current_host.data)
    run = Run(settings)
    run.check_inventory()
    run.check_secrets()
    return run


def take_run_lock(settings: Settings, data) -> None:
    """The per-domain locks (backupmx.core.lock), before any stage reads state to change it; not under --dry."""
    if lock.dry_run():
        return
    try:
        wait = lock.parse_wait(data.get("lock_wait"))
        lock.acquire(settings.state_dir, [domain.name for domain in settings.domains], deploy_name(), wait,
                     sleep=gevent.sleep)
    except BackupMXError as error:
        raise DeployError(str(error)) from None


def _size(size: int) -> str:
    return "no limit" if size == 0 else f"{size} bytes"
