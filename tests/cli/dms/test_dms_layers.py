"""Every layer of the primary, on the real docker-mailserver (issues 15 and 21).

The layers are switched the docker-mailserver way (``DmsSwitches``: its own knobs
``ENABLE_POLICYD_SPF`` and ``POSTFIX_REJECT_UNKNOWN_CLIENT_HOSTNAME``, the others from
``user-patches.sh``), each a new container. With every handled layer on, the deploy's
relay exception lets each relay address through the :2525 listener past all of them,
outsiders still meet them, and the exception survives a pod restart. A layer the tool
does not handle (a policy service it does not know) fails stage 4 with that layer's own
reply, and nothing is written to DNS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backupmx_sandbox import seed
from backupmx_sandbox.dmshost import DmsSwitches
from backupmx_sandbox.world import Sandbox
from support.dms import in_container, pristine, recreate
from support.invariants import backups_in_zone, reset_fakes
from support.layers import layer_probe, outside, refused_by, relayed
from support.providers import clear_cloudflare_requests, cloudflare_writes, output, pyinfra

LISTED_RELAY = seed.RELAY_SOURCE["mail.rollernet.us"]  # 192.0.2.25: FCrDNS, DNSBL-listed
UNLISTED_RELAY = seed.RELAY_SOURCE["mail2.rollernet.us"]  # 198.51.100.25: PTR not confirmed
LAYER_RELAY = {
    "policyd_spf": UNLISTED_RELAY,
    "unknown_client_hostname": UNLISTED_RELAY,
    "rbl_client": LISTED_RELAY,
    "tight_anvil": UNLISTED_RELAY,
}
SEED_LAYERS = {"policyd_spf": True, "unknown_client_hostname": True, "rbl_client": False, "tight_anvil": False,
               "unknown_policy": False}


@pytest.fixture(scope="module")
def layered(dms):
    """Every handled layer on (one new container), then the deploy; the seed's layers back after."""
    switches = DmsSwitches(Sandbox(Path(dms["root"])))
    restored_by_hand = pristine(dms, restart=False)
    reset_fakes(dms)
    if not switches.set(dict.fromkeys(LAYER_RELAY, True)) and restored_by_hand:  # one new container for both
        recreate(dms)
    first = pyinfra("deploys/backupmx.py")
    assert first.returncode == 0, output(first)
    yield dms, switches
    restored_by_hand = pristine(dms, restart=False)
    if not switches.set(SEED_LAYERS) and restored_by_hand:
        recreate(dms)
    reset_fakes(dms)


def test_every_relay_passes_every_layer_and_outsiders_still_meet_them(layered):
    world, _ = layered
    main_cf = in_container(world, "postconf", "-n").stdout
    assert "$backupmx_relay_exception, check_policy_service unix:private/policyd-spf" in main_cf, main_cf
    assert "$backupmx_relay_exception, reject_unknown_client_hostname" in main_cf, main_cf  # in its own list
    for layer, relay in LAYER_RELAY.items():
        reply = layer_probe(world, layer, relayed(relay))
        assert reply.code == 250, f"{layer}: relay {relay}: {reply}"
    # Outsiders, with every layer on, meet the first that applies to them (no PTR: the hostname check).
    for layer, faced_by in {"rbl_client": ("postscreen_dnsbl",),
                            "tight_anvil": ("unknown_client_hostname", "tight_anvil"),
                            "unknown_client_hostname": ("unknown_client_hostname",)}.items():
        client = seed.DNSBL_LISTED_OUTSIDE if layer == "rbl_client" else f"203.0.113.{150 + len(layer)}"
        reply = layer_probe(world, layer, outside(client))
        assert any(refused_by(name, reply) for name in faced_by), f"{layer}: outside {client}: {reply}"


def test_the_exception_survives_a_pod_restart(layered):
    world, _ = layered
    recreate(world)
    for layer, relay in LAYER_RELAY.items():
        reply = layer_probe(world, layer, relayed(relay))
        assert reply.code == 250, f"{layer} after the restart: relay {relay}: {reply}"


def test_a_layer_the_tool_does_not_handle_fails_stage_4_and_nothing_reaches_dns(layered):
    world, switches = layered
    switches.switch("unknown_policy", True)
    try:
        reset_fakes(world)
        clear_cloudflare_requests(world)
        result = pyinfra("deploys/backupmx.py")
        text = output(result)
        assert result.returncode != 0 and "Traceback" not in text, text
        assert "refused by the sandbox's unknown policy service" in text, text
        assert cloudflare_writes(world) == [] and not backups_in_zone(world)
    finally:
        switches.switch("unknown_policy", False)
