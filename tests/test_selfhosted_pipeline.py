"""Provider selfhosted through the whole pipeline (issue #10, the wiring).

Two parts: the ``SelfHostedProvider`` against a fake relay Postfix (no sandbox),
and the pyinfra CLI against the sandbox world with ``--data provider=selfhosted``
(the relay host of ``world.json["selfhosted"]``), like tests/test_deploy_cli.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backupmx.config import load_settings
from backupmx.errors import BackupMXError, ConfigError
from backupmx.selfhosted import RelayTarget, SelfHostedProvider, parse_queue_line

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
DOMAIN = "example.org"


# --------------------------------------------------------------- settings


def base_data(**overrides):
    data = {
        "domains": [{"name": DOMAIN, "primary_mx": [{"host": "mail.example.org", "priority": 10}]}],
        "backup_mx": {"provider": "rollernet", "hosts": ["mx2.rollernet.us"], "priority": 20},
        "relay_cidrs": ["192.0.2.0/24"],
        "vault": {"addr": "http://127.0.0.1:8200", "secret_path": "secret/viktor"},
        "providers": {"selfhosted": {"backup_mx": {"provider": "selfhosted", "priority": 30}}},
    }
    data.update(overrides)
    return data


RELAYS = {"relay-a": {"hostname": "relay1.example.org", "public_addresses": ["198.51.100.7"],
                      "primary": "mail.example.org"}}


def test_provider_name_picks_the_providers_entry():
    settings = load_settings(base_data(provider="selfhosted"), RELAYS)
    assert settings.selfhosted and settings.provider.name == "selfhosted"
    assert settings.backup_mx.hosts == ("relay1.example.org",)  # derived from the relay hosts
    assert [str(net) for net in settings.relay_cidrs] == ["198.51.100.7/32"]  # ditto
    assert settings.relay_hosts == ("relay-a",)


def test_without_a_provider_name_nothing_changes():
    settings = load_settings(base_data(), RELAYS)
    assert not settings.selfhosted and settings.relay_hosts == ()
    assert [str(net) for net in settings.relay_cidrs] == ["192.0.2.0/24"]


@pytest.mark.parametrize("data,relays,field_name", [
    (base_data(provider="selfhosted"), None, "inventory data relay:"),
    (base_data(provider="selfhosted"), {}, "inventory data relay:"),
    (base_data(provider="nope"), RELAYS, "inventory data provider:"),
    ({**base_data(provider="selfhosted"), "providers": None}, RELAYS, "inventory data provider:"),
    (base_data(provider="selfhosted", providers={"selfhosted": {"backup_mx": {
        "provider": "selfhosted", "priority": 30, "hosts": ["other.example.org"]}}}), RELAYS,
     "inventory data backup_mx.hosts:"),
    (base_data(provider="selfhosted", providers={"selfhosted": {"backup_mx": {
        "provider": "selfhosted", "priority": 30}, "provider": {"name": "selfhosted", "backend": "api"}}}),
     RELAYS, "inventory data provider.backend:"),
    (base_data(provider="selfhosted", providers={"selfhosted": {"backup_mx": {
        "provider": "selfhosted", "priority": 30}, "vault": {}}}), RELAYS, "inventory data providers.selfhosted.vault:"),
])
def test_bad_selfhosted_data_is_one_line_naming_the_field(data, relays, field_name):
    with pytest.raises(ConfigError) as caught:
        load_settings(data, relays)
    assert str(caught.value).startswith(field_name) and "\n" not in str(caught.value)


# ------------------------------------------------- the provider, fake Postfix


@dataclass
class FakeRelay:
    """What SelfHostedProvider uses of backupmx.relayhost.RelayHost."""

    hostname: str = "relay1.example.org"
    nexthop: str = "smtp:[mail.example.org]:25"
    postfix_config_dir: str = "/etc/postfix"
    postfix_reload: tuple = ("postfix", "-c", "/etc/postfix", "reload")
    relay_cidrs: tuple = ()

    def postconf(self, *args):
        return ["postconf", "-c", self.postfix_config_dir, *args]

    def postqueue(self, *args):
        return ["postqueue", "-c", self.postfix_config_dir, *args]


@dataclass
class FakePostfix:
    main: dict = field(default_factory=lambda: {"relay_domains": DOMAIN, "defer_transports": "",
                                                "relay_recipient_maps": ""})
    queue: list = field(default_factory=list)
    ran: list = field(default_factory=list)

    def __call__(self, argv):
        self.ran.append(argv)
        if argv[0] == "postconf" and "-e" in argv:
            key, _, value = argv[-1].partition("=")
            self.main[key] = value
            return True, [], ""
        if argv[0] == "postconf":
            return True, [f"{name} = {self.main[name]}" for name in argv[3:]], ""
        if argv[:1] == ["postqueue"] and argv[-1] == "-j":
            return True, [json.dumps(entry) for entry in self.queue], ""
        return True, [], ""


def provider_with(postfix: FakePostfix) -> SelfHostedProvider:
    settings = load_settings(base_data(provider="selfhosted"), RELAYS)
    return SelfHostedProvider(settings, [RelayTarget("relay-a", FakeRelay(), postfix)])


def test_facts_from_the_relay_postfix():
    facts = provider_with(FakePostfix()).domain_facts(DOMAIN)
    assert (facts.present.value, facts.enabled.value, facts.user_table_default.value, facts.hold.value) == \
        (True, True, "allow_any", False)
    assert "relay-a" in facts.enabled.evidence


def test_disable_takes_the_domain_out_of_relay_domains_and_reloads():
    postfix = FakePostfix(main={"relay_domains": f"other.org, {DOMAIN}", "defer_transports": "",
                                "relay_recipient_maps": ""})
    after = provider_with(postfix).set_enabled(DOMAIN, False)
    assert after.value is False and postfix.main["relay_domains"] == "other.org"
    assert ["postfix", "-c", "/etc/postfix", "reload"] in postfix.ran


def test_hold_defers_the_primary_transport_and_release_flushes():
    postfix = FakePostfix()
    provider = provider_with(postfix)
    assert provider.set_hold(DOMAIN, True).value is True and postfix.main["defer_transports"] == "smtp"
    assert provider.set_hold(DOMAIN, False).value is False and postfix.main["defer_transports"] == ""
    assert ["postqueue", "-c", "/etc/postfix", "-f"] in postfix.ran


def test_queue_lists_only_the_domain_and_never_secrets():
    postfix = FakePostfix(queue=[
        {"queue_name": "deferred", "queue_id": "4ABC", "arrival_time": 1764111600, "message_size": 900,
         "sender": "probe-1@sender.test", "recipients": [{"address": f"postmaster@{DOMAIN}",
                                                            "delay_reason": "connect to primary: refused"}]},
        {"queue_name": "active", "queue_id": "5DEF", "arrival_time": 1764111601, "message_size": 10,
         "sender": "x@y.test", "recipients": [{"address": "someone@elsewhere.org"}]},
    ])
    messages = provider_with(postfix).queue(DOMAIN)
    assert [(m.id, m.sender, m.attempts, m.held) for m in messages] == \
        [("relay-a:4ABC", "probe-1@sender.test", 1, False)]
    assert messages[0].last_error == "connect to primary: refused"


def test_a_failed_command_is_one_line_naming_the_relay():
    def broken(argv):
        return False, [], "postconf: fatal: open /etc/postfix/main.cf: No such file or directory\n"

    settings = load_settings(base_data(provider="selfhosted"), RELAYS)
    provider = SelfHostedProvider(settings, [RelayTarget("relay-a", FakeRelay(), broken)])
    with pytest.raises(BackupMXError) as caught:
        provider.set_hold(DOMAIN, True)
    assert "relay host relay-a: postconf failed (postconf: fatal" in str(caught.value)


def test_parse_queue_line_ignores_blank_lines():
    assert parse_queue_line("  ", DOMAIN, False, "r") is None
