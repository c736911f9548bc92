"""The drift check's reads, per host of the run (``deploys/drift.py``). Read-only.

Each host's pass through the deploy file adds ``Finding``s (``backupmx.lifecycle.drift``) to
the run's ``DriftRun``; the pass that finishes last prints them and, if anything
drifted or could not be read, stops the run with exit code 1. Nothing here yields
an operation, so ``--dry`` and a normal run do exactly the same.

- control machine (the ``controller`` group): the live MX set of every domain
  (authoritative DNS), the provider's relay networks, the MTA-STS coverage;
- each mail host: the postscreen whitelist (table and listener options) and the
  rspamd exemption, as stage 3 would write them (the mail host stage's own plans);
- each monitoring host: the pushed files against the rendered ones.
"""

from __future__ import annotations

import re
import time

import click
from pyinfra import host

from backupmx.core.context import once_per_run
from backupmx.core.errors import BackupMXError
from backupmx.core.pyinfra_glue import active_host_names, failed_host_names, one_line_error
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings
from backupmx.dns import check as dnscheck
from backupmx.dns import mtasts
from backupmx.lifecycle import drift as dr
from backupmx.mailhost.model import RSPAMD_BLOCK
from backupmx.mailhost.plan import plan_exemption, plan_whitelist
from backupmx.monitoring.rules import render_all
from backupmx.postfix.blocks import find_block
from backupmx.providers.registry import open_provider
from facts.mailhost import MailhostFiles, PostscreenAccessFile
from operations.mailhost import mailhost_settings
from operations.mailhost_state import read_state
from operations.monitoring import monitoring_settings


class DriftRun:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.findings: list[dr.Finding] = []
        self.finished: set[str] = set()
        self.started = time.monotonic()
        self.findings_for_controller_noted = False

    def add(self, findings: list[dr.Finding]) -> None:
        self.findings.extend(findings)

    def finish(self, host_name: str) -> None:
        """Record one host's pass; after the last one, print and stop with exit 1 on drift."""
        self.finished.add(host_name)
        if not active_host_names() <= self.finished:
            return
        for failed in sorted(failed_host_names()):
            self.findings.append(dr.Finding("host", failed, dr.UNKNOWN, "could not be reached: not checked"))
        lines, failing = dr.summary(self.findings, verbose=bool(host.data.get("drift_verbose")))
        elapsed = time.monotonic() - self.started
        click.echo("backupmx drift check:")
        for line in lines:
            click.echo(f"  {line}")
        checked = len([finding for finding in self.findings if finding.status != dr.NOTE])
        click.echo(f"  ({checked} check(s) on {len(self.finished)} host(s), {elapsed:.1f} s)")
        if failing:
            count = len([finding for finding in self.findings if finding.failing])
            first = next(finding for finding in self.findings if finding.failing)
            raise one_line_error(f"{count} drift(s) found; first: {first.line()}")


def current_drift_run() -> DriftRun:
    """The drift check of the pyinfra run in progress (settings validated once)."""
    return once_per_run("drift", host.data, DriftRun)


# --- the control machine -----------------------------------------------------------


def controller_findings(settings: Settings) -> list[dr.Finding]:
    findings = []
    for domain in settings.domains:
        source = f"DNS {', '.join(settings.dns_servers) or 'the zone NS'}"
        try:
            live = dnscheck.live_mx(domain.name, settings.dns_servers)
        except BackupMXError as error:
            findings.append(dr.Finding("mx", domain.name, dr.UNKNOWN, str(error)))
        else:
            findings += dr.mx_drift(domain, settings, live, source)
        findings.append(mta_sts_finding(settings, domain))
    findings += provider_findings(settings)
    return findings


def provider_findings(settings: Settings) -> list[dr.Finding]:
    subject = settings.provider.name
    try:
        provider = open_provider(settings, SecretStore(settings.vault), fail_fast=True)
    except BackupMXError as error:
        return [dr.Finding("provider-cidrs", subject, dr.UNKNOWN, f"cannot open the provider: {error}")]
    try:
        fact = provider.relay_cidrs()
    except BackupMXError as error:
        return [dr.Finding("provider-cidrs", subject, dr.UNKNOWN, str(error))]
    finally:
        provider.close()
    if not fact.known:
        return [dr.Finding("provider-cidrs", subject, dr.UNKNOWN, f"the provider's relay networks are unknown: "
                           f"{fact.evidence}")]
    return dr.provider_cidr_drift(settings, list(fact.value), fact.evidence)


def mta_sts_finding(settings: Settings, domain) -> dr.Finding:
    options = settings.mta_sts
    try:
        observation = mtasts.observe(domain.name, settings.dns_servers, connect_to=options.connect_to,
                                     ca_bundle=options.ca_bundle)
    except BackupMXError as error:
        return dr.Finding("mta-sts", domain.name, dr.UNKNOWN, str(error))
    coverage = mtasts.check_coverage(observation, mtasts.mx_hosts(domain, settings.backup_mx))
    status = {"FAIL": dr.DRIFT, "warn": dr.NOTE}.get(coverage.status, dr.OK)
    return dr.Finding("mta-sts", domain.name, status, coverage.reason)


# --- a mail host -------------------------------------------------------------------


_RULE_NETWORK = re.compile(r'"([0-9A-Fa-f:.]+/\d{1,3})"')


def mailhost_findings(settings: Settings) -> list[dr.Finding]:
    """The whitelist and exemption on the current mail host, as stage 3's plans see them."""
    mailhost = mailhost_settings(host)
    findings = []
    state, _ = read_state(mailhost)
    whitelist = plan_whitelist(mailhost, settings.relay_cidrs, state, host_name=host.name)
    if whitelist.problems:
        findings.append(dr.Finding("whitelist", host.name, dr.UNKNOWN, whitelist.problems[0]))
    elif not whitelist.changed:
        findings.append(dr.Finding("whitelist", host.name, dr.OK, whitelist.already))
    else:
        table = host.get_fact(PostscreenAccessFile, path=mailhost.cidr_host_path)  # on the host, as stage 3 writes it
        if table is None:
            findings.append(dr.Finding("whitelist", host.name, dr.DRIFT, f"{mailhost.cidr_host_path} is missing"))
        elif table["error"] is None:
            findings += [finding for finding in dr.cidr_drift("whitelist", host.name, settings.relay_cidrs,
                                                              table["networks"], mailhost.cidr_host_path)
                         if finding.status == dr.DRIFT]
        listener = [change.path for change in whitelist.files if change.path != mailhost.cidr_host_path]
        if listener or whitelist.live:
            findings.append(dr.Finding("whitelist", host.name, dr.DRIFT, "listener options of "
                                       f"{mailhost.service_key} are not as wanted "
                                       f"({'; '.join(listener + whitelist.live)})"))
        if not any(finding.status == dr.DRIFT for finding in findings):
            findings.append(dr.Finding("whitelist", host.name, dr.DRIFT, whitelist.summary()))
    exemption = plan_exemption(mailhost, settings.relay_cidrs, state, host_name=host.name)
    if exemption.problems:
        findings.append(dr.Finding("exemption", host.name, dr.UNKNOWN, exemption.problems[0]))
    elif not exemption.changed:
        findings.append(dr.Finding("exemption", host.name, dr.OK, exemption.already))
    elif not any(change.path == mailhost.rspamd_settings_host_path for change in exemption.files):
        # Relay scoring external_relay: its other two files drifted, the settings rule did not.
        findings.append(dr.Finding("exemption", host.name, dr.DRIFT, exemption.summary()))
    else:
        path = mailhost.rspamd_settings_host_path
        current = next(change.old for change in exemption.files if change.path == path)
        block = None
        try:
            block = find_block(current, RSPAMD_BLOCK)
        except BackupMXError:
            pass
        if block is None:
            findings.append(dr.Finding("exemption", host.name, dr.DRIFT, f"no backupmx rule in {path}"))
        else:
            detail = dr.cidr_drift("exemption", host.name, settings.relay_cidrs, _RULE_NETWORK.findall(block), path)
            findings += [finding for finding in detail if finding.status == dr.DRIFT] or [
                dr.Finding("exemption", host.name, dr.DRIFT, exemption.summary())]
    return findings


# --- a monitoring host ---------------------------------------------------------------


def monitoring_findings(settings: Settings) -> list[dr.Finding]:
    monitoring = monitoring_settings(host, settings)
    files = {monitoring.path(name): text for name, text in render_all(settings, monitoring).items()}
    current = host.get_fact(MailhostFiles, paths=tuple(files))
    unreadable = [f"{path}: {entry['error']}" for path, entry in current.items() if entry["error"]]
    if unreadable or len(current) != len(files):
        return [dr.Finding("monitoring", host.name, dr.UNKNOWN, f"cannot read {unreadable[0] if unreadable else 'the files'}")]
    return dr.files_drift("monitoring", host.name, files, {path: entry["content"] for path, entry in current.items()})
