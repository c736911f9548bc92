"""Never lose relayed mail at any layer of the primary (issue #15): the deploy against the
sandbox primary shaped like docker-mailserver, with one more layer switched on at a time.

Per layer: with the relay whitelist already in place (a deploy ran before the layer
was added, as when an operator adds one later), the realistic relayed envelope is
refused by that layer; the deploy adds the relay smtpd service's exception; then the
same envelope reaches RCPT 250, and an outside client still meets the layer. A layer
the tool does not handle (a policy server it does not know) fails stage 4 with the
layer's own reply; stage 5 does not run and DNS is not written.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import mailhostkit
from backupmx_sandbox import layers, seed
from backupmx_sandbox.smtp_client import build_message, send_mail
from invariantkit import backups_in_zone, reset_fakes
from layerkit import layer_probe, outside, rcpt_reply, refused_by, relayed
from mailpath import endpoint
from providerkit import clear_cloudflare_requests, cloudflare_writes, output, pyinfra, report_row

LISTED_RELAY = seed.RELAY_SOURCE["mail.rollernet.us"]  # 192.0.2.25: FCrDNS, DNSBL-listed
UNLISTED_RELAY = seed.RELAY_SOURCE["mail2.rollernet.us"]  # 198.51.100.25: PTR not confirmed

# The relay address each layer refuses once postscreen lets the relays through.
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
    """The deploy run once on the base stack (whitelist, exemption, backup MX records live);
    the mail host's files, the fakes and every layer put back after the module."""
    before = mailhostkit.snapshot(world)
    switches = layers.Switches(sandbox)
    assert not any(switches.status().values()), "a layer was left on"
    reset_fakes(world)
    deploy()
    yield world
    switches.set(dict.fromkeys(layers.NAMES, False))
    mailhostkit.restore(world, before)
    reset_fakes(world)


@pytest.mark.parametrize("layer", list(LAYER_RELAY))
def test_a_layer_added_later_bites_relayed_mail_until_the_deploy_makes_its_exception(deployed, sandbox, layer):
    world = deployed
    relay = LAYER_RELAY[layer]
    outside_client = seed.DNSBL_LISTED_OUTSIDE if layer == "rbl_client" else outside_address()
    if layer == "tight_anvil":
        # The base stack's own anvil rates already gave the relays their exception:
        # start from a mail host without it.
        mailhostkit.restore(world, mailhostkit.pristine_state(world))
    with layers.layer_on(sandbox, layer):
        before = layer_probe(world, layer, relayed(relay))
        assert refused_by(layer, before), f"{layer} does not bite relay {relay}: {before}"

        text = deploy()
        assert "relayed envelope: 3 relay addresses" in text, text
        master_cf = Path(world["postfix_config_dir"], "master.cf").read_text()
        assert "backupmx-relay pass" in master_cf

        after = layer_probe(world, layer, relayed(relay))
        assert after.code == 250, f"{layer}: relay {relay} after the deploy: {after}"
        faced = layer_probe(world, layer, outside(outside_client))
        print(f"{layer}: relay {relay} before: {before}; after: {after}; outside {outside_client}: {faced}")
        # The listed outside address meets postscreen's DNSBL first: the whitelist is not for it.
        assert refused_by("postscreen_dnsbl" if layer == "rbl_client" else layer, faced), \
            f"{layer}: outside {outside_client} after the deploy: {faced}"

        if layer == "policyd_spf":
            again = deploy()  # a re-run changes nothing on the mail host
            assert report_row(again, "3").status == "pass", again


def test_a_drain_of_200_messages_from_one_relay_address_is_accepted_and_anvil_still_limits_outsiders(
        deployed, sandbox, record_property):
    world = deployed
    host, port = endpoint(world["proxy_listener"])
    maildir = Path(world["maildir"])
    tag = f"drain-{random.randrange(10**9)}"
    recipient = f"{tag}@{seed.DOMAIN}"
    sender = f"someone@{seed.SENDER_DOMAIN}"
    with layers.layer_on(sandbox, "tight_anvil"), layers.layer_on(sandbox, "policyd_spf"):
        deploy()
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
        assert accepted == 200 and took < 60, (accepted, took, refused[:3])

        outsider = outside_address()
        replies = [rcpt_reply(world, outside(outsider, mail_from=f"a@{seed.NEUTRAL_SENDER_DOMAIN}"))
                   for _ in range(12)]
        assert any(refused_by("tight_anvil", reply) for reply in replies), [str(reply) for reply in replies]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_tagged(maildir, tag)) < 200:
        time.sleep(1)
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
    world = deployed
    reset_fakes(world)  # no backup MX records: the deploy would publish them
    clear_cloudflare_requests(world)
    with layers.layer_on(sandbox, "unknown_policy"):
        assert refused_by("unknown_policy", rcpt_reply(world, relayed(UNLISTED_RELAY)))
        result = pyinfra("deploys/backupmx.py")
    text = output(result)
    assert result.returncode != 0, text
    assert "refused by the sandbox's unknown policy service" in text, text
    assert "relayed envelope" in text and "Traceback" not in text
    assert "stage 4: NOT live: relayed envelope: 192.0.2.1: 550 5.7.1" in text, text
    assert "the DNS stage will not run" in text, text
    assert cloudflare_writes(world) == [] and backups_in_zone(world) == set(), text
