"""One deploy run's shared context: settings, secrets and the gate report.

pyinfra executes a deploy file once per host while preparing. Stages 0-2 are
about the run, not a host, so they happen once per pyinfra ``State`` and every
host's pass through the deploy file gets the same ``Run``.
"""

from __future__ import annotations

import weakref

import click
from pyinfra import host as current_host
from pyinfra.api import DeployError
from pyinfra.context import ctx_state

from backupmx.config import Settings, load_settings
from backupmx.errors import BackupMXError
from backupmx.dnsstage import Assessment, DNSStage
from backupmx.report import CHANGE, FAIL, PASS, SKIP, TODO, WARN, Report
from backupmx.secrets import SecretStore

# Keys the deploy needs from the secret store, read up front so a missing one
# stops the run before anything is contacted.
REQUIRED_SECRETS = ("cloudflare_api_token", "rollernet_api_key")

_runs: "weakref.WeakKeyDictionary[object, Run]" = weakref.WeakKeyDictionary()


class Run:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.secrets = SecretStore(settings.vault)
        self.report = Report(self._title())
        self.reported = False
        self._first_pass = True
        # Stage 4's proof per mail host, filled in at execution time; stage 5
        # (DNS) refuses unless every mail host of the inventory is in here as live.
        self.mailhost_proofs: dict[str, tuple[bool, str]] = {}
        self.dns_stage: DNSStage | None = None
        self.dns: dict[str, Assessment] = {}

    def _title(self) -> str:
        names = ", ".join(domain.name for domain in self.settings.domains)
        return f"backupmx gate report: {names}"

    def check_inventory(self) -> None:
        settings = self.settings
        backup = settings.backup_mx
        self.report.add("0", "inventory data", PASS,
                        f"{len(settings.domains)} domain(s); backups {', '.join(backup.hosts)} at "
                        f"{backup.priority}; {len(settings.relay_cidrs)} relay CIDR(s)")

    def check_secrets(self) -> None:
        try:
            for key in REQUIRED_SECRETS:
                self.secrets.get(key)
        except BackupMXError as error:
            self.report.add("1", "secrets", FAIL, str(error))
            return
        self.report.add("1", "secrets", PASS,
                        f"{', '.join(REQUIRED_SECRETS)} from vault {self.settings.vault.secret_path}")

    def assess_dns(self) -> None:
        """Stage 5, read-only part: the record plan and MTA-STS decision per domain."""
        if self.report.blocked:
            self.report.add("5", "DNS: backup MX records", SKIP, "not read: an earlier stage failed")
            return
        try:
            self.dns_stage = DNSStage(self.settings, self.secrets.get("cloudflare_api_token"))
        except BackupMXError as error:
            self.report.add("5", "DNS: backup MX records", FAIL, str(error))
            return
        for domain in self.settings.domains:
            title = f"DNS {domain.name}"
            try:
                assessment = self.dns_stage.assess(domain)
            except BackupMXError as error:
                self.report.add("5", title, FAIL, str(error))
                continue
            self.dns[domain.name] = assessment
            plan = assessment.plan
            if assessment.refused:
                self.report.add("5", title, FAIL, assessment.refusal)
            elif plan.changed:
                self.report.add("5", title, CHANGE, "; ".join(plan.diff()) + " (after stage 4 proves every mail host)")
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

    def first_pass(self) -> bool:
        """True once per run: for the run-level reads a deploy file does on its first host."""
        first, self._first_pass = self._first_pass, False
        return first

    def pending(self, key: str, title: str) -> None:
        self.report.add(key, title, TODO, "not implemented yet")

    def print_report_once(self) -> None:
        if not self.reported:
            click.echo(self.report.render())
            self.reported = True
        if self.report.blocked:
            failed = next(check for check in self.report.checks if check.status == FAIL)
            raise DeployError(f"stage {failed.key} ({failed.title}) failed: {failed.evidence}")


def current_run() -> Run:
    """The run of the pyinfra state being prepared, made (stages 0 and 1) on first use."""
    state = ctx_state.get()
    run = _runs.get(state)
    if run is None:
        try:
            settings = load_settings(current_host.data)
        except BackupMXError as error:
            raise DeployError(str(error)) from None
        run = Run(settings)
        run.check_inventory()
        run.check_secrets()
        _runs[state] = run
    return run
