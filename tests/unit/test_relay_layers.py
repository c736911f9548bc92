"""The relay smtpd service's restriction lists (backupmx.mailhost.layers): where the exception goes,
which layers it covers, and when stage 3 refuses instead."""

from __future__ import annotations

import pytest

from backupmx.core.errors import BackupMXError
from backupmx.mailhost.layers import hooked_value, relay_layers, unhooked_value
from backupmx.mailhost.listener import wanted_listener_options, wanted_relay_service
from backupmx.mailhost.proof import local_relay_networks
from backupmx.mailhost.render import main_cf_with_hook
from backupmx.postfix.mastercf import Listener, parse_postconf_services
from support.scratch import native

CIDR = "/etc/postfix/postscreen_access.cidr"
EXCEPTION = f"check_client_access,cidr:{CIDR}"
# docker-mailserver's shipped lists (PRIMARY-LAYERS.md), policyd-spf wired in as its start-up does.
DMS_MAIN = {
    "smtpd_client_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
    "smtpd_helo_restrictions": "permit_mynetworks, reject_invalid_helo_hostname, permit",
    "smtpd_sender_restrictions": "permit_sasl_authenticated, permit_mynetworks, reject_unknown_sender_domain",
    "smtpd_relay_restrictions": "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
    "smtpd_recipient_restrictions": "permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination, "
                                    "check_policy_service unix:private/policyd-spf, reject_invalid_helo_hostname, "
                                    "reject_non_fqdn_helo_hostname, reject_unknown_recipient_domain",
    "smtpd_client_event_limit_exceptions": "${smtpd_client_connection_limit_exceptions:$mynetworks}",
    "smtpd_client_connection_rate_limit": "0",
    "smtpd_client_message_rate_limit": "0",
}


def test_the_hook_goes_right_before_policyd_spf_and_the_relay_service_sets_it():
    layers = relay_layers(DMS_MAIN, CIDR)
    entries, first = layers.lists["smtpd_recipient_restrictions"]
    assert list(layers.lists) == ["smtpd_recipient_restrictions"] and entries[first] == "check_policy_service"
    hooked = hooked_value(DMS_MAIN["smtpd_recipient_restrictions"], first)
    assert hooked == (  # written as it was: a restriction and its argument stay one "entry argument"
        "permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination, $backupmx_relay_exception, "
        "check_policy_service unix:private/policyd-spf, reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, "
        "reject_unknown_recipient_domain")
    assert hooked_value(hooked, first) == hooked  # once
    assert unhooked_value(hooked) == DMS_MAIN["smtpd_recipient_restrictions"]
    assert layers.service_options == {"backupmx_relay_exception": EXCEPTION}
    assert layers.layers == ["smtpd_recipient_restrictions: check_policy_service unix:private/policyd-spf "
                             "(policyd-spf refuses mail whose sender's SPF does not list the relay)"]
    assert not layers.problems


def test_a_hook_already_in_place_is_found_where_it_belongs():
    main = dict(DMS_MAIN, smtpd_recipient_restrictions="reject_unauth_destination, $backupmx_relay_exception, "
                                                       "check_policy_service unix:private/policyd-spf")
    entries, first = relay_layers(main, CIDR).lists["smtpd_recipient_restrictions"]
    assert "$backupmx_relay_exception" not in entries and first == 1


def test_an_unknown_policy_service_is_not_ours_to_bypass():
    main = dict(DMS_MAIN, smtpd_recipient_restrictions="reject_unauth_destination, check_policy_service "
                                                       "inet:127.0.0.1:10040, permit")
    assert not relay_layers(main, CIDR).needed


def test_each_list_gets_its_hook_before_its_first_layer():
    main = dict(DMS_MAIN, smtpd_client_restrictions="permit_mynetworks, reject_unknown_client_hostname",
                smtpd_recipient_restrictions="reject_unauth_destination, reject_rbl_client bl.example.org, "
                                             "check_policy_service unix:private/policyd-spf")
    layers = relay_layers(main, CIDR)
    assert {name: first for name, (_, first) in layers.lists.items()} == {
        "smtpd_client_restrictions": 1, "smtpd_recipient_restrictions": 1}
    assert [line.split(":")[0] for line in layers.layers] == ["smtpd_client_restrictions"] + ["smtpd_recipient_restrictions"] * 2


def test_anvil_rate_limits_get_the_relays_as_event_limit_exceptions():
    layers = relay_layers(dict(DMS_MAIN, smtpd_client_message_rate_limit="30"), CIDR)
    assert layers.service_options["smtpd_client_event_limit_exceptions"] == (
        "${smtpd_client_connection_limit_exceptions:$mynetworks}," + f"cidr:{CIDR}")
    assert any(line.startswith("anvil: smtpd_client_message_rate_limit = 30") for line in layers.layers)


def test_a_permit_that_would_open_the_relay_is_refused():
    main = dict(DMS_MAIN, smtpd_relay_restrictions="",
                smtpd_recipient_restrictions="check_policy_service unix:private/policyd-spf, reject_unauth_destination")
    layers = relay_layers(main, CIDR)
    assert not layers.lists and "open relay" in layers.problems[0]


def test_braced_lists_are_refused_not_mangled():
    main = dict(DMS_MAIN, smtpd_recipient_restrictions="reject_unauth_destination, "
                                                       "check_policy_service { unix:private/policyd-spf, timeout=10s }")
    layers = relay_layers(main, CIDR)
    assert "{ } grouping" in layers.problems[0]


MAIN_CF = """\
# a site's main.cf
smtpd_recipient_restrictions = permit_sasl_authenticated, permit_mynetworks,
    reject_unauth_destination,
    check_policy_service unix:private/policyd-spf,
    reject_unknown_recipient_domain
myhostname = mail.example.org
"""


def test_main_cf_gets_the_hook_in_place_and_its_empty_definition_and_gives_both_back():
    main = dict(DMS_MAIN, smtpd_recipient_restrictions="permit_sasl_authenticated, permit_mynetworks, "
                "reject_unauth_destination, check_policy_service unix:private/policyd-spf, reject_unknown_recipient_domain")
    mailhost = native()
    layers = relay_layers(main, mailhost.cidr_path)
    hooked = main_cf_with_hook(MAIN_CF, mailhost, layers)
    assert "    $backupmx_relay_exception, check_policy_service unix:private/policyd-spf,\n" in hooked
    assert "\nbackupmx_relay_exception =\n" in hooked and hooked.startswith(MAIN_CF.split("    check")[0])
    assert main_cf_with_hook(hooked, mailhost, layers) == hooked
    assert main_cf_with_hook(hooked, mailhost, None) == MAIN_CF


def test_a_list_written_through_another_parameter_is_refused():
    main = dict(DMS_MAIN)
    with pytest.raises(BackupMXError, match="add `\\$backupmx_relay_exception` before check_policy_service"):
        main_cf_with_hook("smtpd_recipient_restrictions = $my_restrictions\n", native(),
                          relay_layers(main, CIDR))


def services() -> dict[str, Listener]:
    return parse_postconf_services(
        ["2525 inet n - y - 1 postscreen -o postscreen_upstream_proxy_protocol=haproxy",
         "smtpd pass - - y - - smtpd -o smtpd_tls_security_level=may"],
        ["2525/inet/postscreen_upstream_proxy_protocol = haproxy", "smtpd/pass/smtpd_tls_security_level = may"])


def test_the_relay_service_is_a_copy_of_smtpd_pass_and_the_listener_hands_over_to_it():
    mailhost = native()
    relay, layers = wanted_relay_service(mailhost, services(), DMS_MAIN)
    assert relay.entry() == "backupmx-relay pass - - y - - smtpd"
    assert relay.params["smtpd_tls_security_level"] == "may"
    assert relay.params["backupmx_relay_exception"] == EXCEPTION.replace(CIDR, mailhost.cidr_path)
    assert wanted_listener_options(mailhost, services(), DMS_MAIN)["smtpd_service_name"] == "backupmx-relay"


def test_without_layers_there_is_no_relay_service_and_a_handoff_of_ours_is_taken_back():
    plain = dict(DMS_MAIN, smtpd_recipient_restrictions="permit_mynetworks, reject_unauth_destination")
    mailhost = native()
    assert wanted_relay_service(mailhost, services(), plain)[0] is None
    assert "smtpd_service_name" not in wanted_listener_options(mailhost, services(), plain)
    handed = services()
    handed["2525/inet"] = Listener("2525", "inet", "postscreen", {"smtpd_service_name": "backupmx-relay"})
    assert wanted_listener_options(mailhost, handed, plain)["smtpd_service_name"] is None


def test_relay_networks_inside_rspamd_local_networks_are_found():
    local = ["127.0.0.1/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
    assert local_relay_networks(["127.0.0.66/32", "192.0.2.0/24"], local) == ["127.0.0.66/32 (in 127.0.0.0/8)"]
    assert local_relay_networks(["2001:db8:2::/48"], local) == []


@pytest.mark.parametrize("key, value, words", [
    ("proof_sender", "not-an-address", "mailhost.proof_sender: 'not-an-address' is not a mail address"),
    ("proof_sender", "a b@example.org", "is not a mail address"),
    ("proof_helo", "relay", "mailhost.proof_helo"),
])
def test_bad_proof_envelope_data_is_one_line_naming_the_field(key, value, words):
    with pytest.raises(BackupMXError) as error:
        native(**{key: value})
    assert words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("main,sets_hook,anvil", [
    (DMS_MAIN, True, False),
    (dict(DMS_MAIN, smtpd_recipient_restrictions="permit_mynetworks, reject_unauth_destination",
          smtpd_client_connection_rate_limit="30"), False, True),
    (dict(DMS_MAIN, smtpd_client_message_rate_limit="100"), True, True),
], ids=["layers", "anvil", "both"])
def test_the_master_cf_block_says_only_what_its_entry_sets(main, sets_hook, anvil):
    from backupmx.mailhost.render import render_relay_smtpd_block

    mailhost = native()
    relay, _layers = wanted_relay_service(mailhost, services(), main)
    block = render_relay_smtpd_block(mailhost, relay, "smtpd/pass")
    comment = "\n".join(line for line in block.splitlines() if line.startswith("# ") and "BEGIN" not in line)
    assert ("backupmx_relay_exception" in comment) == sets_hook == ("-o backupmx_relay_exception=" in block)
    assert ("anvil's limits" in comment) == anvil == ("-o smtpd_client_event_limit_exceptions=" in block)
