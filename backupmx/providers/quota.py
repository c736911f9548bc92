"""The provider's quota: what it lets one domain relay per rolling window, and what it does over it.

The figures come from the provider profile (``provider.budget``, backupmx.core.budget):
Roller Network's free tier unless the inventory says otherwise, none for provider
``selfhosted`` (its relay queues whatever its disk holds). What happens to mail over
the quota is the provider's: Roller Network is reported to suspend the domain for 48 h
answering 5xx; gate G2's ledger entry, once a human confirmed it, says 4xx or 5xx.
"""

from __future__ import annotations

from backupmx.core.budget import Budget
from backupmx.core.settings import Settings

ROLLERNET = "rollernet"
ROLLERNET_SUSPENSION_HOURS = 48


def quota(settings: Settings) -> Budget | None:
    """The chosen provider's budget per domain; None when nothing is metered."""
    return settings.provider.budget


def over_quota(settings: Settings) -> str:
    """What the provider does with a domain's mail once it is over the quota, in words."""
    overage = settings.gate_ledger.overage if not settings.selfhosted else None
    if overage is not None and overage.value == "4xx":
        return (f"the provider defers it with 4xx ({overage.describe()}): senders keep it queued and retry, "
                "as long as their own queues last")
    if overage is not None:
        return f"the provider bounces it with 5xx ({overage.describe()}): mail is lost"
    if settings.provider.name == ROLLERNET:
        return (f"Roller Network is reported to suspend the domain for {ROLLERNET_SUSPENSION_HOURS} h answering "
                "5xx (unconfirmed; gate G2): mail bounces")
    return f"{settings.provider.name} refuses the domain's mail (how is unconfirmed): it may bounce"
