"""Roller Network as a provider: its account API (``AccClient``) where the profile says the
API can answer, the gate ledger of operator-confirmed facts where it cannot.
"""

from __future__ import annotations

from typing import Any

from backupmx.core.settings import Settings
from backupmx.providers.base import (
    API,
    BouncedMessage,
    Fact,
    ManualStepRequired,
    Provider,
    ProviderError,
    ProviderFacts,
    QueuedMessage,
    unknown,
)
from backupmx.providers.console import console_steps

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30  # seconds; a longer Retry-After is cut to this
from backupmx.providers.acc import AccClient, AccNotFound, AccRefused, AccUnavailable, dig


class AccProvider(Provider):
    """The provider through the ACC API; the ledger answers what the profile says the API cannot."""

    backend = API

    def __init__(self, settings: Settings, client: AccClient, ledger: Provider):
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.name = settings.provider.name
        self._cache: dict[tuple[str, str | None], Any] = {}

    def close(self) -> None:
        self.client.close()

    def _evidence(self, logical: str) -> str:
        return f"api {self.client.shape.module}/{self.client.shape.action(logical)}"

    def _read(self, logical: str, domain: str | None = None) -> Any:
        key = (logical, domain)
        if key not in self._cache:
            self._cache[key] = self.client.call(logical, {"domain": domain} if domain else None)
        return self._cache[key]

    def _forget(self, domain: str) -> None:
        self._cache = {key: value for key, value in self._cache.items() if key[1] != domain}

    def _api_fact(self, fact: str, domain: str | None) -> Fact | None:
        """``fact`` read through the API, or None when the profile says the API cannot tell it."""
        shape = self.client.shape
        source = shape.fact_source(fact)
        if source is None:
            return None
        logical, path = source
        data = self._read(logical, domain)
        try:
            raw = dig(data, path)
        except KeyError:
            return unknown(f"{self._evidence(logical)} answered without {path!r}; correct "
                           f"provider.api.facts.{fact} in the inventory")
        words = shape.values.get(fact)
        if words is not None:
            if raw not in words:
                return unknown(f"{self._evidence(logical)} answered {fact} {raw!r}, which "
                               f"provider.api.values.{fact} does not map; add it in the inventory")
            raw = words[raw]
        elif fact in ("enabled", "hold") and not isinstance(raw, bool):
            return unknown(f"{self._evidence(logical)} answered {fact} {raw!r}, not true/false")
        return Fact(raw, API, self._evidence(logical))

    def domain_facts(self, domain: str) -> ProviderFacts:
        errors: list[str] = []
        if self.client.shape.action("domain_get") is None:
            present = self.ledger.domain_facts(domain).present
        else:
            try:
                self._read("domain_get", domain)
                present = Fact(True, API, self._evidence("domain_get"))
            except AccNotFound:
                present = Fact(False, API, f"{self._evidence('domain_get')}: domain_not_found")
            except ProviderError as error:
                present = unknown(str(error))
                errors.append(str(error))
        values = {}
        for fact in ("mode", "enabled", "user_table_default", "hold"):
            if present.value is False:
                values[fact] = unknown(f"{domain} is not in the account")
                continue
            try:
                found = self._api_fact(fact, domain)
            except AccNotFound:
                found = unknown(f"{domain} is not in the account")
            except ProviderError as error:
                found = unknown(str(error))
                if str(error) not in errors:
                    errors.append(str(error))
            values[fact] = found if found is not None else self.ledger.domain_fact(domain, fact)
        return ProviderFacts(domain, present, values["mode"], values["enabled"], values["user_table_default"],
                             values["hold"], tuple(errors))

    def relay_cidrs(self) -> Fact:
        try:
            found = self._api_fact("relay_cidrs", None)
        except ProviderError as error:
            return unknown(str(error))
        if found is None:
            return self.ledger.relay_cidrs()
        if found.known and (not isinstance(found.value, list) or not all(isinstance(c, str) for c in found.value)):
            return unknown(f"{found.evidence} answered {found.value!r}, not a list of CIDRs")
        return found

    def overage(self) -> Fact:
        # No API tells how an over-limit domain answers: always the ledger.
        return self.ledger.overage()

    def _set(self, domain: str, logical: str, fact: str, wanted: bool, change: str) -> Fact:
        if self.client.shape.action(logical) is None:
            steps = console_steps(self.settings, change, domain)
            raise ManualStepRequired(f"provider {self.name}: the profile has no {logical} action; by hand: "
                                     f"{'; '.join(steps)}", steps)
        lost: AccUnavailable | None = None
        try:
            self.client.call(logical, {"domain": domain, fact: wanted}, write=True)
        except AccUnavailable as error:
            lost = error  # it may have been applied: the re-read below decides
        self._forget(domain)
        try:
            after = self._api_fact(fact, domain)
        except ProviderError:
            if lost:
                raise lost from None
            raise
        if after is None:  # the profile reads this fact from the ledger: trust the write
            return Fact(wanted, API, f"{self._evidence(logical)} (not re-read: provider.api.facts.{fact} is null)")
        if after.value != wanted:
            if lost:
                raise lost
            raise AccRefused(self.client.endpoint(logical), f"accepted, but {after.evidence} still shows "
                             f"{fact} {after.value!r}", "check the domain in the ACC and do it by hand")
        note = " (its answer was lost; re-read confirms)" if lost else ""
        return Fact(after.value, API, f"{self._evidence(logical)}, re-read {after.evidence}{note}")

    def set_hold(self, domain: str, on: bool) -> Fact:
        return self._set(domain, "hold_set", "hold", on, "hold_on" if on else "hold_off")

    def set_enabled(self, domain: str, enabled: bool) -> Fact:
        return self._set(domain, "domain_set", "enabled", enabled, "enable" if enabled else "disable")

    def queue(self, domain: str) -> list[QueuedMessage]:
        entries = self.client.call("queue_list", {"domain": domain})
        if not isinstance(entries, list):
            raise AccRefused(self.client.endpoint("queue_list"), "the answer is not a list",
                             "check provider.api in the inventory (docs/provider-api.md)")
        messages = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            messages.append(QueuedMessage(
                id=str(entry.get("id")), sender=str(entry.get("from")), recipients=tuple(entry.get("to") or ()),
                size=entry.get("size"), queued_at=entry.get("queued_at"), attempts=entry.get("attempts"),
                held=bool(entry.get("held")), last_error=entry.get("last_error")))
        return messages

    def bounces(self, domain: str) -> list[BouncedMessage]:
        entries = self.client.call("bounce_list", {"domain": domain})
        if not isinstance(entries, list):
            raise AccRefused(self.client.endpoint("bounce_list"), "the answer is not a list",
                             "check provider.api in the inventory (docs/provider-api.md)")
        return [BouncedMessage(id=str(entry.get("id")), sender=str(entry.get("from")),
                               recipients=tuple(entry.get("to") or ()), reply=str(entry.get("reply") or ""),
                               at=entry.get("at"), relay=entry.get("relay"))
                for entry in entries if isinstance(entry, dict)]

    def manual_steps(self, change: str, domain: str) -> list[str]:
        return console_steps(self.settings, change, domain)
