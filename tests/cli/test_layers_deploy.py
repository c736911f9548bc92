"""Never lose relayed mail at any layer of the primary (issue #15): the deploy against the
sandbox primary shaped like docker-mailserver, with the layers that refuse relayed mail
switched on (backupmx_sandbox.layers; each one's bite before any deploy is proven in
tests/integration/sandbox/test_primary_layers.py).

With the layers on, the deploy puts its exception in front of them; then the
realistic relayed envelope from each relay reaches RCPT 250 past every one of them,
an outside client still meets each layer, a drain of 200 messages from one relay
address goes through, and a re-run changes nothing. A layer the tool does not handle
(a policy server it does not know) fails stage 4 with the layer's own reply; the DNS
stage does not run and DNS is not written.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from backupmx_sandbox import layers, seed
from backupmx_sandbox.smtp_client import build_message, send_mail
from support import mailhost
from support.invariants import backups_in_zone, reset_fakes
from support.layers import layer_probe, outside, rcpt_reply, refused_by, relayed
from support.mailpath import endpoint
from support.providers import clear_cloudflare_requests, cloudflare_writes, output, pyinfra, report_row

LISTED_RELAY = seed.RELAY_SOURCE["mail.rollernet.us"]  # 192.0.2.25: FCrDNS, DNSBL-listed
UNLISTED_RELAY = seed.RELAY_SOURCE["mail2.rollernet.us"]  # 198.51.100.25: PTR not confirmed

# Each layer the deploy makes an exception for, and the relay address it refuses.
LAYER_RELAY = {
    "policyd_spf": UNLISTED_RELAY,
    "unknown_client_hostname": UNLISTED_RELAY,
    "rbl_client": LISTED_RELAY,
    "tight_anvil": UNLISTED_RELAY,
}


def deploy(*args: str) -> str:
    result = pyinfra("deploys/backupmx.py", *args)
    text = output(result)
    assert result.returncode == 0, text
    return text


def outside_address() -> str:
    """An outside address with no PTR and no DNSBL listing, fresh (postscreen caches a PASS)."""
    return f"203.0.113.{random.randrange(100, 250)}"


@pytest.fixture(scope="module")
def deployed(world, sandbox):
    """Every handled layer on, then the deploy (whitelist, exemption, the relay exception,
    backup MX records); the mail host's files, the fakes and the layers put back after."""
    before = mailhost.snapshot(world)
    switches = layers.Switches(sandbox)
    assert not any(switches.status().values()), "a layer was left on"
    reset_fakes(world)
    switches.set(dict.fromkeys(LAYER_RELAY, True))
    first = deploy()
    yield world, first
    switches.set(dict.fromkeys(layers.NAMES, False))
    mailhost.restore(world, before)
    reset_fakes(world)


def test_relayed_mail_passes_every_layer_after_the_deploy_and_outsiders_still_meet_each(deployed, sandbox):
    world, first = deployed
    assert "relayed envelope: 3 relay addresses" in first, first
    main_cf = Path(world["postfix_config_dir"], "main.cf").read_text()
    assert "$backupmx_relay_exception, check_policy_service unix:private/policyd-spf" in main_cf
    assert "$backupmx_relay_exception, reject_unknown_client_hostname" in main_cf

    for layer, relay in LAYER_RELAY.items():
        reply = layer_probe(world, layer, relayed(relay))
        assert reply.code == 250, f"{layer}: relay {relay} after the deploy: {reply}"
        print(f"{layer}: relay {relay}: {reply}")

    again = deploy()  # a re-run changes nothing on the mail host
    assert report_row(again, "3").status == "pass", again

    switches = layers.Switches(sandbox)
    with mailhost.put_back_after(world):  # main.cf as the deploy left it, every layer on
        for layer in LAYER_RELAY:
            # One layer at a time, so the refusal is that layer's own.
            switches.set({name: name == layer for name in LAYER_RELAY})
            client = seed.DNSBL_LISTED_OUTSIDE if layer == "rbl_client" else outside_address()
            faced = layer_probe(world, layer, outside(client))
            print(f"{layer}: outside {client}: {faced}")
            # The listed outside address meets postscreen's DNSBL first: the whitelist is not for it.
            assert refused_by("postscreen_dnsbl" if layer == "rbl_client" else layer, faced), \
                f"{layer}: outside {client}: {faced}"


def test_a_drain_of_200_messages_from_one_relay_address_is_accepted_and_anvil_still_limits_outsiders(
        deployed, record_property):
    world, _ = deployed
    host, port = endpoint(world["proxy_listener"])
    maildir = Path(world["maildir"])
    tag = f"drain-{random.randrange(10**9)}"
    recipient = f"{tag}@{seed.DOMAIN}"
    sender = f"someone@{seed.SENDER_DOMAIN}"  # SPF -all without the relays: policyd-spf is on
    started = time.monotonic()
    results = []
    for number in range(200):
        message, _ = build_message(sender, recipient, subject=f"{tag} {number}")
        results.append(send_mail(host, port, sender, recipient, message, proxy_source=UNLISTED_RELAY,
                                 helo="mail2.rollernet.us"))
    took = time.monotonic() - started
    accepted = sum(1 for result in results if result.accepted)
    record_property("drain_accepted", accepted)
    record_property("drain_seconds", round(took, 1))
    print(f"drain: {accepted}/200 accepted in {took:.1f}s")
    refused = [str(result) for result in results if not result.accepted]
    assert accepted == 200, (accepted, took, refused[:3])

    outsider = outside_address()
    replies = [rcpt_reply(world, outside(outsider, mail_from=f"a@{seed.NEUTRAL_SENDER_DOMAIN}")) for _ in range(12)]
    assert any(refused_by("tight_anvil", reply) for reply in replies), [str(reply) for reply in replies]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_tagged(maildir, tag)) < 200:
        time.sleep(0.2)
    delivered = _tagged(maildir, tag)
    for path in delivered:
        path.unlink()
    assert len(delivered) == 200


def _tagged(maildir: Path, tag: str) -> list[Path]:
    found = []
    for folder in ("new", "cur"):
        for path in (maildir / folder).glob("*"):
            try:
                head = path.read_bytes()[:4096]
            except FileNotFoundError:
                continue
            if tag.encode() in head:
                found.append(path)
    return found


def test_a_layer_the_tool_does_not_handle_fails_stage_4_and_nothing_reaches_dns(deployed, sandbox):
    world, _ = deployed
    reset_fakes(world)  # no backup MX records: the deploy would publish them
    clear_cloudflare_requests(world)
    with layers.layer_on(sandbox, "unknown_policy"):
        assert refused_by("unknown_policy", rcpt_reply(world, relayed(UNLISTED_RELAY)))
        result = pyinfra("deploys/backupmx.py")
    text = output(result)
    assert result.returncode != 0, text
    assert "Traceback" not in text
    row = report_row(text, "4")
    assert row.status == "FAIL" and "relayed envelope: 192.0.2.1: 550 5.7.1" in row.evidence, text
    assert "refused by the sandbox's unknown policy service" in row.evidence, text
    assert "=> BLOCKED: nothing will be changed" in text, text
    assert cloudflare_writes(world) == [] and backups_in_zone(world) == set(), text
