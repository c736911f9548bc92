"""The backup provider's profile in the inventory (``provider``): which backend answers the
gates and the assumed shape of Roller Network's account API (docs/provider-api.md). The gate
ledger of operator-confirmed facts: ``backupmx.core.gate_ledger`` (docs/gates.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from backupmx.core.budget import FREE_TIER, Budget, provider_budget
from backupmx.core.errors import ConfigError
from backupmx.core.validate import known_keys, mapping, near_miss, timeout_seconds

# ------------------------------------------------------------ provider profile

SELFHOSTED = "selfhosted"
ROLLERNET = "rollernet"
# The provider kinds this tool implements: `backup_mx.provider` and `provider.name` name one.
PROVIDER_KINDS = (ROLLERNET, SELFHOSTED)
ACC_API_BASE = "https://acc.rollernet.us/api/api.php"
ACC_MANUAL_URL = "https://acc.rollernet.us/"
PROVIDER_BACKENDS = ("api", "ledger")
# Provider selfhosted's backend: facts and changes over SSH on the `relay` group.
RELAYHOST_BACKEND = "relayhost"

# Canonical values of the provider facts (docs/provider-api.md).
DOMAIN_MODES = ("secondary_mx", "mail_mirror", "primary")
USER_TABLE_DEFAULTS = ("allow_any", "deny")
OVERAGE_REPLIES = ("4xx", "5xx")

# What the api backend may ask, by logical name; the profile maps each to the
# provider's action name (null: the API cannot do it, the ledger answers instead).
ACC_READ_ACTIONS = ("domain_get", "usertable_get", "relay_addresses", "queue_list", "bounce_list")
ACC_WRITE_ACTIONS = ("domain_set", "hold_set")
# The facts the api backend can read: "<logical action>:<path in the answer's data>".
ACC_FACTS = ("mode", "enabled", "hold", "user_table_default", "relay_cidrs")

# The assumed shape of the ACC API (docs/provider-api.md), as data: a wrong
# guess is corrected in the inventory's `provider.api`, not in code.
DEFAULT_ACC_API: dict[str, Any] = {
    "module": "mail",
    "actions": {name: name for name in ACC_READ_ACTIONS + ACC_WRITE_ACTIONS},
    "facts": {
        "mode": "domain_get:mode",
        "enabled": "domain_get:enabled",
        "hold": "domain_get:hold",
        "user_table_default": "usertable_get:default",
        "relay_cidrs": "relay_addresses:cidrs",
    },
    # Field names inside `d`.
    "request": {"domain": "domain", "enabled": "enabled", "hold": "hold"},
    # Where the envelope keeps its parts (dotted paths).
    "envelope": {"status": "status", "ok": "ok", "data": "data", "error_code": "error.code",
                 "error_message": "error.message"},
    # Error codes with a meaning for us.
    "errors": {"domain_not_found": ["domain_not_found"]},
    # The provider's words for each canonical value.
    "values": {
        "mode": {value: value for value in DOMAIN_MODES},
        "user_table_default": {value: value for value in USER_TABLE_DEFAULTS},
    },
}

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class FrozenMap(Mapping):
    """A read-only, hashable mapping, so the settings stay a frozen, comparable value."""

    def __init__(self, data: Mapping[str, Any] | None = None):
        self._data = {key: freeze(value) for key, value in (data or {}).items()}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items(), key=lambda item: item[0])))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMap(value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


@dataclass(frozen=True)
class AccApiShape:
    """Module, action names and response paths of the ACC API: data, defaults in ``DEFAULT_ACC_API``."""

    module: str
    actions: FrozenMap  # logical name -> provider action name or None
    facts: FrozenMap  # fact -> (logical action, path) or None
    request: FrozenMap
    envelope: FrozenMap
    errors: FrozenMap  # meaning -> tuple of codes
    values: FrozenMap  # fact -> {provider word: canonical value}

    def action(self, logical: str) -> str | None:
        return self.actions.get(logical)

    def fact_source(self, fact: str) -> tuple[str, str] | None:
        """(logical action, path) the fact is read from, or None when the API cannot tell it."""
        source = self.facts.get(fact)
        if source is None or self.action(source[0]) is None:
            return None
        return source


@dataclass(frozen=True)
class ProviderProfile:
    name: str = "rollernet"
    # "api": the provider's account API, with the ledger for what it cannot tell;
    # "ledger": operator-confirmed facts only (changes are printed as manual steps).
    backend: str = "ledger"
    api_base: str = ACC_API_BASE
    user: str | None = None
    # The Vault key (under vault.secret_path) holding the API key; its env
    # stand-in for an emergency is the upper-case name (ROLLERNET_API_KEY).
    key_secret: str = "rollernet_api_key"
    ca_bundle: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    retries: int = 3
    # Where an operator does by hand what the API cannot (printed in manual steps).
    manual_url: str = ACC_MANUAL_URL
    api: AccApiShape = field(default_factory=lambda: _acc_api_shape({}))
    # What the provider lets a domain relay per rolling window (None: not metered) and
    # this tool's share of it: Roller Network's free tier unless the profile says
    # otherwise (backupmx.core.budget, docs/budget.md).
    budget: Budget | None = FREE_TIER


def provider_kind(value: Any, field_name: str) -> str:
    """A provider kind this tool implements (``PROVIDER_KINDS``): an unknown one would silently
    be treated as Roller Network."""
    if isinstance(value, str) and value in PROVIDER_KINDS:
        return value
    kinds = ", ".join(PROVIDER_KINDS)
    meant = near_miss(value, PROVIDER_KINDS, squash="-_ .") if isinstance(value, str) else None
    fix = f"did you mean {meant}? The kinds: {kinds}" if meant else f"use one of {kinds}"
    raise ConfigError(field_name, f"{value!r} is not a provider kind", fix)


def provider_profile(value: Any, backup_provider: str) -> ProviderProfile:
    """The ``provider`` inventory key; absent means the ledger backend for ``backup_mx.provider``."""
    if isinstance(value, Mapping) and "name" in value:
        provider_kind(value["name"], "provider.name")
    if value is None:
        return _selfhosted_profile({}) if backup_provider == SELFHOSTED else ProviderProfile(name=backup_provider)
    value = mapping(value, "provider")
    if value.get("name", backup_provider) == SELFHOSTED or (backup_provider == SELFHOSTED and "name" not in value):
        if backup_provider != SELFHOSTED:
            raise ConfigError("backup_mx.provider", f"{backup_provider!r} differs from provider.name 'selfhosted'",
                              "name the same provider profile in both")
        return _selfhosted_profile(value)
    if not value:
        raise ConfigError("provider", "is an empty profile",
                          "set provider.backend ('api' with provider.user, or 'ledger'), or leave `provider` out")
    known_keys(value, "provider", ("name", "backend", "api_base", "user", "key_secret", "ca_bundle",
                                    "connect_timeout", "read_timeout", "retries", "manual_url", "api", "budget"))
    name = value.get("name", backup_provider)
    if name != backup_provider:
        raise ConfigError("provider.name", f"{name!r} differs from backup_mx.provider {backup_provider!r}",
                          "name the same provider profile in both")
    backend = value.get("backend", "ledger")
    if backend not in PROVIDER_BACKENDS:
        raise ConfigError("provider.backend", f"{backend!r} is not a backend", "use 'api' or 'ledger'")
    api_base = value.get("api_base", ACC_API_BASE)
    if not isinstance(api_base, str) or not re.match(r"^https?://[^/\s?#]+[^\s?#]*$", api_base):
        raise ConfigError("provider.api_base", f"{api_base!r} is not a URL without a query string",
                          f"e.g. {ACC_API_BASE}")
    user = value.get("user")
    if backend == "api" and (not isinstance(user, str) or not user.strip()):
        raise ConfigError("provider.user", "missing: the api backend needs the ACC account user name",
                          "set provider.user, or use backend 'ledger'")
    key_secret = value.get("key_secret", "rollernet_api_key")
    if not isinstance(key_secret, str) or not _NAME.match(key_secret):
        raise ConfigError("provider.key_secret", f"{key_secret!r} is not a Vault key name")
    ca_bundle = value.get("ca_bundle")
    if ca_bundle is not None and (not isinstance(ca_bundle, str) or not ca_bundle):
        raise ConfigError("provider.ca_bundle", f"{ca_bundle!r} is not a file path")
    retries = value.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ConfigError("provider.retries", f"{retries!r} is not a retry count (0-10)")
    manual_url = value.get("manual_url", ACC_MANUAL_URL)
    if not isinstance(manual_url, str) or not manual_url:
        raise ConfigError("provider.manual_url", f"{manual_url!r} is not a URL")
    return ProviderProfile(
        name=name, backend=backend, api_base=api_base, user=user, key_secret=key_secret, ca_bundle=ca_bundle,
        connect_timeout=timeout_seconds(value.get("connect_timeout", 5.0), "provider.connect_timeout"),
        read_timeout=timeout_seconds(value.get("read_timeout", 20.0), "provider.read_timeout"),
        retries=retries, manual_url=manual_url,
        api=_acc_api_shape(mapping(value.get("api") or {}, "provider.api")),
        budget=provider_budget(value.get("budget"), "budget" in value, FREE_TIER),
    )


def _selfhosted_profile(value: Mapping[str, Any]) -> ProviderProfile:
    """Provider ``selfhosted``: the relay hosts answer for themselves, so the ACC fields do not apply."""
    for key in value:
        if key not in ("name", "budget"):
            raise ConfigError(f"provider.{key}", "does not apply to provider selfhosted (its facts come from the "
                              "relay hosts over SSH)", "leave only provider.name = 'selfhosted' (and a budget, if "
                              "its network meters mail)")
    return ProviderProfile(name=SELFHOSTED, backend=RELAYHOST_BACKEND, manual_url="", key_secret="",
                           budget=provider_budget(value.get("budget"), "budget" in value, None))






def _acc_api_shape(value: Mapping[str, Any]) -> AccApiShape:
    """The inventory's ``provider.api`` laid over the assumed defaults, key by key."""
    known_keys(value, "provider.api", tuple(DEFAULT_ACC_API))
    module = value.get("module", DEFAULT_ACC_API["module"])
    if not isinstance(module, str) or not _NAME.match(module):
        raise ConfigError("provider.api.module", f"{module!r} is not a module name")

    def section(name: str, known: tuple[str, ...] | None = None) -> dict[str, Any]:
        given = mapping(value.get(name) or {}, f"provider.api.{name}")
        if known is not None:
            known_keys(given, f"provider.api.{name}", known)
        return {**DEFAULT_ACC_API[name], **given}

    actions = section("actions", ACC_READ_ACTIONS + ACC_WRITE_ACTIONS)
    for logical, action in actions.items():
        if action is not None and (not isinstance(action, str) or not _NAME.match(action)):
            raise ConfigError(f"provider.api.actions.{logical}", f"{action!r} is not an action name",
                              "give the provider's name for it, or null if the API cannot do it")
    facts = {}
    for fact, source in section("facts", ACC_FACTS).items():
        where = f"provider.api.facts.{fact}"
        if source is None:
            facts[fact] = None
            continue
        logical, _, path = str(source).partition(":")
        if logical not in ACC_READ_ACTIONS or not _PATH.match(path):
            raise ConfigError(where, f"{source!r} is not '<action>:<path>'",
                              f"e.g. 'domain_get:mode'; actions: {', '.join(ACC_READ_ACTIONS)}")
        facts[fact] = (logical, path)
    request = section("request", ("domain", "enabled", "hold"))
    for key, name in request.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"provider.api.request.{key}", f"{name!r} is not a field name")
    envelope = section("envelope", tuple(DEFAULT_ACC_API["envelope"]))
    for key, path in envelope.items():
        if not isinstance(path, str) or not (_PATH.match(path) or key == "ok"):
            raise ConfigError(f"provider.api.envelope.{key}", f"{path!r} is not a dotted path")
    errors = {}
    for meaning, codes in section("errors", tuple(DEFAULT_ACC_API["errors"])).items():
        codes = [codes] if isinstance(codes, str) else codes
        if not isinstance(codes, (list, tuple)) or not all(isinstance(code, str) and code for code in codes):
            raise ConfigError(f"provider.api.errors.{meaning}", f"{codes!r} is not a list of error codes")
        errors[meaning] = tuple(codes)
    values = {}
    allowed = {"mode": DOMAIN_MODES, "user_table_default": USER_TABLE_DEFAULTS}
    for fact, words in section("values", tuple(allowed)).items():
        words = mapping(words, f"provider.api.values.{fact}")
        for word, canonical in words.items():
            if canonical not in allowed[fact]:
                raise ConfigError(f"provider.api.values.{fact}[{word!r}]", f"{canonical!r} is not one of "
                                  f"{', '.join(allowed[fact])}")
        values[fact] = dict(words)
    return AccApiShape(module, FrozenMap(actions), FrozenMap(facts), FrozenMap(request), FrozenMap(envelope),
                       FrozenMap(errors), FrozenMap(values))
