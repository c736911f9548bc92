"""A backup provider's budget (``provider.budget`` in the inventory) and what is left of it.

Roller Network's free tier is reported (by a third party, ../shared/PROVIDER-NOTES.md) at
200 messages or 10 MB per rolling 7 days; over it the domain is suspended for 48 h,
answering 5xx. The same quota caps real mail during an outage, so this tool spends
only a share of it (``share``, default a quarter) on its own drills and canaries,
and the gate report says how long an outage the rest covers (docs/budget.md).

``provider.budget`` absent: Roller Network's free tier (the ACC providers); provider
``selfhosted``: none. ``null`` (or ``false``): no budget, nothing is metered. A mapping:
the free tier's figures with the keys it gives laid over them.

The arithmetic is pure: ``Allowance`` takes the entries of the spend ledger
(``backupmx.core.spend``) inside the window and says what is left of this tool's share
and when enough of it frees up for a given spend.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from backupmx.core.errors import ConfigError
from backupmx.core.validate import known_keys, mapping

BUDGET_KEYS = ("messages", "bytes", "days", "share", "min_outage_hours")


@dataclass(frozen=True)
class Budget:
    """What the provider lets one domain relay per rolling window, and this tool's part of it."""

    messages: int = 200
    bytes: int = 10_000_000
    days: int = 7
    # The most of it this tool spends itself (drills, canaries): the rest is kept for real
    # mail during an outage.
    share: float = 0.25
    # The gate report warns when an outage at the usual volume would use up the rest sooner.
    min_outage_hours: float = 72.0

    @property
    def tool_messages(self) -> int:
        return math.floor(self.messages * self.share)

    @property
    def tool_bytes(self) -> int:
        return math.floor(self.bytes * self.share)

    @property
    def outage_messages(self) -> int:
        """What the tool leaves for an outage, whatever it spent: the budget less its whole share."""
        return self.messages - self.tool_messages

    @property
    def outage_bytes(self) -> int:
        return self.bytes - self.tool_bytes

    def describe(self) -> str:
        return f"{count(self.messages)} / {size(self.bytes)} per {self.days} days"

    def describe_share(self) -> str:
        return (f"{count(self.tool_messages)} / {size(self.tool_bytes)} ({percent(self.share)} of "
                f"{self.describe()})")


FREE_TIER = Budget()


def provider_budget(value: Any, given: bool, default: Budget | None) -> Budget | None:
    """``provider.budget``: ``given`` False means absent (then ``default``); None or False: no budget."""
    if not given:
        return default
    if value is None or value is False:
        return None
    value = mapping(value, "provider.budget")
    known_keys(value, "provider.budget", BUDGET_KEYS)
    fields: dict[str, Any] = {}
    for key, low, high, what in (("messages", 1, 10**9, "a message count"), ("bytes", 1, 10**15, "a size in bytes"),
                                 ("days", 1, 31, "a number of days (1-31)")):
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise ConfigError(f"provider.budget.{key}", f"{number!r} is not {what}",
                                  f"e.g. {getattr(FREE_TIER, key)} (Roller Network's free tier); provider.budget: "
                                  "null if the provider has no budget")
            fields[key] = number
    if "share" in value:
        share = value["share"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError("provider.budget.share", f"{share!r} is not a fraction over 0 and at most 1",
                              "the most of the budget this tool spends itself, e.g. 0.25 (a quarter)")
        fields["share"] = float(share)
    if "min_outage_hours" in value:
        hours = value["min_outage_hours"]
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 <= hours <= 8760:
            raise ConfigError("provider.budget.min_outage_hours", f"{hours!r} is not a number of hours (0-8760)",
                              "the gate report warns when the budget covers a shorter outage, e.g. 72; 0: never")
        fields["min_outage_hours"] = float(hours)
    return Budget(**{**FREE_TIER.__dict__, **fields})


# ------------------------------------------------------------------ what is left


@dataclass(frozen=True)
class Spent:
    """One entry of the spend ledger, as the arithmetic needs it."""

    when: datetime.datetime  # aware, UTC
    messages: int
    bytes: int


@dataclass(frozen=True)
class Allowance:
    """This tool's share of a budget at ``now``, after what it spent inside the window."""

    budget: Budget
    now: datetime.datetime
    entries: tuple[Spent, ...]  # inside the window, oldest first

    @classmethod
    def of(cls, budget: Budget, entries: Iterable[Spent], now: datetime.datetime) -> Allowance:
        since = now - datetime.timedelta(days=budget.days)
        inside = sorted((entry for entry in entries if since < entry.when <= now), key=lambda entry: entry.when)
        return cls(budget, now, tuple(inside))

    @property
    def spent_messages(self) -> int:
        return sum(entry.messages for entry in self.entries)

    @property
    def spent_bytes(self) -> int:
        return sum(entry.bytes for entry in self.entries)

    @property
    def messages_left(self) -> int:
        return max(self.budget.tool_messages - self.spent_messages, 0)

    @property
    def bytes_left(self) -> int:
        return max(self.budget.tool_bytes - self.spent_bytes, 0)

    def fits(self, messages: int, nbytes: int) -> bool:
        return messages <= self.messages_left and nbytes <= self.bytes_left

    def frees_at(self, messages: int, nbytes: int) -> datetime.datetime | None:
        """When enough of the window has passed for ``messages``/``nbytes`` to fit; None: never (over the share)."""
        if messages > self.budget.tool_messages or nbytes > self.budget.tool_bytes:
            return None
        if self.fits(messages, nbytes):
            return self.now
        window = datetime.timedelta(days=self.budget.days)
        spent_messages, spent_bytes = self.spent_messages, self.spent_bytes
        for entry in self.entries:
            spent_messages -= entry.messages
            spent_bytes -= entry.bytes
            if (spent_messages + messages <= self.budget.tool_messages
                    and spent_bytes + nbytes <= self.budget.tool_bytes):
                return entry.when + window
        return None  # not reached: with every entry gone, the share alone fits

    def describe_left(self) -> str:
        return (f"{count(self.messages_left)} / {size(self.bytes_left)} left of this tool's "
                f"{self.budget.describe_share()}")

    def describe_frees(self, messages: int, nbytes: int) -> str:
        at = self.frees_at(messages, nbytes)
        if at is None:
            return (f"it never fits: {count(messages)} / {size(nbytes)} is more than this tool's share "
                    f"({count(self.budget.tool_messages)} / {size(self.budget.tool_bytes)})")
        return f"enough frees up at {at.strftime('%Y-%m-%d %H:%M')} UTC (in {duration(at - self.now)})"


# ------------------------------------------------------------------ words


def count(messages: int) -> str:
    return f"{messages} message" + ("" if messages == 1 else "s")


def size(nbytes: float) -> str:
    """Bytes in decimal units, as the provider states its quota (10 MB = 10 000 000 bytes)."""
    if nbytes >= 1_000_000:
        return f"{nbytes / 1_000_000:.3g} MB"
    if nbytes >= 1000:
        return f"{nbytes / 1000:.3g} KB"
    return f"{int(nbytes)} bytes"


def percent(share: float) -> str:
    return "a quarter" if share == 0.25 else "half" if share == 0.5 else f"{share * 100:.3g} %"


def duration(delta: datetime.timedelta) -> str:
    minutes = max(int(delta.total_seconds() // 60), 0)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"

