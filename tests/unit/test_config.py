"""Stage 0: inventory data is validated into one model; bad input names its field."""

from __future__ import annotations

import copy
import ipaddress
import re

import pytest

from backupmx.core.errors import ConfigError
from backupmx.core.settings import load_settings

GOOD = {
    "domains": [{"name": "viktorbarzin.me", "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
    "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us", "mail2.rollernet.us"], "priority": 20},
    "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24", "2001:db8:2::/48"],
    "vault": {"addr": "https://vault.example.net:8200", "secret_path": "secret/viktor"},
}


def with_change(path: str, value):
    data = copy.deepcopy(GOOD)
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return data


def test_seed_values_load():
    settings = load_settings(GOOD)
    assert [d.name for d in settings.domains] == ["viktorbarzin.me"]
    assert settings.domains[0].zone == "viktorbarzin.me"
    assert settings.backup_mx.priority == 20
    assert settings.relay_cidrs[0] == ipaddress.ip_network("162.216.242.0/24")
    assert settings.vault.mount == "secret" and settings.vault.path == "viktor"
    assert settings.cloudflare.record_quota == 200


BAD = [
    # (change path, value, field named in the error, words in the error)
    ("relay_cidrs.0", "162.216.242.1/24", "relay_cidrs[0]", "did you mean 162.216.242.0/24"),
    ("relay_cidrs.0", "162.216.242.0/33", "relay_cidrs[0]", "not an IP network"),
    ("relay_cidrs.0", "banana", "relay_cidrs[0]", "not a network"),
    ("relay_cidrs.0", "0.0.0.0/0", "relay_cidrs[0]", "wider than /16"),
    ("relay_cidrs.0", "10.0.0.0/8", "relay_cidrs[0]", "wider than /16"),
    ("relay_cidrs.2", "2001::/16", "relay_cidrs[2]", "wider than /32"),
    ("relay_cidrs.1", "162.216.242.0/24", "relay_cidrs[1]", "listed twice"),
    ("relay_cidrs", [], "relay_cidrs", "empty"),
    ("relay_cidrs", "162.216.242.0/24", "relay_cidrs", "must be a list"),
    ("relay_cidrs", KeyError, "relay_cidrs", "missing"),
    ("backup_mx.priority", 1, "backup_mx.priority", "not worse than primary preference 1"),
    ("backup_mx.priority", 0, "backup_mx.priority", "not worse"),
    ("backup_mx.priority", 70000, "backup_mx.priority", "0-65535"),
    ("backup_mx.priority", "20", "backup_mx.priority", "whole number"),
    ("backup_mx.priority", True, "backup_mx.priority", "whole number"),
    ("backup_mx.hosts.0", "mail.viktorbarzin.me", "primary_mx", "also a backup MX host"),
    ("backup_mx.hosts.1", "mail.rollernet.us", "backup_mx.hosts", "twice"),
    ("backup_mx.hosts.0", "MAIL.rollernet.us", "backup_mx.hosts[0]", "write 'mail.rollernet.us'"),
    ("backup_mx.hosts.0", "mail.rollernet.us.", "backup_mx.hosts[0]", "write 'mail.rollernet.us'"),
    ("backup_mx.hosts.0", "162.216.242.10", "backup_mx.hosts[0]", "IP address"),
    ("backup_mx.hosts.0", "mail_relay.example", "backup_mx.hosts[0]", "not a valid host name"),
    ("backup_mx.provider", "", "backup_mx.provider", "is not a provider kind"),
    ("domains.0.name", "bücher.example", "domains[0].name", "xn--bcher-kva.example"),
    ("domains.0.name", "localhost", "domains[0].name", "not a valid host name"),
    ("domains.0.primary_mx", [], "domains[0].primary_mx", "empty"),
    ("domains.0.primary_mx.0.priority", -1, "domains[0].primary_mx[0].priority", "0-65535"),
    ("domains.0.zone", "other.example", "domains[0].zone", "not inside zone"),
    ("vault.secret_path", "viktor", "vault.secret_path", "<mount>/<path>"),
    ("vault.addr", "vault.example.net", "vault.addr", "not a Vault URL"),
    ("vault", KeyError, "vault", "missing"),
    ("domains", KeyError, "domains", "missing"),
]


@pytest.mark.parametrize("path,value,field,words", BAD, ids=[f"{p}={v!r}" for p, v, _, _ in BAD])
def test_bad_input_names_the_field(path, value, field, words):
    with pytest.raises(ConfigError) as caught:
        load_settings(with_change(path, value))
    message = str(caught.value)
    assert field in message
    assert words in message
    assert "\n" not in message


def test_duplicate_domain_refused():
    data = copy.deepcopy(GOOD)
    data["domains"].append(copy.deepcopy(data["domains"][0]))
    with pytest.raises(ConfigError, match="'viktorbarzin.me' is listed twice"):
        load_settings(data)


def test_backup_must_be_worse_than_every_primary_of_every_domain():
    data = copy.deepcopy(GOOD)
    data["domains"].append({"name": "example.org", "primary_mx": [{"host": "mx.example.org", "priority": 30}]})
    with pytest.raises(ConfigError, match="not worse than primary preference 30 of example.org"):
        load_settings(data)


# --- provider profile, gate ledger, STARTTLS endpoints (docs/provider-api.md, docs/gates.md) ---------

API_PROFILE = {"name": "rollernet", "backend": "api", "user": "viktor"}
ENTRY = {"value": "4xx", "date": "2026-07-04", "evidence": "support ticket 1234"}


def with_data(**changes):
    data = copy.deepcopy(GOOD)
    data.update(copy.deepcopy(changes))
    return data


def test_without_a_provider_key_the_backend_is_the_ledger_and_nothing_is_confirmed():
    settings = load_settings(GOOD)
    assert settings.provider.name == "rollernet" and settings.provider.backend == "ledger"
    assert settings.gate_ledger.overage is None and settings.gate_ledger.relay_cidrs is None


def test_api_profile_defaults_match_the_assumed_acc_shape():
    profile = load_settings(with_data(provider=API_PROFILE)).provider
    assert profile.api_base == "https://acc.rollernet.us/api/api.php"
    assert profile.api.module == "mail" and profile.api.action("domain_get") == "domain_get"
    assert profile.api.fact_source("user_table_default") == ("usertable_get", "default")
    assert profile.key_secret == "rollernet_api_key"


def test_profile_corrections_are_data_merged_over_the_defaults():
    profile = load_settings(with_data(provider={**API_PROFILE, "api": {
        "module": "secmx", "actions": {"domain_get": "domain_info", "hold_set": None},
        "facts": {"relay_cidrs": None, "mode": "domain_get:settings.mode"},
        "values": {"mode": {"Secondary MX": "secondary_mx"}}}})).provider
    assert profile.api.module == "secmx"
    assert profile.api.action("domain_get") == "domain_info" and profile.api.action("hold_set") is None
    assert profile.api.action("usertable_get") == "usertable_get"  # untouched default
    assert profile.api.fact_source("relay_cidrs") is None
    assert profile.api.fact_source("mode") == ("domain_get", "settings.mode")
    assert dict(profile.api.values["mode"]) == {"Secondary MX": "secondary_mx"}


def test_settings_stay_a_comparable_value():
    data = with_data(provider=API_PROFILE, gate_ledger={"overage": ENTRY})
    assert load_settings(data) == load_settings(data)
    hash(load_settings(data))


def test_ledger_entries_are_parsed_with_their_date_and_evidence():
    ledger = load_settings(with_data(gate_ledger={
        "overage": ENTRY,
        "relay_cidrs": {"value": ["162.216.242.0/24"], "date": "2026-07-04T10:00:00Z", "evidence": "ACC screenshot"},
        "domains": {"viktorbarzin.me": {"mode": {"value": "secondary_mx", "date": "2026-07-04",
                                                 "evidence": "ACC screenshot 2026-07-04"}}},
    })).gate_ledger
    assert ledger.overage.value == "4xx" and ledger.overage.date.isoformat() == "2026-07-04"
    assert ledger.overage.describe() == "ledger 2026-07-04: support ticket 1234"
    assert ledger.relay_cidrs.value == (ipaddress.ip_network("162.216.242.0/24"),)
    assert ledger.domain_fact("viktorbarzin.me", "mode").value == "secondary_mx"
    assert ledger.domain_fact("viktorbarzin.me", "hold") is None


def test_smtp_endpoints_and_ca_bundle_for_the_starttls_gate():
    data = copy.deepcopy(GOOD)
    data["backup_mx"]["smtp_endpoints"] = {"mail.rollernet.us": "127.0.0.1:2525"}
    data["backup_mx"]["tls_ca_bundle"] = "/tmp/ca.pem"
    backup = load_settings(data).backup_mx
    assert backup.smtp_endpoint("mail.rollernet.us") == ("127.0.0.1", 2525)
    assert backup.smtp_endpoint("mail2.rollernet.us") == ("mail2.rollernet.us", 25)
    assert backup.tls_ca_bundle == "/tmp/ca.pem"


PROFILE_AND_LEDGER_BAD = [
    # (top-level key, value, field named in the error, words in the error)
    ("provider", {"backend": "smtp"}, "provider.backend", "use 'api' or 'ledger'"),
    ("provider", {"backend": "api"}, "provider.user", "needs the ACC account user name"),
    ("provider", {"name": "dynu"}, "provider.name", "is not a provider kind"),
    ("provider", {"name": "selfhosted"}, "backup_mx.provider", "differs from provider.name 'selfhosted'"),
    ("provider", {**API_PROFILE, "api_base": "https://acc.rollernet.us/api/api.php?k=x"}, "provider.api_base",
     "without a query string"),
    ("provider", {**API_PROFILE, "retries": 99}, "provider.retries", "0-10"),
    ("provider", {**API_PROFILE, "usr": "viktor"}, "provider.usr", "not a known key"),
    ("provider", {**API_PROFILE, "api": {"actions": {"domain_gte": "x"}}}, "provider.api.actions.domain_gte",
     "not a known key"),
    ("provider", {**API_PROFILE, "api": {"actions": {"domain_get": "domain get"}}},
     "provider.api.actions.domain_get", "not an action name"),
    ("provider", {**API_PROFILE, "api": {"facts": {"mode": "mode"}}}, "provider.api.facts.mode",
     "'<action>:<path>'"),
    ("provider", {**API_PROFILE, "api": {"values": {"mode": {"2nd": "secondary"}}}},
     "provider.api.values.mode['2nd']", "not one of"),
    ("gate_ledger", {"overage": {**ENTRY, "value": "bounce"}}, "gate_ledger.overage.value", "'4xx' if"),
    ("gate_ledger", {"overage": {**ENTRY, "evidence": ""}}, "gate_ledger.overage.evidence", "support ticket"),
    ("gate_ledger", {"overage": {**ENTRY, "date": "04/07/2026"}}, "gate_ledger.overage.date", "YYYY-MM-DD"),
    ("gate_ledger", {"overage": {"value": "4xx", "evidence": "ticket 1"}}, "gate_ledger.overage.date", "ISO date"),
    ("gate_ledger", {"overage": {**ENTRY, "evidance": "x"}}, "gate_ledger.overage.evidance", "not a known key"),
    ("gate_ledger", {"relay_cidrs": {**ENTRY, "value": ["162.216.242.1/24"]}}, "gate_ledger.relay_cidrs.value[0]",
     "did you mean 162.216.242.0/24"),
    ("gate_ledger", {"domains": {"example.org": {}}}, "gate_ledger.domains['example.org']", "not a domain of"),
    ("gate_ledger", {"domains": {"viktorbarzin.me": {"user_table_default": {**ENTRY, "value": "allow"}}}},
     "gate_ledger.domains['viktorbarzin.me'].user_table_default.value", "allow_any, deny"),
    ("gate_ledger", {"domains": {"viktorbarzin.me": {"enabled": {**ENTRY, "value": "yes"}}}},
     "gate_ledger.domains['viktorbarzin.me'].enabled.value", "true or false"),
]


@pytest.mark.parametrize("key,value,field,words", PROFILE_AND_LEDGER_BAD,
                         ids=[f"{field}" for _, _, field, _ in PROFILE_AND_LEDGER_BAD])
def test_bad_profile_or_ledger_names_the_field(key, value, field, words):
    with pytest.raises(ConfigError) as caught:
        load_settings(with_data(**{key: value}))
    message = str(caught.value)
    assert field in message and words in message, message
    assert "\n" not in message


@pytest.mark.parametrize("change,field", [
    ({"smtp_endpoints": {"mail3.rollernet.us": "127.0.0.1:25"}}, "backup_mx.smtp_endpoints['mail3.rollernet.us']"),
    ({"smtp_endpoints": {"mail.rollernet.us": "mail.rollernet.us"}}, "backup_mx.smtp_endpoints['mail.rollernet.us']"),
    ({"tls_ca_bundle": ""}, "backup_mx.tls_ca_bundle"),
])
def test_bad_starttls_settings_name_the_field(change, field):
    data = copy.deepcopy(GOOD)
    data["backup_mx"].update(change)
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_settings(data)


@pytest.mark.parametrize("backup_provider,profile_name,field,fix", [
    # Both name the same unknown kind: it used to be taken for Roller Network and talk to its API.
    ("self-hosted", "self-hosted", "backup_mx.provider", "did you mean selfhosted?"),
    ("self-hosted", None, "backup_mx.provider", "did you mean selfhosted?"),
    ("Roller_Net", None, "backup_mx.provider", "did you mean rollernet?"),
    ("rollernet", "self_hosted", "provider.name", "did you mean selfhosted?"),
    ("exim", None, "backup_mx.provider", "use one of rollernet, selfhosted"),
    (None, None, "backup_mx.provider", "use one of rollernet, selfhosted"),
])
def test_an_unknown_provider_kind_is_refused(backup_provider, profile_name, field, fix):
    data = with_change("backup_mx.provider", backup_provider)
    if profile_name is not None:
        data["provider"] = {"name": profile_name, "backend": "ledger"}
    with pytest.raises(ConfigError) as caught:
        load_settings(data)
    message = str(caught.value)
    assert caught.value.field == field and message.startswith(f"inventory data {field}: "), message
    assert "is not a provider kind" in message and fix in message, message
