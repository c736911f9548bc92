"""The gate ledger in the inventory (``gate_ledger``): operator-confirmed facts, each with its
date and evidence, for what no API can tell (docs/gates.md).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Iterable

from backupmx.core.errors import ConfigError
from backupmx.core.profile import DOMAIN_MODES, OVERAGE_REPLIES, USER_TABLE_DEFAULTS, FrozenMap, freeze
from backupmx.core.validate import known_keys, mapping, relay_cidrs

LEDGER_ACCOUNT_FACTS = ("overage", "relay_cidrs")
LEDGER_DOMAIN_FACTS = ("present", "mode", "enabled", "user_table_default", "hold")


@dataclass(frozen=True)
class LedgerEntry:
    """One operator-confirmed fact: its value, when it was confirmed, and the proof."""

    value: Any
    date: datetime.date
    evidence: str

    def describe(self) -> str:
        return f"ledger {self.date.isoformat()}: {self.evidence}"


@dataclass(frozen=True)
class GateLedger:
    overage: LedgerEntry | None = None
    relay_cidrs: LedgerEntry | None = None
    domains: FrozenMap = field(default_factory=FrozenMap)  # domain -> {fact: LedgerEntry}

    def domain_fact(self, domain: str, fact: str) -> LedgerEntry | None:
        return (self.domains.get(domain) or {}).get(fact)


def gate_ledger(value: Any, domain_names: Iterable[str]) -> GateLedger:
    """The ``gate_ledger`` inventory key (docs/gates.md); absent means nothing is confirmed."""
    if value is None:
        return GateLedger()
    value = mapping(value, "gate_ledger")
    known_keys(value, "gate_ledger", LEDGER_ACCOUNT_FACTS + ("domains",))
    overage = _ledger_entry(value.get("overage"), "gate_ledger.overage")
    if overage is not None and overage.value not in OVERAGE_REPLIES:
        raise ConfigError("gate_ledger.overage.value", f"{overage.value!r} is not one of "
                          f"{', '.join(OVERAGE_REPLIES)}", "'4xx' if over-limit mail is deferred, '5xx' if bounced")
    cidrs = _ledger_entry(value.get("relay_cidrs"), "gate_ledger.relay_cidrs")
    if cidrs is not None:
        cidrs = LedgerEntry(relay_cidrs(cidrs.value, "gate_ledger.relay_cidrs.value"), cidrs.date, cidrs.evidence)
    names = set(domain_names)
    per_domain = {}
    for name, facts in mapping(value.get("domains") or {}, "gate_ledger.domains").items():
        where = f"gate_ledger.domains[{name!r}]"
        if name not in names:
            raise ConfigError(where, "is not a domain of this inventory", f"domains: {', '.join(sorted(names))}")
        facts = mapping(facts, where)
        known_keys(facts, where, LEDGER_DOMAIN_FACTS)
        entries = {}
        for fact, raw in facts.items():
            entry = _ledger_entry(raw, f"{where}.{fact}")
            if entry is not None:
                _check_domain_fact(fact, entry.value, f"{where}.{fact}.value")
                entries[fact] = entry
        per_domain[name] = entries
    return GateLedger(overage, cidrs, FrozenMap(per_domain))


def _check_domain_fact(fact: str, value: Any, where: str) -> None:
    if fact in ("present", "enabled", "hold"):
        if not isinstance(value, bool):
            raise ConfigError(where, f"{value!r} is not true or false")
    elif fact == "mode" and value not in DOMAIN_MODES:
        raise ConfigError(where, f"{value!r} is not one of {', '.join(DOMAIN_MODES)}")
    elif fact == "user_table_default" and value not in USER_TABLE_DEFAULTS:
        raise ConfigError(where, f"{value!r} is not one of {', '.join(USER_TABLE_DEFAULTS)}")


def _ledger_entry(value: Any, where: str) -> LedgerEntry | None:
    if value is None:
        return None
    value = mapping(value, where)
    known_keys(value, where, ("value", "date", "evidence"))
    if value.get("value") is None:
        raise ConfigError(f"{where}.value", "missing", "record what was confirmed")
    evidence = value.get("evidence")
    if not isinstance(evidence, str) or len(evidence.strip()) < 3:
        raise ConfigError(f"{where}.evidence", f"{evidence!r} is not evidence",
                          "say where it was confirmed, e.g. 'ACC screenshot 2026-07-04' or a support ticket id")
    return LedgerEntry(freeze(value["value"]), _iso_date(value.get("date"), f"{where}.date"), evidence.strip())


def _iso_date(value: Any, where: str) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            if "T" in value:
                return datetime.datetime.fromisoformat(value).date()
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(where, f"{value!r} is not an ISO date", "write YYYY-MM-DD, e.g. 2026-07-04")


