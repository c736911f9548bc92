"""Stage 5: the backup MX records in Cloudflare, read once and applied once per run.

Controller-side state (Cloudflare, DNS answers, the MTA-STS policy) is read in
plain Python on the control machine, not through pyinfra facts: a fact is a shell
command, and handing it the API token would put the token on a command line.
``assess`` runs while the deploy is prepared (also under ``--dry``); ``apply`` runs
at execution, re-reads the zone and plans again, so it acts on the zone as it is
then, not as it was when the plan was shown.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from backupmx.core.errors import BackupMXError
from backupmx.core.progress import Progress
from backupmx.core.settings import Domain, Settings
from backupmx.dns import check as dnscheck
from backupmx.dns import mtasts
from backupmx.dns import plan as mxplan
from backupmx.dns import render as mxrender
from backupmx.dns.apply import apply_plan
from backupmx.dns.cloudflare import CloudflareClient


@dataclass(frozen=True)
class Assessment:
    domain: Domain
    zone_id: str
    plan: mxplan.MXPlan
    mta_sts: mtasts.Decision

    @property
    def refused(self) -> bool:
        return self.plan.refused or self.mta_sts.refused

    @property
    def refusal(self) -> str | None:
        return self.plan.refusal or (self.mta_sts.reason if self.mta_sts.refused else None)


class DNSStage:
    def __init__(self, settings: Settings, token):
        self.settings = settings
        self.client = CloudflareClient(settings.cloudflare.api_base, token,
                                       timeout=(5.0, settings.cloudflare.read_timeout))

    def assess(self, domain: Domain) -> Assessment:
        zone_id = self.client.zone_id(domain.zone)
        return Assessment(domain, zone_id, self._plan(domain, zone_id), self._mta_sts(domain))

    def _plan(self, domain: Domain, zone_id: str) -> mxplan.PublishPlan:
        existing = self.client.mx_records(zone_id, domain.name)
        settings = self.settings
        # Counting costs a request; it matters only when records may be added.
        draft = mxplan.plan(domain, settings.backup_mx, existing, 0, settings.cloudflare.record_quota,
                            domain_key=f"domains[{settings.domains.index(domain)}]")
        if draft.refused or not draft.creates:
            return draft
        return replace(draft, record_count=self.client.record_count(zone_id))

    def _mta_sts(self, domain: Domain) -> mtasts.Decision:
        options = self.settings.mta_sts
        observation = mtasts.observe(domain.name, self.settings.dns_servers,
                                     connect_to=options.connect_to, ca_bundle=options.ca_bundle)
        return mtasts.guard(observation, self.settings.backup_mx.hosts)

    def apply(self, domain: Domain, log: Callable[[str], None]) -> mxplan.MXPlan:
        """Re-plan against the zone as it is now, apply (creates first), wait for DNS."""
        assessment = self.assess(domain)
        if assessment.refused:
            raise BackupMXError(f"DNS {domain.name}: refused: {assessment.refusal}; nothing was changed")
        plan = assessment.plan
        if not plan.changed:
            log(f"MX {domain.name}: already as wanted")
            return plan
        apply_plan(self.client, assessment.zone_id, plan, self.settings)
        for line in mxrender.diff(plan):
            log(f"applied {line}")
        # Only what the plan read and kept, or created: never a record it merely expected.
        wanted = {record.key for record in plan.desired}
        removed = {record.key for record in plan.deletes} - wanted
        with Progress(f"DNS {domain.name}: waiting for the authoritative servers to answer {dnscheck.render(wanted)}",
                      self.settings.dns_wait_seconds, log) as progress:
            dnscheck.wait_for_mx(domain.name, self.settings.dns_servers, want_present=wanted, want_absent=removed,
                                 timeout=self.settings.dns_wait_seconds, on_wait=progress.update)
        log(f"MX {domain.name}: authoritative DNS answers {dnscheck.render(wanted)}")
        return plan
