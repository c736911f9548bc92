"""The weekly canary (issue #17): ``deploys/canary.py`` through the pyinfra CLI, in the sandbox.

One deploy, then several canary runs against the real daemons: the fake Roller
Network relays really store and forward to the mail host's PROXY-v2 listener
(postscreen, smtpd, rspamd, Maildir). Through the self-hosted relay host: in
tests/cli/test_selfhosted_pipeline.py, on that module's deploy. Each test puts back what it broke (the ACC
state, the primary's Postfix, the rspamd exemption) in a ``finally``; the module
puts the mail host's files back as it found them.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from backupmx.lifecycle.canary.verdict import MESSAGE_ID_PREFIX
from backupmx.mailhost.model import RSPAMD_BLOCK
from backupmx.monitoring.canary_metrics import SUCCESS, last_successes
from backupmx.postfix.blocks import with_block
from support.mailhost import (
    listener_up,
    managed_paths,
    primary_refuses,
    put_back_after,
    reload_rspamd,
    restore,
    snapshot,
    start_postfix_if_down,
)
from support.providers import admin, output, pyinfra, relayed_ids, report_rows, secret_values
from support.settle import settle

CANARY = "deploys/canary.py"


def canary(*args: str, dry: bool = False):
    return pyinfra(CANARY, *args, dry=dry, timeout=120)


def rows(text: str) -> dict[str, tuple[str, str]]:
    """check -> (status, evidence) of the canary's report."""
    return {row.check: (row.status, row.evidence) for row in report_rows(text) if row.stage == "canary"}


def canaries_in(maildir: str) -> list[Path]:
    """Files in the Maildir whose own Message-ID is a canary's."""
    found = []
    for sub in ("new", "cur"):
        for path in Path(maildir, sub).glob("*") if Path(maildir, sub).is_dir() else []:
            head = path.read_bytes().split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
            if f"message-id: {MESSAGE_ID_PREFIX}".encode() in head.lower():
                found.append(path)
    return found


def wait_for_canaries(maildir: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(canaries_in(maildir)) < count:
        assert time.monotonic() < deadline, f"no late canary delivered to {maildir} within {timeout} s"
        time.sleep(0.2)


def metrics(world) -> str:
    return Path(world["root"], "monitoring", "textfile", "backupmx_canary.prom").read_text()


def acc_state(world, **fields) -> None:
    admin(world, "state", {"domain": world["zone"], **fields})


def relays(world) -> list[str]:
    return [relay["host"] for relay in world["relays"]]


@pytest.fixture(scope="module")
def deployed(world):
    """Stages 3-5 applied once (the whitelist and the exemption live); the mail host's files put back after."""
    before = snapshot(world)
    result = pyinfra("deploys/backupmx.py")
    assert result.returncode == 0, output(result)
    yield world
    restore(world, before)


@pytest.fixture
def canary_world(deployed, sandbox):
    yield deployed
    acc_state(deployed, enabled=True, hold=False)
    start_postfix_if_down(deployed, sandbox)
    # A canary stuck in a relay's queue (primary down, hold) would reach the mailbox
    # during the next test, after that test's run: delivered now, deleted by the next run.
    settle(deployed)


def assert_passed(text: str, hosts: list[str], zone: str) -> dict[str, float]:
    """Every host's row passes; its hand-off-to-mailbox time."""
    found = rows(text)
    seconds = {}
    for host in hosts:
        status, evidence = found[f"{zone} via {host}"]
        assert status == "pass", text
        assert "no SPF/DMARC symbol; DKIM R_DKIM_ALLOW" in evidence and "(whitelisted)" in evidence, evidence
        seconds[host] = float(evidence.split("delivered in ", 1)[1].split(" s", 1)[0])
    assert "=> canary passed" in text, text
    return seconds


# --- passing ---------------------------------------------------------------------------


def test_dry_run_says_what_it_would_send_and_sends_nothing(canary_world):
    before = relayed_ids(canary_world)
    result = canary(dry=True)
    text = output(result)
    assert result.returncode == 0, text
    assert "(review: nothing was sent)" in text
    for host in relays(canary_world):
        assert f"backupmx-canary@{canary_world['zone']} via {host}" in text
    assert not relayed_ids(canary_world) - before  # no message of its own


def test_canary_passes_through_both_relays_with_timings_and_metrics(canary_world):
    started = time.monotonic()
    result = canary()
    wall = time.monotonic() - started
    text = output(result)
    assert result.returncode == 0, text
    seconds = assert_passed(text, relays(canary_world), canary_world["zone"])
    assert canaries_in(canary_world["maildir"]) == []
    prom = metrics(canary_world)
    for host in relays(canary_world):
        assert f'{SUCCESS}{{domain="{canary_world["zone"]}",mx_host="{host}"}} 1' in prom
    assert "backupmx_canary_duration_seconds{" in prom and "backupmx_canary_failed_hop" not in prom
    for value in secret_values(canary_world):
        assert value not in text
    print(f"\ncanary through both relays: {wall:.1f} s wall; hand-off to mailbox "
          + ", ".join(f"{host} {value:.2f} s" for host, value in seconds.items()))


# --- failing, naming the hop ----------------------------------------------------------------


def test_domain_disabled_at_the_provider_is_refused_by_the_relay(canary_world):
    before = last_successes(metrics(canary_world)) if Path(canary_world["root"], "monitoring", "textfile").exists() \
        else {}
    acc_state(canary_world, enabled=False)
    result = canary()
    text = output(result)
    assert result.returncode != 0, text
    for host in relays(canary_world):
        status, evidence = rows(text)[f"{canary_world['zone']} via {host}"]
        assert status == "FAIL" and evidence.startswith("refused by the relay: RCPT TO answered 554 5.7.1"), evidence
    assert "=> CANARY FAILED" in text and "refused by the relay" in text
    prom = metrics(canary_world)
    assert 'hop="refused_by_relay"' in prom and f"{SUCCESS}{{" in prom and "} 0" in prom
    # The last success is carried over from the run before, not reset by the failure.
    for key, value in before.items():
        assert last_successes(prom)[key] == value
    print("\nrow: " + rows(text)[f"{canary_world['zone']} via {relays(canary_world)[0]}"][1])


def test_accept_and_hold_is_stuck_in_the_queue_and_the_next_run_ignores_then_deletes_the_late_one(canary_world):
    acc_state(canary_world, hold=True)
    try:
        result = canary()
    finally:
        acc_state(canary_world, hold=False)  # lifting the hold releases the held canaries
    text = output(result)
    assert result.returncode != 0, text
    for host in relays(canary_world):
        status, evidence = rows(text)[f"{canary_world['zone']} via {host}"]
        assert status == "FAIL" and evidence.startswith("stuck in the relay's queue: Accept-and-Hold is on"), evidence
    print("\nrow: " + rows(text)[f"{canary_world['zone']} via {relays(canary_world)[0]}"][1])
    # The held canaries arrive late: the next run does not count them, and deletes them.
    wait_for_canaries(canary_world["maildir"], len(relays(canary_world)))
    again = canary()
    text = output(again)
    assert again.returncode == 0, text
    assert_passed(text, relays(canary_world), canary_world["zone"])
    assert f"{len(relays(canary_world))} canary(ies) of earlier runs arrived late and were deleted" in text
    assert canaries_in(canary_world["maildir"]) == []


def test_primary_down_is_stuck_not_lost(canary_world, sandbox):
    failover = canary_world["failover"]
    subprocess.run(failover["stop_command"], check=True, capture_output=True, timeout=60)
    try:
        assert not listener_up(canary_world)
        result = canary()
    finally:
        subprocess.run(failover["start_command"], capture_output=True, timeout=60, check=False)
        start_postfix_if_down(canary_world, sandbox)
    text = output(result)
    assert result.returncode != 0, text
    for host in relays(canary_world):
        status, evidence = rows(text)[f"{canary_world['zone']} via {host}"]
        assert status == "FAIL" and evidence.startswith("stuck in the relay's queue, not lost: the relay's last "
                                                        "attempt: connect to"), evidence
    print("\nrow: " + rows(text)[f"{canary_world['zone']} via {relays(canary_world)[0]}"][1])
    assert listener_up(canary_world)


def test_primary_answering_5xx_is_refused_by_the_primary_with_its_reply(canary_world):
    """The relays bounce the canary at once (the primary answers 554 to RCPT): the provider's bounce
    listing names the primary's reply, where the canary used to say "lost between"."""
    recipient = f"backupmx-canary@{canary_world['zone']}"
    with primary_refuses(canary_world, recipient) as reply:
        result = canary()
    text = output(result)
    assert result.returncode != 0, text
    for host in relays(canary_world):
        status, evidence = rows(text)[f"{canary_world['zone']} via {host}"]
        assert status == "FAIL", text
        assert evidence.startswith("refused by the primary: the relay bounced it on the primary's reply: host "), \
            evidence
        assert reply in evidence and "(in reply to RCPT TO command)" in evidence, evidence
    assert "lost between" not in text
    assert 'hop="refused_by_primary"' in metrics(canary_world)
    print("\nrow: " + rows(text)[f"{canary_world['zone']} via {relays(canary_world)[0]}"][1])


def test_exemption_removed_by_hand_is_delivered_with_a_penalty(canary_world):
    settings = managed_paths(canary_world)["settings.conf"]
    with put_back_after(canary_world):
        settings.write_text(with_block(settings.read_text(), RSPAMD_BLOCK, None) or "")
        reload_rspamd(canary_world)
        result = canary()
    text = output(result)
    assert result.returncode != 0, text
    for host in relays(canary_world):
        status, evidence = rows(text)[f"{canary_world['zone']} via {host}"]
        assert status == "FAIL" and evidence.startswith("delivered, but SPF/DMARC penalty: "), evidence
        assert "R_SPF_FAIL" in evidence, evidence
    print("\nrow: " + rows(text)[f"{canary_world['zone']} via {relays(canary_world)[0]}"][1])
    assert canaries_in(canary_world["maildir"]) == []  # judged, then deleted all the same


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("data,words", [
    ({"maildir": "/x", "recipent": "a@b"}, "inventory data canary.recipent: is not a known key; did you mean recipient?"),
    ({"maildir": "/x", "recipient": "not an address"}, "inventory data canary.recipient: 'not an address' is not an "
                                                       "address at"),
    ({"maildir": "/x", "send_from": "nowhere"}, "inventory data canary.send_from: 'nowhere' is not a host of this "
                                                "inventory"),
])
def test_bad_canary_data_is_one_line_and_sends_nothing(canary_world, data, words):
    before = relayed_ids(canary_world)
    result = canary("--data", "canary=" + json.dumps(data))
    text = output(result)
    assert result.returncode != 0, text
    assert words in text, text
    assert "Traceback" not in text
    assert not relayed_ids(canary_world) - before  # no message of its own
