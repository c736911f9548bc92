"""Rollback, in plain Python: backup MX records out of DNS first, then the provider.

The seed design's rollback: remove the backup MX records (only those: the primary
stays, and create-before-delete does not apply to a removal), wait until the
zone's authoritative servers no longer list them, then disable the domain at the
provider. Every step adds one row to the rollback report, saying what it did or
found and, when it could not act, what to do by hand.

Built for a bad day:

* no gates, no mail host: the DNS part needs only Cloudflare and the zone's
  authoritative servers;
* Vault down: the Cloudflare token (and the ACC key) may come from the
  environment (``CLOUDFLARE_API_TOKEN``, ``ROLLERNET_API_KEY``); a Vault that
  failed once is not asked again in the same run;
* provider down, or the ledger backend: a warning with the manual steps, never a
  stop; the DNS removal is what matters and it is done first;
* the provider is touched only when DNS no longer points at it: a disabled domain
  answers 554 and would bounce mail that senders still route to the backup.

Re-running is harmless: nothing to remove and an already disabled domain are
reported as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from backupmx.core import audit
from backupmx.core.errors import BackupMXError, SecretError
from backupmx.core.progress import Progress
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, WARN, Check, Report
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Domain, Settings
from backupmx.dns import check as dnscheck
from backupmx.dns import plan as mxplan
from backupmx.dns.apply import apply_plan
from backupmx.dns.cloudflare import CloudflareClient
from backupmx.providers.base import ManualStepRequired, Provider
from backupmx.providers.registry import manual_steps, open_provider

CLOUDFLARE_TOKEN = "cloudflare_api_token"

Log = Callable[[str], None]


class _EmergencySecrets(SecretStore):
    """The secret store, but a Vault that failed once is not asked again (it may time out each time)."""

    _vault_error: SecretError | None = None

    def _read(self) -> dict[str, str]:
        if self._vault_error is not None:
            raise self._vault_error
        try:
            return super()._read()
        except SecretError as error:
            self._vault_error = error
            raise


class Rollback:
    """The rollback of one run. Read-only methods plan; the others act and report."""

    def __init__(self, settings: Settings, environ=None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.secrets = _EmergencySecrets(settings.vault, environ)
        names = ", ".join(domain.name for domain in settings.domains)
        self.report = Report(f"backupmx rollback: {names}")
        self.clock = clock
        self.started = clock()
        self._cloudflare: CloudflareClient | None = None
        self._provider: Provider | None = None
        # Per domain: what the zone keeps after the removal, and whether the
        # authoritative DNS was seen without any backup.
        self.kept: dict[str, frozenset[tuple[int, str]]] = {}
        self.removed: dict[str, frozenset[tuple[int, str]]] = {}
        self.dns_clear: dict[str, float] = {}  # domain -> seconds since start when DNS was clear
        # Mail hosts whose whitelist and exemption are to be reverted (revert_mailhost).
        self.revert_mailhosts: list[str] = []

    # ----------------------------------------------------------------- plumbing

    def add(self, key: str, title: str, status: str, evidence: str, next_step: str | None = None) -> Check:
        """Add a step's row, replacing an earlier row of the same step (the plan shown while preparing)."""
        return self.report.put(key, title, status, evidence, next_step)

    def cloudflare(self) -> CloudflareClient:
        if self._cloudflare is None:
            token = self.secrets.get(CLOUDFLARE_TOKEN, allow_env=True)
            source = self.secrets.sources.get(CLOUDFLARE_TOKEN, "Vault")
            self._cloudflare = CloudflareClient(self.settings.cloudflare.api_base, token,
                                                token_source=source,
                                                timeout=(5.0, self.settings.cloudflare.read_timeout))
        return self._cloudflare

    def token_source(self) -> str | None:
        return self.secrets.sources.get(CLOUDFLARE_TOKEN)

    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = open_provider(self.settings, self.secrets, allow_env=True, fail_fast=True)
        return self._provider

    def close(self) -> None:
        if self._cloudflare:
            self._cloudflare.close()
        if self._provider:
            self._provider.close()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def dns_all_clear(self) -> bool:
        """Has the authoritative DNS of every domain been seen without the backups in this run?"""
        return all(domain.name in self.dns_clear for domain in self.settings.domains)

    def mailhost_reverts(self, failed_hosts: set[str], executed: bool = True) -> None:
        """Rows for step 4 (revert_mailhost), from how the mail hosts fared."""
        if not executed:
            for name in self.revert_mailhosts:
                self.add("4", f"revert mail host {name}", CHANGE, "would remove the postscreen whitelist and the "
                         "rspamd exemption, once steps 1-2 found DNS clear (diff above)")
            return
        by_hand = ("by hand: take cidr:…/postscreen_access.cidr out of the :2525 listener's "
                   "postscreen_access_list and delete the backupmx_relay_exempt block from the rspamd settings; "
                   "or run the rollback again with --data revert_mailhost=true")
        for name in self.revert_mailhosts:
            title = f"revert mail host {name}"
            if name in failed_hosts:
                self.add("4", title, FAIL, "not reverted: the host failed or could not be reached (see above)",
                         by_hand)
            elif not self.dns_all_clear():
                self.add("4", title, SKIP, "not reverted: DNS was not confirmed clear of the backups in this run",
                         "finish steps 1-2 first")
            else:
                self.add("4", title, PASS, "postscreen whitelist and rspamd exemption removed or already absent "
                         "(the operations' results are above)")

    # ------------------------------------------------------------ step 1: DNS

    def plan(self, domain: Domain) -> mxplan.RemovalPlan:
        """Read-only: which records the removal would delete (the zone as it is now)."""
        _zone_id, plan = self._read_zone(domain)
        self._expect(plan)
        return plan

    def _read_zone(self, domain: Domain) -> tuple[str, mxplan.RemovalPlan]:
        client = self.cloudflare()
        zone_id = client.zone_id(domain.zone)
        return zone_id, mxplan.plan_removal(domain, self.settings.backup_mx, client.mx_records(zone_id, domain.name))

    def _expect(self, plan: mxplan.RemovalPlan) -> None:
        # What the authoritative DNS must show once the plan is applied (step 2).
        self.removed[plan.domain.name] = frozenset(record.key for record in plan.deletes)
        self.kept[plan.domain.name] = frozenset(record.key for record in plan.desired)

    def remove_records(self, domain: Domain, log: Log) -> Check:
        """Delete the backup MX records of ``domain`` (re-planned against the zone now)."""
        title = f"remove backup MX {domain.name}"
        try:
            zone_id, plan = self._read_zone(domain)
            for warning in plan.warnings:
                log(f"warning: {warning}")
            apply_plan(self.cloudflare(), zone_id, plan, self.settings,
                       lambda _what, record: log(f"deleted {record.render()}"))
        except BackupMXError as error:
            backups = ", ".join(f"{self.settings.backup_mx.priority} {h}" for h in self.settings.backup_mx.hosts)
            return self.add("1", title, FAIL, str(error),
                            f"by hand: Cloudflare dashboard → {domain.zone} → DNS: delete the MX records "
                            f"{backups} of {domain.name} (keep the primary), then run the rollback again")
        self._expect(plan)
        source = f"; token from {self.token_source()}" if self.token_source() else ""
        kept = dnscheck.render(self.kept[domain.name])
        warnings = f"; {'; '.join(plan.warnings)}" if plan.warnings else ""
        if not plan.deletes:
            return self.add("1", title, PASS, f"no backup MX record in the zone (kept: {kept}){source}{warnings}")
        return self.add("1", title, CHANGE, f"deleted {', '.join(r.render() for r in plan.deletes)}; kept: "
                        f"{kept}{source}{warnings}")

    # ------------------------------------------------------- step 2: DNS wait

    def wait_dns(self, domain: Domain, log: Log) -> Check:
        """Wait until every authoritative server answers without the backups (and with what was kept)."""
        title = f"DNS without backups {domain.name}"
        backup = self.settings.backup_mx
        absent = {(backup.priority, host) for host in backup.hosts} | set(self.removed.get(domain.name, ()))
        present = set(self.kept.get(domain.name, ()))
        try:
            with Progress(f"DNS {domain.name}: waiting for the authoritative servers to drop the backups",
                          self.settings.dns_wait_seconds, log) as progress:
                answer = dnscheck.wait_for_mx(domain.name, self.settings.dns_servers, want_present=present,
                                              want_absent=absent, timeout=self.settings.dns_wait_seconds,
                                              interval=0.5, on_wait=progress.update)
        except BackupMXError as error:
            return self.add("2", title, FAIL, str(error),
                            "check the zone in the Cloudflare dashboard, then run the rollback again "
                            "(the provider is left untouched until DNS is clear)")
        still = sorted(mx for mx in answer if mx[1] in backup.hosts)
        if still:
            return self.add("2", title, FAIL, f"the authoritative answer still points at the provider: "
                            f"{dnscheck.render(still)} (not created by backupmx, left untouched)",
                            "delete it by hand in Cloudflare if it should go, then run the rollback again")
        self.dns_clear[domain.name] = self.elapsed()
        servers = ", ".join(self.settings.dns_servers) or "the zone's name servers"
        log(f"DNS {domain.name}: {servers} answer {dnscheck.render(answer)}")
        return self.add("2", title, PASS, f"{servers} answer {dnscheck.render(answer)} "
                        f"({self.dns_clear[domain.name]:.1f} s after the rollback started)",
                        None)

    # --------------------------------------------------- step 3: the provider

    def disable_provider(self, domain: Domain, log: Log) -> Check:
        """Disable the domain at the provider; any trouble is a warning with the manual steps."""
        name = self.settings.provider.name
        title = f"disable {domain.name} at {name}"
        if domain.name not in self.dns_clear:
            return self.add("3", title, SKIP, "DNS still lists the backups (step 2): a disabled domain would "
                            "bounce the mail senders still route there", "finish steps 1-2, then run again")
        try:
            provider = self.provider()
            facts = provider.domain_facts(domain.name)
            if facts.present.value is False:
                return self.add("3", title, PASS, f"{domain.name} is not in the account ({facts.present.evidence})")
            if not facts.present.known:
                raise BackupMXError(facts.present.evidence)
            queued = self._queue_note(provider, domain, facts.hold.value is True)
            if facts.enabled.known and facts.enabled.value is False:
                return self.add("3", title, PASS, f"already disabled ({facts.enabled.evidence}){queued}")
            # On record before the request: a run killed while it is in flight (Ctrl-C, a closed
            # laptop) leaves the domain disabled with no answer read; the next deploy must still
            # know this tool disabled it (audit.disabled_by_rollback).
            audit.append(self.settings, audit.DISABLE_REQUESTED, domain.name, {"enabled": facts.enabled.value},
                         {"enabled": False})
            after = provider.set_enabled(domain.name, False)
            audit.append(self.settings, "provider.domain_enabled", domain.name,
                         {"enabled": facts.enabled.value}, {"enabled": after.value, "evidence": after.evidence})
            log(f"{name}: {domain.name} disabled ({after.evidence})")
            return self.add("3", title, CHANGE, f"disabled ({after.evidence}){queued}")
        except ManualStepRequired as manual:
            return self._manual(title, domain, str(manual))
        except BackupMXError as error:
            return self._manual(title, domain, str(error))

    def _manual(self, title: str, domain: Domain, why: str) -> Check:
        steps = manual_steps(self.settings, "disable", domain.name)
        return self.add("3", title, WARN, f"not done: {why}",
                        "by hand (DNS is already clear, so nothing is routed there): " + "; ".join(steps))

    def _queue_note(self, provider: Provider, domain: Domain, hold: bool) -> str:
        """What is still queued at the provider for ``domain`` (best effort: never fails the step)."""
        try:
            messages = provider.queue(domain.name)
        except BackupMXError:
            return ""
        if not messages:
            return "; queue empty" + ("; Accept-and-Hold is on" if hold else "")
        held = sum(1 for message in messages if message.held)
        note = f"; {len(messages)} message(s) still queued at the provider"
        if hold or held:
            note += (f" ({held} held: Accept-and-Hold is on, they are not delivered until "
                     f"`deploys/maintenance.py --data hold=off`)")
        else:
            note += " (delivered to the primary when it answers)"
        return note

    # ---------------------------------------------------------------- summary

    def manual_steps_left(self) -> bool:
        """No step failed, but a warn row asks the operator to finish something by hand."""
        statuses = {check.status for check in self.report.checks}
        return FAIL not in statuses and WARN in statuses

    def render(self) -> str:
        lines = [self.report.render().rsplit("\n", 1)[0]]
        failed = [c for c in self.report.checks if c.status == FAIL]
        manual = [c for c in self.report.checks if c.status == WARN]
        if failed:
            lines.append(f"  => ROLLBACK INCOMPLETE: {failed[0].title}: see above")
        elif manual:
            lines.append(f"  => the backup MX records are out of DNS; finish by hand what the warn row(s) say "
                         f"(exit 2): {', '.join(check.title for check in manual)}")
        else:
            lines.append("  => rollback complete")
        return "\n".join(lines)
