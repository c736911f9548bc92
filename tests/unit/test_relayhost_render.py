"""The self-hosted relay's pure parts: settings model, rendering, undo, proof judging."""

from __future__ import annotations

import base64

import pytest

from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.core.relayhost import RelayHost, load_relayhost, postfix_size, refuses_what_the_primary_takes, seconds
from backupmx.core.validate import relay_cidrs
from backupmx.mailhost.probes import probe_addresses
from backupmx.postfix.blocks import find_block
from backupmx.providers.relayhost import (
    MASTER_BLOCK,
    OFF,
    configure_main_cf,
    configure_master_cf,
    main_settings,
    render_tls_policy,
    setting_mismatches,
    soft_only_problems,
    trusted_by_mynetworks,
    wanted_files,
)
from backupmx.postfix.postqueue import parse_postqueue_json
from backupmx.postfix.relay_proof import judge_smtp
from facts.relayhost import RelayQueue, RelaySmtpProof

DATA = {"hostname": "relay1.example.org", "public_addresses": ["192.0.2.7", "2001:db8::7"],
        "primary": "mail.example.org", "primary_port": 2525}
DOMAINS = ["example.org", "example.net"]

# What a fresh Debian Postfix looks like, in the parts that matter here.
DEBIAN_MAIN = """\
smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)
myhostname = vm-1234.cloud.internal
mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104
    [::1]/128
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination
inet_interfaces = all"""  # no final newline: kept exactly as found
DEBIAN_MASTER = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
smtp      inet  n       -       y       -       -       smtpd
  -o smtpd_banner=hello
#smtp      inet  n       -       y       -       1       postscreen
#smtpd     pass  -       -       y       -       -       smtpd
#dnsblog   unix  -       -       y       -       0       dnsblog
#tlsproxy  unix  -       -       y       -       0       tlsproxy
pickup    unix  n       -       y       60      1       pickup
"""


def relay(**changes) -> RelayHost:
    return load_relayhost({**DATA, **changes})


def test_defaults():
    r = relay()
    assert (r.queue_lifetime, r.bounce_lifetime) == ("30d", "1d")
    assert r.nexthop == "[mail.example.org]:2525" and r.tls_match == "mail.example.org"
    assert r.primary_tls == "secure" and r.postfix_config_dir == "/etc/postfix" and r.listen_service == "smtp"
    assert [str(n) for n in r.relay_cidrs] == ["192.0.2.7/32", "2001:db8::7/128"]
    assert r.probe_endpoint == ("127.0.0.1", 25)


@pytest.mark.parametrize("change, field", [
    ({"hostname": "not a host"}, "relayhost.hostname"),
    ({"public_addresses": []}, "relayhost.public_addresses"),
    ({"public_addresses": ["192.0.2.0/24"]}, "relayhost.public_addresses[0]"),
    ({"primary_port": 0}, "relayhost.primary_port"),
    ({"primary_tls": "may"}, "relayhost.primary_tls"),
    ({"queue_lifetime": "30 days"}, "relayhost.queue_lifetime"),
    ({"bounce_lifetime": "40d"}, "relayhost.bounce_lifetime"),
    ({"tls_cert": "/etc/ssl/relay.pem"}, "relayhost.tls_key"),
    ({"postfix_config_dir": "etc/postfix"}, "relayhost.postfix_config_dir"),
    ({"dnsbl_sites": "zen.spamhaus.org"}, "relayhost.dnsbl_sites"),
    ({"colour": "blue"}, "relayhost.colour"),
    ({"message_size_limit": "50M"}, "relayhost.message_size_limit"),
    ({"message_size_limit": -1}, "relayhost.message_size_limit"),
    ({"message_size_limit": True}, "relayhost.message_size_limit"),
])
def test_bad_input_names_the_field_in_one_line(change, field):
    with pytest.raises(ConfigError) as caught:
        relay(**change)
    message = str(caught.value)
    assert message.startswith(f"inventory data {field}: ") and "\n" not in message


def test_missing_data():
    with pytest.raises(ConfigError, match=r"^inventory data relayhost: missing"):
        load_relayhost(None)


def test_loopback_relay_address_is_a_valid_relay_cidr_and_probes():
    # The sandbox relay sends from 127.0.0.66: the mail host stage must accept it.
    r = relay(public_addresses=["127.0.0.66"])
    cidrs = relay_cidrs([str(n) for n in r.relay_cidrs])
    probes = probe_addresses(cidrs)
    assert probes.inside == (("127.0.0.66/32", "127.0.0.66"),) and probes.outside == ("203.0.113.1",)


def test_main_settings_never_let_anyone_relay_and_keep_mail_30_days():
    settings = main_settings(relay(), DOMAINS)
    assert settings["relay_domains"] == "example.org, example.net"
    assert settings["relay_recipient_maps"] == ""  # catch-all
    assert settings["mynetworks"] == "" and "permit_mynetworks" not in " ".join(settings.values())
    assert settings["smtpd_relay_restrictions"] == "reject_unauth_destination"
    assert settings["relay_transport"] == "smtp:[mail.example.org]:2525"
    assert settings["maximal_queue_lifetime"] == "30d" and settings["bounce_queue_lifetime"] == "1d"
    assert settings["postscreen_access_list"] == ""  # loopback and friends are tested too
    actions = {k: v for k, v in settings.items() if k.startswith("postscreen_") and k.endswith("_action")}
    assert len(actions) == 6 and set(actions.values()) == {"enforce"}
    assert settings["smtp_tls_CApath"] == "/etc/ssl/certs"


def test_tls_policy_requires_tls_to_the_primary():
    assert render_tls_policy(relay()).splitlines()[-1] == "[mail.example.org]:2525 secure match=mail.example.org"
    assert render_tls_policy(relay(primary_tls="encrypt")).splitlines()[-1] == "[mail.example.org]:2525 encrypt"
    assert render_tls_policy(relay(primary="192.0.2.1", primary_tls_match="mail.example.org")).splitlines()[-1] \
        == "[192.0.2.1]:2525 secure match=mail.example.org"


def test_main_cf_turns_replaced_settings_off_and_gives_them_back():
    new = configure_main_cf(DEBIAN_MAIN, relay(), DOMAINS)
    assert f"{OFF}mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104\n{OFF}    [::1]/128\n" in new
    assert f"{OFF}myhostname = vm-1234.cloud.internal" in new
    assert new.startswith("smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)\n")  # not ours: untouched
    active = [line.split("=")[0].strip() for line in new.splitlines() if line and not line.startswith("#")
              and not line[0].isspace()]
    assert len(active) == len(set(active)), "a setting defined twice"
    assert configure_main_cf(new, relay(), DOMAINS) == new  # idempotent
    assert configure_main_cf(new, relay(), DOMAINS, present=False) == DEBIAN_MAIN  # byte for byte


def test_main_cf_follows_changed_settings_without_losing_the_original():
    first = configure_main_cf(DEBIAN_MAIN, relay(), DOMAINS)
    second = configure_main_cf(first, relay(queue_lifetime="10d"), ["example.org"])
    assert "maximal_queue_lifetime = 10d" in second and "relay_domains = example.org\n" in second
    assert configure_main_cf(second, relay(), DOMAINS, present=False) == DEBIAN_MAIN


def test_master_cf_puts_postscreen_in_front_with_soft_bounce():
    new = configure_master_cf(DEBIAN_MASTER, relay())
    block = find_block(new, MASTER_BLOCK)
    assert "smtp inet n - y - 1 postscreen\n  -o soft_bounce=yes\n" in block
    # The listener's own options now belong to smtpd, which talks SMTP after postscreen.
    assert "smtpd pass - - y - - smtpd\n  -o smtpd_banner=hello\n" in block
    assert f"{OFF}smtp      inet  n       -       y       -       -       smtpd\n{OFF}  -o smtpd_banner=hello\n" in new
    assert configure_master_cf(new, relay()) == new
    assert configure_master_cf(new, relay(), present=False) == DEBIAN_MASTER


def test_master_cf_without_the_listener_is_one_line():
    with pytest.raises(BackupMXError, match=r"^relayhost.listen_service: .* has no service submission/inet"):
        configure_master_cf(DEBIAN_MASTER, relay(listen_service="submission"))


def test_wanted_files_and_removal():
    r = relay()
    files = wanted_files(r, DOMAINS, DEBIAN_MAIN, DEBIAN_MASTER)
    assert list(files) == r.managed_paths() and files[r.tls_policy_path]
    back = wanted_files(r, DOMAINS, files[r.main_cf_path], files[r.master_cf_path], present=False)
    assert back == {r.main_cf_path: DEBIAN_MAIN, r.master_cf_path: DEBIAN_MASTER, r.tls_policy_path: None}


def test_soft_only_problems():
    assert soft_only_problems({}, {"soft_bounce": "yes"}) == []
    assert soft_only_problems({}, None) == ["the listener does not run postscreen"]
    assert soft_only_problems({"postscreen_dnsbl_action": "drop"}, {}) == [
        "the postscreen service lacks -o soft_bounce=yes", "postscreen_dnsbl_action = drop answers 521"]


def test_setting_mismatches():
    assert setting_mismatches({"relay_domains": "a, b", "mynetworks": ""},
                                 {"relay_domains": "a,b", "mynetworks": ""}) == []
    assert setting_mismatches({"mynetworks": ""}, {"mynetworks": "127.0.0.0/8"}) == [
        "mynetworks: want '(empty)', is '127.0.0.0/8'"]


def test_judge_smtp():
    good = [{"case": "catchall", "rcpt": "x@example.org", "code": 250, "text": "250 2.1.5 Ok"},
            {"case": "open_relay", "rcpt": "y@example.com", "code": 554, "text": "554 5.7.1 Relay access denied"},
            {"case": "pregreet", "rcpt": "z@example.org", "code": 450, "text": "450 4.5.1 Protocol error",
             "source": "127.1.2.3"}]
    assert all(ok for _, ok, _ in judge_smtp(good, ["example.org"]))
    hard = [dict(good[0]), dict(good[1], code=250), dict(good[2], code=550)]
    verdict = {name: ok for name, ok, _ in judge_smtp(hard, ["example.org"])}
    assert verdict == {"catch-all": True, "not an open relay": False, "pregreet defers": False}
    assert not judge_smtp(good, ["example.org", "example.net"])[0][1]  # one domain not probed


def test_seconds_and_queue_parsing():
    assert seconds("30d") == 30 * 86400 and seconds("5") == 5 * 86400 and seconds("2h") == 7200
    messages, bad = parse_postqueue_json('{"queue_id": "ABC", "queue_name": "deferred"}\nnot json\n')
    assert messages == [{"queue_id": "ABC", "queue_name": "deferred"}] and bad == ["not json"]


def test_relay_must_not_be_trusted_by_the_primary():
    assert trusted_by_mynetworks(["127.0.0.66"], "127.0.0.1/32 [::1]/128") == []
    assert trusted_by_mynetworks(["127.0.0.66", "2001:db8::7", "192.0.2.1"],
                                    "127.0.0.0/8 [::ffff:127.0.0.0]/104, [2001:db8::]/64 hash:/etc/postfix/net $x") \
        == ["127.0.0.66", "2001:db8::7"]


def _captured(name: str, rc: int, out: str = "", err: str = "") -> list[str]:

    return [f"{name} rc {rc}", f"{name} out {base64.b64encode(out.encode()).decode()}",
            f"{name} err {base64.b64encode(err.encode()).decode()}"]


def test_queue_fact_reads_postqueue_json_and_reports_failure():
    fact = RelayQueue()
    ok = fact.process(_captured("queue", 0, '{"queue_name": "deferred", "queue_id": "4F2A1"}\n'))
    assert ok == {"ok": True, "error": None, "messages": [{"queue_name": "deferred", "queue_id": "4F2A1"}]}
    down = fact.process(_captured("queue", 69, err="postqueue: fatal: Queue report unavailable - mail system is down"))
    assert not down["ok"] and "mail system is down" in down["error"]


def test_smtp_proof_fact_without_python():
    fact = RelaySmtpProof()
    assert fact.process(_captured("has", 1)) == {"python": False, "error": "python3 not found on the relay host",
                                                 "results": []}
    line = '{"case": "catchall", "rcpt": "a@example.org", "code": 250, "text": "250 2.1.5 Ok", "source": ""}'
    found = fact.process(_captured("has", 0, "/usr/bin/python3\n") + _captured("smtp", 0, line + "\n"))
    assert found["python"] and found["error"] is None and found["results"][0]["code"] == 250


def test_message_size_limit_is_written_only_when_given():
    assert "message_size_limit" not in main_settings(relay(), ["example.org"])
    assert main_settings(relay(message_size_limit=52428800), ["example.org"])["message_size_limit"] == "52428800"
    assert main_settings(relay(message_size_limit=0), ["example.org"])["message_size_limit"] == "0"


@pytest.mark.parametrize("relay_limit, primary_limit, refuses", [
    (10240000, 10240000, False),
    (52428800, 10240000, False),
    (10240000, 52428800, True),
    (0, 52428800, False),  # the relay has no limit
    (52428800, 0, True),  # the primary has none: any relay limit refuses something
    (0, 0, False),
])
def test_a_relay_must_take_every_message_the_primary_takes(relay_limit, primary_limit, refuses):
    assert refuses_what_the_primary_takes(relay_limit, primary_limit) is refuses


def test_postfix_size_reads_what_postconf_prints():
    assert postfix_size("10240000") == 10240000 and postfix_size(" 0 ") == 0
    assert postfix_size(None) is None and postfix_size("$other") is None
