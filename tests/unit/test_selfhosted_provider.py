"""Provider selfhosted without a relay host: its settings (``provider=selfhosted`` picks
``providers.selfhosted``), and ``SelfHostedProvider`` against a fake relay Postfix.
Through the whole pipeline in the sandbox: tests/cli/test_selfhosted_pipeline.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.core.settings import load_settings
from backupmx.providers.selfhosted import RelayTarget, SelfHostedProvider, pyinfra_runner, queued_message

DOMAIN = "example.org"


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


@dataclass
class FakeRelay:
    """What SelfHostedProvider uses of backupmx.core.relayhost.RelayHost."""

    hostname: str = "relay1.example.org"
    nexthop: str = "[mail.example.org]:25"
    postfix_config_dir: str = "/etc/postfix"
    relay_cidrs: tuple = ()

    def postfix_reload_argv(self):
        return ["postfix", "-c", self.postfix_config_dir, "reload"]

    def postconf(self, *args):
        return ["postconf", "-c", self.postfix_config_dir, *args]

    def postqueue(self, *args):
        return ["postqueue", "-c", self.postfix_config_dir, *args]


@dataclass
class FakePostfix:
    main: dict = field(default_factory=lambda: {"relay_domains": DOMAIN, "defer_transports": "",
                                                "relay_recipient_maps": "", "transport_maps": "",
                                                "relay_transport": "smtp:[mail.example.org]:25"})
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
    postfix = FakePostfix()
    postfix.main["relay_domains"] = f"other.org, {DOMAIN}"
    after = provider_with(postfix).set_enabled(DOMAIN, False)
    assert after.value is False and postfix.main["relay_domains"] == "other.org"
    # Mail already queued for it still goes to the primary, not to an MX lookup.
    assert postfix.main["transport_maps"] == f"inline:{{{DOMAIN}=smtp:[mail.example.org]:25}}"
    provider_with(postfix).set_enabled(DOMAIN, False)  # again: nothing more
    assert postfix.main["transport_maps"].count(f"{DOMAIN}=") == 1
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


def test_a_dropped_ssh_connection_is_one_line_without_a_traceback():
    class DroppedHost:
        name, connected = "relay-a", True

        def run_shell_command(self, *args, **kwargs):
            raise EOFError("socket closed")

    with pytest.raises(BackupMXError) as caught:
        pyinfra_runner(DroppedHost())(["postqueue", "-j"])
    assert str(caught.value) == ("relay host relay-a: postqueue did not complete (EOFError); check the host, "
                                 "then run again")


def test_a_queued_message_for_other_domains_only_is_not_ours():
    entry = {"queue_id": "ABC", "queue_name": "deferred", "recipients": [{"address": "a@example.net"}]}
    assert queued_message(entry, DOMAIN, False, "r") is None


def test_a_queue_line_that_is_not_json_is_one_line_naming_the_relay():
    def garbled(argv):
        if argv[:1] == ["postqueue"]:
            return True, ["", "postqueue: warning: not a queue file", ""], ""
        return FakePostfix()(argv)

    settings = load_settings(base_data(provider="selfhosted"), RELAYS)
    with pytest.raises(BackupMXError) as caught:
        SelfHostedProvider(settings, [RelayTarget("relay-a", FakeRelay(), garbled)]).queue(DOMAIN)
    assert str(caught.value) == "relay host relay-a: postqueue -j printed a line that is not JSON"
