"""What the failover drill and the canary spend of the provider's budget, checked before they send.

The provider's quota per domain (``backupmx.providers.quota``) is shared with real mail:
during an outage every relayed message counts. This tool keeps to its share of it
(``provider.budget.share``, a quarter by default), counting what it sent itself in the
spend ledger (``backupmx.core.spend``). Before sending, the drill and the canary ask
``SpendCheck`` whether their messages fit what is left: what would go over is refused,
or, for the drill's large message, left out, with one line saying how much is left and
when enough frees up (docs/budget.md).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from backupmx.core import spend
from backupmx.core.budget import Allowance, count, size
from backupmx.core.settings import Settings
from backupmx.providers.quota import quota

# What one small message is counted as when planning (the ledger records the real size):
# a probe, the spam message and a canary are 1-1.5 KB signed; the relay adds its trace headers.
SMALL_MESSAGE_BYTES = 2000

# (domain, what, bytes, relay): writes one sent message to the spend ledger.
Record = Callable[[str, str, int, str], None]


def recorder(settings: Settings, run_id: str) -> Record:
    """The spend ledger's writer for one run of the drill or the canary."""

    def record(domain: str, what: str, nbytes: int, relay: str) -> None:
        spend.record(settings, domain, nbytes, what, relay, run_id)

    return record


@dataclass(frozen=True)
class SpendCheck:
    """This tool's share of the provider's budget for one domain, as the spend ledger shows it now."""

    provider: str
    domain: str
    allowance: Allowance | None  # None: the provider is not metered

    @classmethod
    def read(cls, settings: Settings, domain: str, now: datetime.datetime | None = None) -> SpendCheck:
        """Read the ledger (``BackupMXError`` if a line of it cannot be read)."""
        budget = quota(settings)
        if budget is None:
            return cls(settings.provider.name, domain, None)
        return cls(settings.provider.name, domain, Allowance.of(budget, spend.spent(settings, domain),
                                                                now or spend.now()))

    @property
    def metered(self) -> bool:
        return self.allowance is not None

    def fits(self, messages: int, nbytes: int) -> bool:
        return self.allowance is None or self.allowance.fits(messages, nbytes)

    def whose(self) -> str:
        return f"{self.provider}'s budget for {self.domain}"

    def plan(self, messages: int, nbytes: int) -> str:
        """What a run would spend and what is left, for the --dry review and the report."""
        spending = f"{count(messages)}, about {size(nbytes)}"
        if self.allowance is None:
            return f"{spending}; {self.provider} has no budget (provider.budget: null): nothing is metered"
        left = self.allowance
        return (f"{spending}, of {self.whose()}: {left.describe_left()}; after this run "
                f"{count(max(left.messages_left - messages, 0))} / {size(max(left.bytes_left - nbytes, 0))}")

    def over(self, what: str, messages: int, nbytes: int) -> str:
        """Why ``what`` (``messages``/``nbytes``) does not fit: what is left and when enough frees up."""
        left = self.allowance
        return (f"{what} ({count(messages)}, {size(nbytes)}) would go over this tool's share of {self.whose()}: "
                f"{left.describe_left()} (spent {left.spent_messages} / {size(left.spent_bytes)} in the last "
                f"{left.budget.days} days); {left.describe_frees(messages, nbytes)}")


# ------------------------------------------------------------------ the drill


@dataclass(frozen=True)
class DrillSpend:
    """The drill's spend, decided before the primary is stopped."""

    messages: int
    bytes: int
    large: int  # the large message's size once the budget is applied (0: none)
    left_out: str  # why the large message is left out ("" if it is not)
    refusal: str  # why the drill is refused ("" if it may run)
    spending: str  # what it spends and what is left

    @property
    def line(self) -> str:
        """What it spends, what is left, and why the large message is left out."""
        return self.spending + (f"; {self.left_out}" if self.left_out else "")


def drill_spend(check: SpendCheck, probes: int, spam: bool, large: int) -> DrillSpend:
    """The probes and the spam message must fit, or the drill is refused; the large one is left out if it does not."""
    small = probes + int(spam)
    small_bytes = small * SMALL_MESSAGE_BYTES
    if not check.fits(small, small_bytes):
        refusal = f"refused by the budget: {check.over('the drill', small, small_bytes)}"
        return DrillSpend(0, 0, 0, "", refusal, refusal)
    left_out = ""
    if large and not check.fits(small + 1, small_bytes + large):
        left_out = "large message left out: " + check.over(f"with its {large} bytes the drill", small + 1,
                                                          small_bytes + large)
        large = 0
    messages, nbytes = small + bool(large), small_bytes + large
    return DrillSpend(messages, nbytes, large, left_out, "", check.plan(messages, nbytes))


# ------------------------------------------------------------------ the canary


def canary_spend(checks: dict[str, SpendCheck], per_domain: dict[str, int]) -> tuple[list[str], str]:
    """The canary's lines (one per domain) and, if any domain's canaries do not fit, the refusal.

    All or nothing: a canary proves every backup host; half a run proves less and spends anyway.
    """
    lines, refusals = [], []
    for domain, messages in per_domain.items():
        check, nbytes = checks[domain], messages * SMALL_MESSAGE_BYTES
        lines.append(check.plan(messages, nbytes))
        if not check.fits(messages, nbytes):
            refusals.append(check.over(f"the canary for {domain}", messages, nbytes))
    refusal = ("refused by the budget, nothing sent: " + "; ".join(refusals)) if refusals else ""
    return lines, refusal


def per_domain(canaries) -> dict[str, int]:
    """How many canaries a run sends for each domain (what the provider's budget counts)."""
    counts: dict[str, int] = {}
    for canary in canaries:
        counts[canary.domain] = counts.get(canary.domain, 0) + 1
    return counts


def canary_spent(send) -> bool:
    """Whether a canary's hand-off (a ``SendOutcome``) counts against the budget: taken, or its fate unknown
    (the connection lost during DATA, the send host cut off): the ledger may count too much, never too little."""
    return send.ok or (send.stage == "DATA" and send.code is None) or send.stage == "send host"
