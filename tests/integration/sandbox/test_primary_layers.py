"""The sandbox primary as production runs it: docker-mailserver's stack, real DNS for
its daemons, and the layers the tests switch on one at a time (backupmx_sandbox.layers).

Before any deploy (``support.layers.no_deploy``: no relay whitelist), each layer switched
on refuses the realistic relayed envelope (the relay's address in the PROXY-v2
header, its HELO name, a ``sender.test`` sender whose SPF ``-all`` omits the relay,
a local recipient; stopped at RCPT, nothing delivered) with its own reply, and an
outside client faces the same layer. Which relay address shows which layer:
tests/support/layers.py.
"""

from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path

import pytest

from backupmx_sandbox import cli, layers, seed
from support.layers import (
    LAYER_REFUSAL,
    Envelope,
    dnsbl_in_time,
    layer_probe,
    no_deploy,
    outside,
    postfix_log,
    rcpt_reply,
    refused_by,
    relayed,
    relays_past_postscreen,
)
from support.mailhost import SENDER, reload_postfix

LISTED_RELAY = seed.RELAY_SOURCE["mail.rollernet.us"]  # 192.0.2.25: FCrDNS, DNSBL-listed
UNLISTED_RELAY = seed.RELAY_SOURCE["mail2.rollernet.us"]  # 198.51.100.25: PTR not confirmed
SELF_HOSTED_RELAY = "127.0.0.66"  # no PTR


def outside_address() -> str:
    """An outside address with no PTR and no DNSBL listing (seed.OUTSIDE_NETWORK)."""
    return f"203.0.113.{random.randrange(100, 250)}"


@pytest.fixture(scope="module")
def primary(world):
    """The primary with no deploy's changes, for the whole module; the deploy's state put back after."""
    with no_deploy(world):
        yield world


@pytest.fixture
def switches(sandbox, primary):
    switches = layers.Switches(sandbox)
    assert not any(switches.status().values()), "a layer was left on"
    yield switches
    switches.set(dict.fromkeys(layers.NAMES, False))


# --- the base stack and its resolver ---------------------------------------------------------


def test_postfix_asks_the_sandbox_resolver_in_a_namespace_of_its_own(sandbox, primary):
    master = _master_pid(primary)
    inside = Path(f"/proc/{master}/root/etc/resolv.conf").read_text()
    assert f"nameserver {primary['resolver']}" in inside.splitlines()
    assert primary["resolver"] not in Path("/etc/resolv.conf").read_text()  # the machine's is untouched
    assert Path(f"/proc/{master}/ns/mnt").resolve() != Path("/proc/self/ns/mnt").resolve()
    reload_postfix(primary)  # a reload signals master, which keeps its namespace
    assert _master_pid(primary) == master
    assert f"nameserver {primary['resolver']}" in Path(f"/proc/{master}/root/etc/resolv.conf").read_text()


def test_postscreen_dnsbl_refuses_the_listed_relay_with_the_base_stack(primary):
    with dnsbl_in_time(primary):
        reply = rcpt_reply(primary, relayed(LISTED_RELAY))
    assert refused_by("postscreen_dnsbl", reply), str(reply)
    assert f"DNSBL rank 3 for [{LISTED_RELAY}]" in postfix_log(primary)


def test_the_base_stack_takes_the_relayed_envelope_past_postscreen_and_logs_the_ptr(primary):
    with relays_past_postscreen(primary):
        confirmed = rcpt_reply(primary, relayed(LISTED_RELAY))
        unconfirmed = rcpt_reply(primary, relayed(UNLISTED_RELAY))
    assert confirmed.code == 250 and unconfirmed.code == 250, (str(confirmed), str(unconfirmed))
    log = postfix_log(primary)
    assert f"connect from out1.rollernet.us[{LISTED_RELAY}]" in log
    assert f"hostname out2.rollernet.us does not resolve to address {UNLISTED_RELAY}" in log
    assert f"connect from unknown[{UNLISTED_RELAY}]" in log


@pytest.mark.parametrize("helo, mail_from, expected", [
    ("relay", SENDER, r"^504 5\.5\.2 <relay>: Helo command rejected: need fully-qualified hostname"),
    ("mta.outside.example", "someone@nowhere.invalid",
     r"^450 4\.1\.8 <someone@nowhere\.invalid>: Sender address rejected: Domain not found"),
])
def test_the_base_stack_refuses_a_bare_helo_and_an_unknown_sender_domain(primary, helo, mail_from, expected):
    reply = rcpt_reply(primary, Envelope(UNLISTED_RELAY, helo, mail_from))
    assert re.search(expected, f"{reply.code} {reply.text}"), str(reply)


# --- each layer bites relayed mail before a deploy; outside clients face it too ---------------------

# Per layer: the relay addresses it refuses before a deploy, and the outside client that faces it.
LAYER_CASES = {
    "policyd_spf": [UNLISTED_RELAY],
    "unknown_client_hostname": [UNLISTED_RELAY, SELF_HOSTED_RELAY],
    # Listed: postscreen's DNSBL refuses it first (above); past postscreen, smtpd's list bites.
    "rbl_client": [LISTED_RELAY],
    "tight_anvil": [UNLISTED_RELAY],
    "unknown_policy": [UNLISTED_RELAY, SELF_HOSTED_RELAY],
}


@pytest.mark.parametrize("layer", list(LAYER_CASES))
def test_the_layer_refuses_relayed_mail_before_a_deploy_and_outside_clients_face_it(sandbox, switches, primary,
                                                                                    layer):
    listed = layer == "rbl_client"
    outside_client = seed.DNSBL_LISTED_OUTSIDE if listed else outside_address()
    with layers.layer_on(sandbox, layer), \
            (relays_past_postscreen(primary) if listed else contextlib.nullcontext()):
        for source in LAYER_CASES[layer]:
            reply = layer_probe(primary, layer, relayed(source))
            assert refused_by(layer, reply), f"{layer}, relay {source}: {reply}"
        if layer == "unknown_policy":
            # It refuses only the relay networks: an outside client passes it.
            faced = rcpt_reply(primary, outside(outside_client, mail_from=f"a@{seed.NEUTRAL_SENDER_DOMAIN}"))
            assert faced.code == 250, str(faced)
            return
        with (dnsbl_in_time(primary) if listed else contextlib.nullcontext()):
            faced = layer_probe(primary, layer, outside(outside_client))
    # The listed outside address meets postscreen's DNSBL: the relay whitelist is not for it.
    assert refused_by("postscreen_dnsbl" if listed else layer, faced), f"{layer}, outside {outside_client}: {faced}"


# --- the switches -----------------------------------------------------------------------------


def test_switching_is_idempotent_and_off_restores_the_base_stack_exactly(sandbox, switches, primary):
    main_cf = Path(primary["postfix_config_dir"]) / "main.cf"
    base = main_cf.read_bytes()
    assert switches.set(dict.fromkeys(layers.NAMES, True))
    assert all(switches.status().values())
    assert not switches.set(dict.fromkeys(layers.NAMES, True))
    restrictions = switches._restrictions("smtpd_recipient_restrictions")
    after = restrictions[restrictions.index("reject_unauth_destination") + 1:]
    assert after[0].startswith("check_policy_service inet:127.0.0.1:")  # the unknown policy first
    assert after[1:3] == ["check_policy_service unix:private/policyd-spf", f"reject_rbl_client {seed.DNSBL_ZONE}"]
    assert switches.set(dict.fromkeys(layers.NAMES, False))
    assert not switches.set(dict.fromkeys(layers.NAMES, False))
    assert main_cf.read_bytes() == base


def test_the_cli_switches_a_layer(sandbox, switches, primary, capsys):
    assert cli.main(["layer", "policyd_spf", "on"]) == 0
    assert cli.main(["layer", "policyd_spf", "status"]) == 0
    assert cli.main(["layer", "policyd_spf", "off"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "policyd_spf: on", f"{'policyd_spf':24} on", "policyd_spf: off"]


def test_every_layer_has_its_refusal_text():
    assert set(LAYER_REFUSAL) >= set(layers.NAMES)


def _master_pid(world) -> int:
    queue = Path(world["postfix_config_dir"]).parent / "postfix-queue"
    return int((queue / "pid" / "master.pid").read_text().split()[0])
