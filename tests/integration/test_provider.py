"""The provider interface: the ``api`` backend against the fake ACC, and the ``ledger`` backend.

Every test starts from the seeded account and resets it afterwards
(``POST /_sandbox/reset``), so the shared world is left as seeded.
"""

from __future__ import annotations

import time

import pytest

from backupmx.core.settings import load_settings
from backupmx.providers.acc import AccAuthError, AccClient, AccNotFound, AccRefused, AccUnavailable
from backupmx.providers.base import API, LEDGER, NONE, ManualStepRequired
from backupmx.providers.ledger import LedgerProvider
from backupmx.providers.registry import open_provider
from backupmx.providers.rollernet import AccProvider
from backupmx_sandbox.seed import DOMAIN
from support.providers import acc_requests, admin, sandbox_data, sandbox_settings, secret_values, secrets_for


def api_provider(world, **profile_changes) -> AccProvider:
    profile = {"name": "rollernet", "backend": "api", "api_base": world["acc_api_base"], "user": world["acc_user"]}
    profile.update(profile_changes)
    settings = sandbox_settings(provider=profile)
    return open_provider(settings, secrets_for(settings))


def client_for(world, key, **profile_changes) -> AccClient:
    provider = api_provider(world, **profile_changes)
    return AccClient(provider.settings.provider, key, backoff_factor=0.05)


# --- the api backend -----------------------------------------------------------------


def test_facts_of_the_seeded_domain_come_from_the_api_with_their_source(acc):
    provider = api_provider(acc)
    facts = provider.domain_facts(DOMAIN)
    assert (facts.present.value, facts.mode.value, facts.enabled.value, facts.user_table_default.value,
            facts.hold.value) == (True, "secondary_mx", True, "allow_any", False)
    assert set(facts.sources().values()) == {API}
    assert facts.mode.evidence == "api mail/domain_get"
    assert facts.user_table_default.evidence == "api mail/usertable_get"
    cidrs = provider.relay_cidrs()
    assert cidrs.value == acc["relay_cidrs"] and cidrs.evidence == "api mail/relay_addresses"
    # G2 has no API: it is always the ledger.
    overage = provider.overage()
    assert overage.source == LEDGER and overage.value == "4xx"


def test_every_request_is_a_post_with_the_key_in_the_body_only(acc):
    provider = api_provider(acc)
    provider.domain_facts(DOMAIN)
    provider.relay_cidrs()
    log = acc_requests(acc)
    assert log and all(entry["method"] == "POST" and entry["key"] == "main" for entry in log)
    # Each answer is asked once per run: domain_get serves mode, enabled and hold.
    assert [entry["action"] for entry in log] == ["domain_get", "usertable_get", "relay_addresses"]


def test_a_domain_not_in_the_account_is_a_fact_not_an_error(acc):
    admin(acc, "state", {"remove": True})
    facts = api_provider(acc).domain_facts(DOMAIN)
    assert facts.present.value is False and facts.present.source == API
    assert "domain_not_found" in facts.present.evidence
    assert not facts.mode.known and not facts.errors


def test_reads_are_retried_on_5xx_and_429_honouring_retry_after(acc):
    admin(acc, "faults", {"server_error": {"count": 2, "status": 502}})
    client = client_for(acc, acc["acc_api_key"])
    assert client.call("domain_get", {"domain": DOMAIN})["mode"] == "secondary_mx"
    assert client.request_count == 3
    admin(acc, "faults", {"rate_limit": {"count": 1, "retry_after": 1}})
    started = time.monotonic()
    client.call("domain_get", {"domain": DOMAIN})
    assert time.monotonic() - started >= 0.9


def test_a_read_that_keeps_failing_names_the_endpoint_without_the_key(acc):
    admin(acc, "faults", {"down": True})
    client = client_for(acc, acc["acc_api_key"])
    with pytest.raises(AccUnavailable) as caught:
        client.call("domain_get", {"domain": DOMAIN})
    message = str(caught.value)
    assert f"POST {acc['acc_api_base']} (m=mail a=domain_get)" in message
    assert "after 3 retries" in message and "run again later" in message
    assert "\n" not in message
    assert not any(value in message for value in secret_values(acc))
    downs = [entry for entry in acc_requests(acc) if entry["outcome"] == "fault:down"]
    assert len(downs) == 4  # the first try and 3 retries


def test_a_write_is_never_resent_after_a_5xx_and_the_state_is_re_read(acc):
    admin(acc, "faults", {"server_error": {"count": 1, "status": 503}})
    provider = api_provider(acc)
    with pytest.raises(AccUnavailable, match="may or may not have been applied"):
        provider.set_hold(DOMAIN, True)
    actions = [entry["action"] for entry in acc_requests(acc)]
    assert actions.count("hold_set") == 1
    assert actions[-1] == "domain_get"  # read back, not sent again


def test_set_hold_and_enabled_are_read_back(acc):
    provider = api_provider(acc)
    after = provider.set_hold(DOMAIN, True)
    assert after.value is True and "re-read api mail/domain_get" in after.evidence
    assert admin(acc, "state")["domains"][DOMAIN]["hold"] is True
    assert provider.set_enabled(DOMAIN, False).value is False
    assert admin(acc, "state")["domains"][DOMAIN]["enabled"] is False


def test_queue_listing(acc):
    assert api_provider(acc).queue(DOMAIN) == []


def test_bounce_listing_and_a_profile_without_it(acc):
    assert api_provider(acc).bounces(DOMAIN) == []
    with pytest.raises(AccRefused, match="provider.api.actions.bounce_list"):
        api_provider(acc, api={"actions": {"bounce_list": None}}).bounces(DOMAIN)


def test_malformed_answer_is_one_line_pointing_at_the_profile(acc):
    admin(acc, "faults", {"malformed": {"count": 1}})
    with pytest.raises(AccUnavailable, match="without a JSON answer.*provider.api.envelope"):
        client_for(acc, acc["acc_api_key"]).call("relay_addresses")


@pytest.mark.parametrize("which,words", [
    ("acc_api_key_noperm", "grant the API key in Vault key rollernet_api_key the mail permissions"),
    ("wrong", "keys cannot be edited"),
])
def test_authentication_and_permission_failures_say_what_to_do(acc, which, words):
    key = acc.get(which, "not-the-key-0123456789")
    with pytest.raises(AccAuthError) as caught:
        client_for(acc, key).call("domain_get", {"domain": DOMAIN})
    assert words in str(caught.value)
    assert key not in str(caught.value)


def test_a_wrong_action_name_is_corrected_in_the_profile_not_the_code(acc):
    provider = api_provider(acc, api={"actions": {"domain_get": "domain_info"}})
    facts = provider.domain_facts(DOMAIN)
    assert not facts.present.known
    assert "correct provider.api.actions.domain_get (or provider.api.module) in the inventory" in facts.present.evidence
    # ... and once corrected (here: back to the fake's name) the same code reads it.
    assert api_provider(acc, api={"actions": {"domain_get": "domain_get"}}).domain_facts(DOMAIN).present.value


def test_an_unmapped_provider_word_is_unknown_with_the_fix(acc):
    provider = api_provider(acc, api={"values": {"mode": {"primary": "primary"}}})
    mode = provider.domain_facts(DOMAIN).mode
    assert mode.source == NONE
    assert "answered mode 'secondary_mx', which provider.api.values.mode does not map" in mode.evidence


def test_a_fact_the_api_cannot_tell_comes_from_the_ledger(acc):
    data = sandbox_data()
    data["provider"]["api"] = {"facts": {"relay_cidrs": None, "hold": None}}
    data["gate_ledger"]["relay_cidrs"] = {"value": ["192.0.2.0/24"], "date": "2026-07-04",
                                          "evidence": "ACC Resource Access page, screenshot 2026-07-04"}
    data["gate_ledger"]["domains"] = {DOMAIN: {"hold": {"value": False, "date": "2026-07-05",
                                                        "evidence": "ACC screenshot"}}}
    settings = load_settings(data)
    provider = open_provider(settings, secrets_for(settings))
    facts = provider.domain_facts(DOMAIN)
    assert facts.mode.source == API and facts.hold.source == LEDGER
    assert facts.hold.evidence == "ledger 2026-07-05: ACC screenshot"
    cidrs = provider.relay_cidrs()
    assert cidrs.source == LEDGER and [str(c) for c in cidrs.value] == ["192.0.2.0/24"]
    assert "relay_addresses" not in [entry["action"] for entry in acc_requests(acc)]


def test_a_missing_action_makes_a_change_a_manual_step(acc):
    provider = api_provider(acc, api={"actions": {"hold_set": None}})
    with pytest.raises(ManualStepRequired) as caught:
        provider.set_hold(DOMAIN, True)
    assert "turn Accept and Hold on" in str(caught.value)


def test_unknown_domain_write_is_refused_in_one_line(acc):
    provider = api_provider(acc)
    with pytest.raises(AccNotFound) as caught:
        provider.client.call("domain_set", {"domain": "nope.example", "enabled": False}, write=True)
    assert "domain_not_found" in str(caught.value) and "\n" not in str(caught.value)


# --- the ledger backend ------------------------------------------------------------------


def test_ledger_backend_reads_facts_and_prints_manual_steps_for_changes(world):
    data = sandbox_data()
    data["provider"] = {"name": "rollernet", "backend": "ledger"}
    data["gate_ledger"]["domains"] = {DOMAIN: {
        "mode": {"value": "secondary_mx", "date": "2026-07-04", "evidence": "ACC screenshot 2026-07-04"},
        "user_table_default": {"value": "deny", "date": "2026-07-04", "evidence": "ACC screenshot 2026-07-04"},
    }}
    settings = load_settings(data)
    provider = open_provider(settings)  # no secret needed
    assert isinstance(provider, LedgerProvider)
    facts = provider.domain_facts(DOMAIN)
    assert facts.present.value is True and facts.present.source == LEDGER  # implied by the recorded mode
    assert facts.user_table_default.value == "deny"
    assert not facts.hold.known and "no gate_ledger.domains['viktorbarzin.me'].hold entry" in facts.hold.evidence
    assert not provider.relay_cidrs().known
    with pytest.raises(ManualStepRequired) as caught:
        provider.set_enabled(DOMAIN, False)
    assert "disable it" in str(caught.value) and caught.value.steps
