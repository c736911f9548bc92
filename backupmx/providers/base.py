"""The backup provider behind one interface: domain state, relay CIDRs, hold, queue, bounces.

Two backends, chosen by ``provider.backend`` in the inventory (and provider
``selfhosted``, whose relay hosts answer for themselves: ``backupmx.providers.selfhosted``):

* ``api`` (``backupmx.providers.acc``): the provider's account API, with the module/action
  names and the response parser taken from the provider profile (data, not code).
  A fact the profile says the API cannot tell (``provider.api.facts.<fact>: null``)
  comes from the gate ledger instead;
* ``ledger`` (``backupmx.providers.ledger``): operator-confirmed facts recorded in the
  inventory (value, date, evidence). It cannot change anything: a change is printed
  as the manual steps to take in the provider's web console.

Every value carries where it came from (``Fact.source`` and ``Fact.evidence``), so
the gate report can say "mode secondary_mx (api mail/domain_get)" or "overage 4xx
(ledger 2026-07-04: support ticket 1234)".
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass, field
from typing import Any

from backupmx.core.errors import BackupMXError

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


@dataclass(frozen=True)
class BouncedMessage:
    """A message the relay gave up on: bounced to its sender, out of the queue.

    ``reply`` is the last answer the relay got for it, e.g. the primary's ``host ...
    said: 550 ...`` when the primary refused it, or the relay's own reason (expired).
    """

    id: str
    sender: str
    recipients: tuple[str, ...]
    reply: str
    at: str | None = None
    relay: str | None = None


class Provider(ABC):
    """The provider interface. Reads never change anything; writes say what they did."""

    name: str
    backend: str

    @abstractmethod
    def domain_facts(self, domain: str) -> ProviderFacts:
        """What the provider holds for ``domain``: present, enabled, hold, the user table's default."""

    @abstractmethod
    def relay_cidrs(self) -> Fact:
        """The networks the provider's relays send from (G4 compares them with the run's ``relay_cidrs``)."""

    @abstractmethod
    def overage(self) -> Fact:
        """G2: how the provider answers over-limit mail ("4xx" or "5xx"); only a human can confirm it."""

    @abstractmethod
    def set_hold(self, domain: str, on: bool) -> Fact:
        """Turn Accept-and-Hold on or off; the hold state afterwards."""

    @abstractmethod
    def set_enabled(self, domain: str, enabled: bool) -> Fact:
        """Enable or disable the domain; the enabled state afterwards."""

    @abstractmethod
    def queue(self, domain: str) -> list[QueuedMessage]:
        """The messages for ``domain`` the provider holds now."""

    @abstractmethod
    def bounces(self, domain: str) -> list[BouncedMessage]:
        """Messages for ``domain`` the relays bounced (gave up on), as far back as the provider keeps them."""

    @abstractmethod
    def manual_steps(self, change: str, domain: str) -> list[str]:
        """What an operator does by hand in the provider's console for ``change``."""

    def close(self) -> None:
        pass
