"""The ``ledger`` backend: operator-confirmed facts recorded in inventory data.

Roller Network's account API does not publish its mail module, and some facts
(how an over-limit domain answers, the relay source networks shown only on the
logged-in "Resource Access" page) no API tells at all. An operator confirms them
and records each in the inventory's ``gate_ledger`` with the date and the
evidence (``"ACC screenshot 2026-07-04"``, a support ticket id); the entries are
validated in ``backupmx.core.profile`` (``gate_ledger``) and read here. The format is in
docs/gates.md.

The ledger cannot change anything at the provider: every change raises
``ManualStepRequired`` with the steps to take in the provider's console.
"""

from __future__ import annotations

from backupmx.core.gate_ledger import LedgerEntry
from backupmx.core.settings import Settings
from backupmx.providers.base import LEDGER, Fact, ManualStepRequired, Provider, ProviderFacts, unknown
from backupmx.providers.console import console_steps


def fact(entry: LedgerEntry | None, missing: str) -> Fact:
    """A ledger entry as a ``Fact`` (source "ledger"), or unknown with ``missing`` as the reason."""
    if entry is None:
        return unknown(missing)
    return Fact(entry.value, LEDGER, entry.describe())


class LedgerProvider(Provider):
    backend = LEDGER

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ledger = settings.gate_ledger
        self.name = settings.provider.name

    def domain_fact(self, domain: str, name: str) -> Fact:
        return fact(self.ledger.domain_fact(domain, name),
                    f"no gate_ledger.domains['{domain}'].{name} entry")

    def domain_facts(self, domain: str) -> ProviderFacts:
        facts = {name: self.domain_fact(domain, name)
                 for name in ("present", "mode", "enabled", "user_table_default", "hold")}
        present = facts["present"]
        if not present.known and any(f.known for name, f in facts.items() if name in ("mode", "enabled")):
            # A recorded mode or enabled state implies the domain is in the account.
            source = facts["mode"] if facts["mode"].known else facts["enabled"]
            present = Fact(True, LEDGER, source.evidence)
        return ProviderFacts(domain, present, facts["mode"], facts["enabled"], facts["user_table_default"],
                             facts["hold"])

    def relay_cidrs(self) -> Fact:
        return fact(self.ledger.relay_cidrs, "no gate_ledger.relay_cidrs entry")

    def overage(self) -> Fact:
        return fact(self.ledger.overage, "no gate_ledger.overage entry")

    def _manual(self, change: str, domain: str, what: str):
        steps = console_steps(self.settings, change, domain)
        raise ManualStepRequired(f"provider {self.name} (ledger backend): cannot {what} {domain} from here; "
                                 f"by hand: {'; '.join(steps)}", steps)

    def set_hold(self, domain: str, on: bool) -> Fact:
        self._manual("hold_on" if on else "hold_off", domain, f"turn Accept-and-Hold {'on' if on else 'off'} for")

    def set_enabled(self, domain: str, enabled: bool) -> Fact:
        self._manual("enable" if enabled else "disable", domain, "enable" if enabled else "disable")

    def queue(self, domain: str) -> list:
        steps = [f"log in to {self.settings.provider.manual_url} and open the mail queue of {domain}"]
        raise ManualStepRequired(f"provider {self.name} (ledger backend): the queue is not readable from here; "
                                 f"by hand: {steps[0]}", steps)

    def bounces(self, domain: str) -> list:
        steps = [f"log in to {self.settings.provider.manual_url} and look for bounces of {domain}"]
        raise ManualStepRequired(f"provider {self.name} (ledger backend): bounces are not readable from here; "
                                 f"by hand: {steps[0]}", steps)

    def manual_steps(self, change: str, domain: str) -> list[str]:
        return console_steps(self.settings, change, domain)
