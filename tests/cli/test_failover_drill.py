"""Gate G5: ``deploys/failover_test.py`` through the pyinfra CLI, in the sandbox, end to end.

The relays really store and forward (fake_rollernet); the mail host's Postfix is
really stopped and started (its Supervisor, through the inventory's
``failover.stop_command``/``start_command`` over SSH). Every test ends with the
mail host's PROXY-v2 listener accepting connections again.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backupmx.mailhost.model import CIDR_FILE_NAME
from backupmx_sandbox.supervisor import Supervisor
from support.mailhost import listener_up, reload_postfix, start_postfix_if_down
from support.providers import admin, output, pyinfra, start_pyinfra

DRILL = "deploys/failover_test.py"
# An operator who raised docker-mailserver's default (10240000) so the drill's large
# message (12000000 bytes) fits; the size decision under a smaller limit: tests/unit/test_drill_data.py.
PRIMARY_SIZE_LIMIT = 26214400


def relay(world, **switches) -> None:
    admin(world, "relay", switches)


def default_relay(world) -> None:
    relay(world, source_override=None, deliver=True, deliver_to=None,
          retry_schedule=world["relay_retry_schedule"])


def postconf(world, *args: str) -> str:
    return subprocess.run(["postconf", "-c", world["postfix_config_dir"], *args], check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def published(world):
    """The live state G5 starts from: stages 3-5 applied (whitelist live, backup MX in DNS)."""
    result = pyinfra("deploys/backupmx.py")
    assert result.returncode == 0, output(result)
    before = postconf(world, "-n", "message_size_limit")  # "" when the default applies
    postconf(world, "-e", f"message_size_limit={PRIMARY_SIZE_LIMIT}")
    reload_postfix(world)
    yield world
    postconf(world, *(["-e", before] if before else ["-X", "message_size_limit"]))
    reload_postfix(world)


@pytest.fixture
def drill_world(published, sandbox):
    default_relay(published)
    yield published
    default_relay(published)
    start_postfix_if_down(published, sandbox)


# --- the drill in the sandbox ---------------------------------------------------------


def test_dry_run_says_what_it_would_do_and_does_nothing(drill_world, sandbox):
    before = Supervisor(sandbox).pid("postfix")
    result = pyinfra(DRILL, dry=True, timeout=120)
    text = output(result)
    assert result.returncode == 0, text
    assert "would stop the primary mail path" in text and "postfix-service stop" in text
    assert "would send 3 DKIM-signed probe(s)" in text
    assert f"would send a large message: 12000000 bytes (the primary takes {PRIMARY_SIZE_LIMIT})" in text
    assert "would send a spam message (content scoring over 11): it must arrive tagged, never rejected" in text
    assert "would remove the drill's messages" in text
    assert "review: nothing was stopped or sent" in text
    assert Supervisor(sandbox).pid("postfix") == before


def test_full_drill_passes_and_leaves_the_mail_host_up(drill_world):
    maildir = Path(drill_world["failover"]["maildir"], "new")
    before = sorted(maildir.iterdir())
    started = time.monotonic()
    result = pyinfra(DRILL, timeout=120)
    wall = time.monotonic() - started
    text = output(result)
    assert result.returncode == 0, text
    assert "=> drill passed: " in text
    for index in (1, 2, 3):
        assert f"probe {index} via" in text
    assert "no SPF/DMARC symbol; DKIM R_DKIM_ALLOW" in text
    assert "first attempt after primary-up" in text
    assert "failover 4: all 5 probes queued" in text
    # The large message: over 10 MB, delivered whole; the spam one (scored over docker-mailserver's
    # reject = 11 on content alone) delivered tagged, not rejected: the relay never bounced either.
    large = re.search(r"large message via \S+ +pass .*?: (\d+) bytes sent, (\d+) in the mailbox", text)
    assert large and int(large.group(1)) > 10_240_000, text
    spam = re.search(r"spam message via \S+ +pass .*?tagged \(X-Spam: Yes\), score ([0-9.]+) / ", text)
    assert spam and float(spam.group(1)) >= 11, text
    assert "5/5 messages delivered once and clean" in text
    assert re.search(r"drill messages removed +pass +5 from", text), text
    assert sorted(maildir.iterdir()) == before  # nothing left behind: a re-run starts from the same mailbox
    assert listener_up(drill_world)
    print(f"\nsandbox drill wall time {wall:.1f} s; large message {large.group(1)} bytes; spam score "
          f"{spam.group(1)}; " + next(line.strip() for line in text.splitlines() if "wall time" in line))


def test_whitelist_removed_by_hand_refuses_at_step_1_without_stopping(drill_world, sandbox):
    config_dir = drill_world["postfix_config_dir"]
    cidr = Path(config_dir, CIDR_FILE_NAME)
    original = cidr.read_text()
    before = Supervisor(sandbox).pid("postfix")
    cidr.write_text("# emptied by hand\n")
    reload_postfix(drill_world)
    try:
        result = pyinfra(DRILL, timeout=120)
    finally:
        cidr.write_text(original)
        reload_postfix(drill_world)
    text = output(result)
    assert result.returncode != 0, text
    assert "failover 1: refused: whitelist + exemption live" in text
    assert "DRILL FAILED at step 1" in text
    assert "postfix-service stop (window" not in text  # step 2 never ran
    assert Supervisor(sandbox).pid("postfix") == before  # never stopped
    assert listener_up(drill_world)


def test_relay_outside_the_whitelist_shows_the_penalty_and_fails(drill_world):
    relay(drill_world, source_override="203.0.113.77")
    result = pyinfra(DRILL, timeout=120)
    text = output(result)
    assert result.returncode != 0, text
    assert "SPF/DMARC penalty" in text and "R_SPF_FAIL" in text
    assert "postscreen saw 203.0.113.77, outside the relay CIDRs" in text
    # Outside the relay networks the reject cap does not apply: the spam message is refused by the
    # primary and bounced by the relay; the report names the message and the hop.
    assert re.search(r"spam message via (\S+) +FAIL .*left \1's queue but never arrived: bounced by the primary "
                     r"\(the hop \1 -> sandbox-mailhost\)", text), text
    assert "DRILL FAILED at step 7" in text
    assert "kept for inspection (the drill failed)" in text
    assert listener_up(drill_world)


def test_sigint_during_the_down_window_brings_the_primary_back(drill_world):
    # The relays accept but do not try the primary: step 4 waits (the window stays open).
    relay(drill_world, deliver=False)
    process = start_pyinfra(DRILL, stderr=subprocess.STDOUT)
    lines = []
    try:
        deadline = time.monotonic() + 60
        for line in process.stdout:
            lines.append(line)
            if "failover 4: queued" in line:
                assert not listener_up(drill_world), "the primary should be down during the window"
                process.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "".join(lines)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(lines) + (rest or "")
    assert process.returncode != 0, text
    assert "interrupted by SIGINT" in text
    assert "failover 5: primary up" in text
    assert listener_up(drill_world)
