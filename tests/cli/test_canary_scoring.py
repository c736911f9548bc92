"""The canary's ``external_relay`` verdict on real data: a deploy with ``mailhost.relay_scoring =
"external_relay"``, then ``deploys/canary.py`` through the fake Roller Network relays, whose
Received header the sandbox's real rspamd scores the original sender from.

Every sandbox sender is on loopback, and rspamd's SPF module never checks a loopback
client: the relays record the test sender's public address (``seed.SENDER_ALLOWED_IP``,
the one its SPF lists) for their client instead (the relay switch ``client_address``), as
a real relay records the send host's public address. The module puts the mail host and
both fakes back to their seeded state at the end (support.scoring).
"""

from __future__ import annotations

import pytest

from backupmx.mailhost.model import EXTERNAL_RELAY_BLOCK, RSPAMD_RELAY_SYMBOL
from backupmx.postfix.blocks import with_block
from backupmx_sandbox import seed
from support.mailhost import reload_rspamd
from support.providers import admin, output, pyinfra, report_rows
from support.scoring import back_to_seed, external_relay_inventory, rspamd_paths
from support.settle import settle

CANARY = "deploys/canary.py"


def relays(world) -> list[str]:
    return [relay["host"] for relay in world["relays"]]


def canary_rows(text: str) -> dict[str, tuple[str, str]]:
    return {row.check: (row.status, row.evidence) for row in report_rows(text) if row.stage == "canary"}


@pytest.fixture(scope="module")
def scored(world, tmp_path_factory):
    """The mail host in external_relay mode, the relays recording the sender's public address."""
    inventory = external_relay_inventory(tmp_path_factory.mktemp("inventory"))
    try:
        result = pyinfra("deploys/backupmx.py", inventory=inventory)
        assert result.returncode == 0, output(result)
        admin(world, "relay", {"client_address": seed.SENDER_ALLOWED_IP})
        yield {"world": world, "inventory": inventory}
    finally:
        settle(world)
        back_to_seed(world)  # the ACC reset puts the relay switches back too


def run_canary(scored) -> tuple[int, str]:
    result = pyinfra(CANARY, inventory=scored["inventory"], timeout=120)
    return result.returncode, output(result)


def test_external_relay_canary_scores_the_original_sender_and_passes(scored):
    """The sender's SPF lists the address the relay recorded: scored through our rule, and it passes."""
    code, text = run_canary(scored)
    assert code == 0, text
    world = scored["world"]
    for host in relays(world):
        status, evidence = canary_rows(text)[f"{world['zone']} via {host}"]
        assert status == "pass", text
        assert f"original sender scored ({RSPAMD_RELAY_SYMBOL}, R_SPF_ALLOW)" in evidence, evidence
        assert "DKIM R_DKIM_ALLOW" in evidence and "(whitelisted)" in evidence, evidence
    print("\nrow: " + canary_rows(text)[f"{world['zone']} via {relays(world)[0]}"][1])


def test_external_relay_canary_fails_naming_the_hop_when_the_scoring_rule_is_removed_by_hand(scored):
    """Our external_relay rule taken out of local.d/external_relay.conf: rspamd scores the relay's own
    address again (SPF fails), and the canary says the message was delivered, but not scored as it must."""
    world = scored["world"]
    path = rspamd_paths(world)["external_relay.conf"]
    before = path.read_bytes()
    path.write_text(with_block(before.decode(), EXTERNAL_RELAY_BLOCK, None) or "")
    reload_rspamd(world)
    try:
        code, text = run_canary(scored)
    finally:
        path.write_bytes(before)
        reload_rspamd(world)
    assert code != 0, text
    for host in relays(world):
        status, evidence = canary_rows(text)[f"{world['zone']} via {host}"]
        assert status == "FAIL", text
        assert evidence.startswith(f"delivered, but external_relay did not score the original sender: "
                                   f"{RSPAMD_RELAY_SYMBOL} missing, SPF R_SPF_FAIL"), evidence
    assert "=> CANARY FAILED for " in text and ": delivered, but" in text, text
    print("\nrow: " + canary_rows(text)[f"{world['zone']} via {relays(world)[0]}"][1])
