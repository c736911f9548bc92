"""The backup provider behind one interface: domain state, relay CIDRs, hold, queue.

Two backends, chosen by ``provider.backend`` in the inventory (and provider
``selfhosted``, whose relay hosts answer for themselves: ``backupmx.selfhosted``):

* ``api`` (``backupmx.acc``): the provider's account API, with the module/action
  names and the response parser taken from the provider profile (data, not code).
  A fact the profile says the API cannot tell (``provider.api.facts.<fact>: null``)
  comes from the gate ledger instead;
* ``ledger`` (``backupmx.ledger``): operator-confirmed facts recorded in the
  inventory (value, date, evidence). It cannot change anything: a change is printed
  as the manual steps to take in the provider's web console.

Every value carries where it came from (``Fact.source`` and ``Fact.evidence``), so
the gate report can say "mode secondary_mx (api mail/domain_get)" or "overage 4xx
(ledger 2026-07-04: support ticket 1234)".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backupmx.config import Settings
from backupmx.errors import BackupMXError

API, LEDGER, NONE = "api", "ledger", "none"


class ProviderError(BackupMXError):
    """The provider could not answer or act; the message names the endpoint and the next step."""


class ManualStepRequired(ProviderError):
    """The backend cannot make this change; ``steps`` say what to do by hand."""

    def __init__(self, message: str, steps: list[str]):
        self.steps = steps
        super().__init__(message)


@dataclass(frozen=True)
class Fact:
    """One value about the provider, and where it came from."""

    value: Any
    source: str  # "api", "ledger" or "none" (nobody could tell)
    evidence: str  # e.g. "api mail/domain_get", "ledger 2026-07-04: ACC screenshot"

    @property
    def known(self) -> bool:
        return self.source != NONE

    def describe(self) -> str:
        return f"{self.evidence}" if self.known else f"unknown ({self.evidence})"


def unknown(why: str) -> Fact:
    return Fact(None, NONE, why)


@dataclass(frozen=True)
class ProviderFacts:
    """What the provider says about one domain, each value with its source."""

    domain: str
    present: Fact
    mode: Fact
    enabled: Fact
    user_table_default: Fact
    hold: Fact
    # Per fact: why it could not be read (an API error), for the gate report.
    errors: tuple[str, ...] = field(default=())

    def sources(self) -> dict[str, str]:
        return {name: getattr(self, name).source
                for name in ("present", "mode", "enabled", "user_table_default", "hold")}


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    sender: str
    recipients: tuple[str, ...]
    size: int | None
    queued_at: str | None
    attempts: int | None
    held: bool
    last_error: str | None


class Provider:
    """The provider interface. Reads never change anything; writes say what they did."""

    name: str
    backend: str

    def domain_facts(self, domain: str) -> ProviderFacts:
        raise NotImplementedError

    def relay_cidrs(self) -> Fact:
        raise NotImplementedError

    def overage(self) -> Fact:
        """G2: how the provider answers over-limit mail ("4xx" or "5xx"); only a human can confirm it."""
        raise NotImplementedError

    def set_hold(self, domain: str, on: bool) -> Fact:
        """Turn Accept-and-Hold on or off; the hold state afterwards."""
        raise NotImplementedError

    def set_enabled(self, domain: str, enabled: bool) -> Fact:
        """Enable or disable the domain; the enabled state afterwards."""
        raise NotImplementedError

    def queue(self, domain: str) -> list[QueuedMessage]:
        raise NotImplementedError

    def manual_steps(self, change: str, domain: str) -> list[str]:
        """What an operator does by hand in the provider's console for ``change``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def manual_steps(settings: Settings, change: str, domain: str) -> list[str]:
    """The by-hand steps in the provider's web console for a change the tool could not make."""
    profile = settings.provider
    if settings.selfhosted:
        from backupmx import selfhosted

        return selfhosted.manual_steps(settings, change, domain)
    login = (f"log in to {profile.manual_url}" + (f" as {profile.user}" if profile.user else "") +
             f" (password: Vault {settings.vault.secret_path}, key rollernet_password)")
    steps = {
        "disable": [login, (f"open the mail domain {domain} and disable it (or delete it); its queue drains "
                            f"to the primary on its own")],
        "enable": [login, f"open the mail domain {domain} and enable it"],
        "hold_on": [login, f"open the mail domain {domain} and turn Accept and Hold on"],
        "hold_off": [login, (f"open the mail domain {domain} and turn Accept and Hold off; then flush its "
                             f"queue (or send ETRN {domain} to {settings.backup_mx.hosts[0]})")],
    }
    return steps[change]


def open_provider(settings: Settings, secrets=None, allow_env: bool = False, fail_fast: bool = False) -> Provider:
    """The provider the inventory chooses; the API key is read now (from Vault, or its env stand-in).

    ``allow_env``: the key may come from its environment variable when Vault cannot
    answer (emergencies); ``fail_fast``: an API unreachable once is not tried again.
    """
    from backupmx.ledger import LedgerProvider

    profile = settings.provider
    if settings.selfhosted:
        # The relay hosts answer for themselves, over their pyinfra SSH connection: no key, no ledger.
        from backupmx.selfhosted import SelfHostedProvider

        return SelfHostedProvider(settings)
    ledger = LedgerProvider(settings)
    if profile.backend == LEDGER:
        return ledger
    from backupmx.acc import AccClient, AccProvider

    if secrets is None:
        raise ProviderError(f"provider {profile.name}: the api backend needs the secret store for "
                            f"{profile.key_secret}")
    key = secrets.get(profile.key_secret, allow_env=allow_env)
    return AccProvider(settings, AccClient(profile, key, fail_fast=fail_fast), ledger)


def describe_facts(facts: ProviderFacts) -> str:
    parts = []
    for name in ("present", "mode", "enabled", "user_table_default", "hold"):
        fact = getattr(facts, name)
        parts.append(f"{name}={fact.value if fact.known else '?'} [{fact.describe()}]")
    return "; ".join(parts)
