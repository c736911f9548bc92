"""Stages 3 and 4 against the sandbox's real Postfix (postscreen) and rspamd.

The deploy runs through the pyinfra CLI as a user runs it; the mail path is then
exercised for real: SMTP through the PROXY-v2 listener claiming relay or outside
addresses (talking before the greeting), rspamd scans through its controller, and
whole messages through postscreen -> smtpd -> rspamd milter -> Maildir.

postscreen keeps a PASS cache per address for a day: every SMTP case claims a
fresh random address. Assertions are on rspamd symbols, never on scores.

The module leaves the mail host as it found it (``found_state``); tests that need
the sandbox's original configuration reset it first (``pristine``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import dkim
import pytest

import backupmx.mailhost.plan
from backupmx.mailhost import render as mailhost_render
from backupmx.mailhost.listener import wanted_listener_options
from backupmx.mailhost.model import load_mailhost
from backupmx.mailhost.render import render_postscreen_access, render_rspamd_block
from backupmx_sandbox import seed
from backupmx_sandbox.smtp_client import build_message, send_mail
from support.mailhost import (
    leftovers,
    managed_paths,
    pristine_state,
    reload_rspamd,
    restore,
    run_api_operation,
    services_answer,
    snapshot,
    worker_pids,
)
from support.mailpath import endpoint, fresh_ipv4, fresh_ipv6, wait_for_delivery
from operations.mailhost import postscreen_whitelist, rspamd_exemption
from support.providers import admin, output, pyinfra

RECIPIENT = f"stage3-{os.getpid()}@{seed.DOMAIN}"
SENDER = f"someone@{seed.SENDER_DOMAIN}"  # SPF -all (not the relays), DMARC p=reject
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPF_OR_DMARC = re.compile(r"^(R_SPF_|DMARC_POLICY_)")


# --- helpers --------------------------------------------------------------------


def deploy(*args: str, dry: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    return pyinfra("deploys/backupmx.py", *args, dry=dry, timeout=timeout)


def relay_address(network: str = seed.RELAY_CIDRS[0]) -> str:
    """A fresh address in a relay network, never one of the fake relays' own (they pass and get cached)."""
    while True:
        net = ipaddress.ip_network(network)
        address = str(net.network_address + random.randrange(2, min(net.num_addresses - 1, 2**32)))
        if address not in seed.RELAY_SOURCE.values():
            return address


def outside_address() -> str:
    return fresh_ipv4()


def pregreet(world, source: str, subject: str = "pregreet"):
    message, message_id = build_message(SENDER, RECIPIENT, subject=f"{subject} {source}")
    host, port = endpoint(world["proxy_listener"])
    return send_mail(host, port, SENDER, RECIPIENT, message, proxy_source=source, pregreet=True), message_id


def rspamc_symbols(world, ip: str, message: bytes, mail_from: str = SENDER) -> set[str]:
    """What the running rspamd concludes for ``message`` claimed from ``ip`` (its controller)."""
    result = subprocess.run(
        ["rspamc", "-h", world["rspamd_controller"], "-j", "-i", ip, "-F", mail_from, "--helo", "relay.example",
         "symbols"], input=message, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout[result.stdout.find(b"{"):])
    return set(data["symbols"])


def header_symbols(delivered) -> set[str]:
    return set(re.findall(r"\b([A-Z][A-Z0-9_]+)\(", str(delivered["X-Spamd-Result"])))


def signed_message(world, subject: str, body: str = "Signed through the relay.\n") -> tuple[bytes, str]:
    message, message_id = build_message(SENDER, RECIPIENT, subject=subject, body=body)
    key = Path(world["dkim_key"]).read_bytes()
    signature = dkim.sign(message, world["dkim_selector"].encode(), seed.SENDER_DOMAIN.encode(), key,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + message, message_id


def one_error_line(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error" in line.lower() and "backupmx" in line.lower()
            or "pyinfra error" in line or "Operation error" in line]


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def found_state(world):
    """The mail host as this module found it; put back (and reloaded) at the end."""
    state = snapshot(world)
    yield state
    restore(world, state)
    assert leftovers(world) == []


@pytest.fixture
def pristine(world, found_state):
    """The sandbox's original mail host configuration, live (reloaded) before the test."""
    restore(world, pristine_state(world))
    return snapshot(world)


@pytest.fixture(scope="module")
def before_and_after(world, found_state):
    """SMTP and rspamd behaviour on the original configuration, then the deploy once (timed)."""
    restore(world, pristine_state(world))
    before = {
        "relay_v4": pregreet(world, relay_address(seed.RELAY_CIDRS[0]), "before relay v4")[0],
        "relay_v6": pregreet(world, relay_address(seed.RELAY_CIDRS[2]), "before relay v6")[0],
        "outside": pregreet(world, outside_address(), "before outside")[0],
        "rspamd_relay": rspamc_symbols(world, relay_address(), build_message(SENDER, RECIPIENT)[0]),
    }
    started = time.monotonic()
    result = deploy()
    took = time.monotonic() - started
    return {"before": before, "deploy": result, "seconds": took}


# --- stage 3 and 4, first apply -----------------------------------------------------


def test_before_the_stage_relays_fail_the_pregreet_test_and_spf_dmarc_count(before_and_after):
    """The defaults the stage changes: without it a relay talking early is refused, SPF/DMARC are scored."""
    before = before_and_after["before"]
    for case in ("relay_v4", "relay_v6", "outside"):
        result = before[case]
        assert result.code("RCPT") == 550 and "5.5.1" in result.reply("RCPT").text, f"{case}: {result}"
    assert {"R_SPF_FAIL", "DMARC_POLICY_REJECT"} <= before["rspamd_relay"]


def test_deploy_applies_stage_3_and_proves_stage_4(before_and_after):
    result = before_and_after["deploy"]
    text = output(result)
    assert result.returncode == 0, text
    assert "Traceback" not in text
    assert "stage 4: whitelist and exemption proven live" in text
    for check in ("postmap:", "postconf -P:", "configdump:", "rspamc:", "relayed envelope:"):
        assert check in text
    print(f"first apply through the CLI: {before_and_after['seconds']:.1f}s")


@pytest.mark.parametrize("network", seed.RELAY_CIDRS)
def test_relays_talking_early_are_let_through_and_delivered(world, before_and_after, network):
    source = relay_address(network)
    result, message_id = pregreet(world, source, "relay after")
    assert result.code("RCPT") == 250, str(result)
    assert result.accepted, str(result)
    assert source in wait_for_delivery(world["maildir"], message_id)["Received"]


@pytest.mark.parametrize("fresh", [outside_address, fresh_ipv6], ids=["ipv4", "ipv6"])
def test_outside_clients_talking_early_are_still_rejected(world, before_and_after, fresh):
    result, _ = pregreet(world, fresh(), "outside after")
    assert result.code("RCPT") == 550 and "5.5.1" in result.reply("RCPT").text, str(result)
    assert not result.accepted


def test_whitelist_is_on_the_proxy_listener_only(world, before_and_after):
    config_dir = world["postfix_config_dir"]
    overrides = subprocess.run(["postconf", "-c", config_dir, "-P"], capture_output=True, text=True).stdout
    lines = [line for line in overrides.splitlines() if "/postscreen_access_list = " in line]
    assert len(lines) == 1 and lines[0].startswith(world["mailhost"]["proxy_service"] + "/"), overrides
    assert lines[0].endswith(f"cidr:{config_dir}/postscreen_access.cidr")
    main = subprocess.run(["postconf", "-c", config_dir, "-h", "postscreen_access_list"],
                          capture_output=True, text=True).stdout.strip()
    assert main == "permit_mynetworks"
    # Two postscreen services never share one cache file.
    caches = [line for line in overrides.splitlines() if "/postscreen_cache_map = " in line]
    assert len(caches) == 1 and caches[0].startswith(world["mailhost"]["proxy_service"] + "/")


def test_rspamd_drops_spf_and_dmarc_for_relay_addresses_only(world, before_and_after):
    message, _ = build_message(SENDER, RECIPIENT, subject="rspamd exemption")
    relay = rspamc_symbols(world, relay_address(seed.RELAY_CIDRS[1]), message)
    relay_v6 = rspamc_symbols(world, relay_address(seed.RELAY_CIDRS[2]), message)
    outside = rspamc_symbols(world, outside_address(), message)
    assert not {s for s in relay | relay_v6 if SPF_OR_DMARC.match(s)}, sorted(relay | relay_v6)
    assert {"R_SPF_FAIL", "DMARC_POLICY_REJECT"} <= outside, sorted(outside)


def test_relayed_mail_through_the_whole_path_skips_spf_and_dmarc_but_dkim_is_verified(world, before_and_after):
    message, message_id = signed_message(world, "dkim via relay")
    host, port = endpoint(world["proxy_listener"])
    result = send_mail(host, port, SENDER, RECIPIENT, message, proxy_source=relay_address(), pregreet=True)
    assert result.accepted, str(result)
    symbols = header_symbols(wait_for_delivery(world["maildir"], message_id))
    assert "R_DKIM_ALLOW" in symbols, sorted(symbols)
    assert not {s for s in symbols if SPF_OR_DMARC.match(s)}, sorted(symbols)


def test_gtube_via_a_relay_is_still_rejected(world, before_and_after):
    message, _ = build_message(SENDER, RECIPIENT, subject="gtube via relay", body=f"{GTUBE}\n")
    host, port = endpoint(world["proxy_listener"])
    result = send_mail(host, port, SENDER, RECIPIENT, message, proxy_source=relay_address(), pregreet=True)
    assert result.code("RCPT") == 250, str(result)
    assert result.code("MESSAGE") == 554 and not result.accepted, str(result)


def test_second_run_changes_nothing(world, before_and_after):
    before = snapshot(world)
    pids = worker_pids(world)
    started = time.monotonic()
    result = deploy()
    took = time.monotonic() - started
    text = output(result)
    assert result.returncode == 0, text
    assert "Stage 4: prove" not in text, "proven while preparing: no operation left to run"
    results = text[text.index("--> Results:"):]
    for line in results.splitlines():
        if line.strip().startswith("Stage 3"):
            assert re.search(r"\s1\s+-\s+-\s+1\s*$", line), line  # hosts 1, success -, error -, no change 1
    assert re.search(r"verify live on every mail host\s+pass", text)
    assert snapshot(world) == before and worker_pids(world) == pids  # nothing written, nothing reloaded
    print(f"no-op second run through the CLI: {took:.1f}s")


def test_dry_run_on_a_changed_cidr_list_shows_the_diff_and_changes_nothing(world, before_and_after):
    before = snapshot(world)
    pids = worker_pids(world)
    changed = seed.RELAY_CIDRS[:1] + ["203.0.113.0/24"] + seed.RELAY_CIDRS[2:]
    # The provider announced the new list too, so gate G4 lets the review through.
    admin(world, "state", {"relay_cidrs": changed})
    try:
        result = deploy("--data", f"relay_cidrs={json.dumps(changed)}", dry=True)
    finally:
        admin(world, "reset", {})
    text = output(result)
    assert result.returncode == 0, text
    assert "-198.51.100.0/24\tpermit" in text and "+203.0.113.0/24\tpermit" in text
    assert '-    "198.51.100.0/24",' in text and '+    "203.0.113.0/24",' in text
    assert f"+++ {managed_paths(world)['master.cf']}" not in text, "the listener's options do not change"
    assert "proven at execution, after stage 3" in text
    assert snapshot(world) == before and worker_pids(world) == pids and leftovers(world) == []


# --- bad input: one clear error, the host untouched -----------------------------------------


@pytest.mark.parametrize("value,field", [
    ('["192.0.2.0/33"]', "relay_cidrs[0]"),
    ('["relay.example"]', "relay_cidrs[0]"),
    ('["192.0.2.1/24"]', "relay_cidrs[0]"),
    ("[]", "relay_cidrs"),
    ('["0.0.0.0/0"]', "relay_cidrs[0]"),
    ('["10.0.0.0/8"]', "relay_cidrs[0]"),
    ('["2001:db8::/24"]', "relay_cidrs[0]"),
], ids=["malformed", "not-an-address", "host-bits", "empty", "everything", "wider-than-16", "ipv6-wider-than-32"])
def test_bad_relay_cidrs_stop_before_the_host_is_touched(world, pristine, value, field):
    result = deploy("--data", f"relay_cidrs={value}")
    text = output(result)
    assert result.returncode != 0
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1 and field in errors[0], text
    assert snapshot(world) == pristine and leftovers(world) == []


def test_a_listener_that_does_not_exist_is_named_with_the_ones_that_do(world, pristine):
    data = dict(world["mailhost"], proxy_service="127.0.0.1:2/inet")
    result = deploy("--data", f"mailhost={json.dumps(data)}")
    text = output(result)
    assert result.returncode != 0
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1, text
    assert "no service 127.0.0.1:2/inet" in errors[0]
    for listener in (world["mailhost"]["proxy_service"], world["smtp_listener"] + "/inet"):
        assert listener in errors[0]
    assert snapshot(world) == pristine and leftovers(world) == []


@pytest.mark.parametrize("change,field", [
    ({"flavour": "qmail"}, "mailhost.flavour"),
    ({"proxy_service": "2525 inet"}, "mailhost.proxy_service"),
    ({"postfix_config_dir": "relative/dir"}, "mailhost.postfix_config_dir"),
    ({"rspamd_reload": "systemctl reload rspamd"}, "mailhost.rspamd_reload"),
])
def test_bad_mailhost_data_is_one_line_naming_the_field(world, pristine, change, field):
    data = dict(world["mailhost"], **change)
    result = deploy("--data", f"mailhost={json.dumps(data)}")
    errors = [line for line in output(result).splitlines() if "pyinfra error" in line]
    assert result.returncode != 0 and len(errors) == 1 and field in errors[0], output(result)
    assert snapshot(world) == pristine


# --- faults: validation fails, the previous files come back ---------------------------------


def run_operation(world, operation, caplog, **kwargs) -> tuple[bool, str]:
    """One stage 3 operation through pyinfra's API; (succeeded, what pyinfra logged)."""
    return run_api_operation(world["ssh"], "sandbox-mailhost", operation, caplog,
                             mailhost=load_mailhost(world["mailhost"]), relay_cidrs=world["relay_cidrs"], **kwargs)


def assert_services_answer(world) -> None:
    services_answer(world, RECIPIENT)


def test_broken_rspamd_include_is_rolled_back_byte_for_byte(world, pristine, monkeypatch, caplog):
    # Make the foreign part of settings.conf non-trivial: it must survive untouched.
    settings = managed_paths(world)["settings.conf"]
    foreign = b"# a rule of the site's own\nsite_rule {\n  priority = low;\n  ip = \"198.18.0.0/15\";\n  apply { actions { reject = 50; } }\n}\n"
    settings.write_bytes(foreign)
    reload_rspamd(world)
    before, pids = snapshot(world), worker_pids(world)
    render = render_rspamd_block
    monkeypatch.setattr(mailhost_render, "render_rspamd_block",
                        lambda cidrs: render(cidrs) + '.include "$LOCAL_CONFDIR/local.d/backupmx-missing.inc"\n')

    ok, log = run_operation(world, rspamd_exemption, caplog)

    assert not ok
    lines = [line for line in log.splitlines() if "backupmx: rspamd_exemption:" in line]
    print(lines[0])
    assert len(lines) == 1 and "rspamadm configtest fails after the change" in lines[0], log
    assert "backupmx-missing.inc" in lines[0] and "restored byte for byte" in lines[0]
    assert snapshot(world) == before and settings.read_bytes() == foreign
    assert worker_pids(world) == pids, "rspamd was reloaded"
    assert leftovers(world) == []
    assert_services_answer(world)
    settings.unlink()
    reload_rspamd(world)


def test_postfix_check_warning_is_rolled_back(world, pristine, monkeypatch, caplog):
    """A misspelled parameter only makes `postfix check` warn (exit 0): that warning must count."""
    wanted = wanted_listener_options
    monkeypatch.setattr(backupmx.mailhost.plan, "wanted_listener_options",
                        lambda *args: {**wanted(*args), "postscren_greet_action": "enforce"})

    ok, log = run_operation(world, postscreen_whitelist, caplog)

    assert not ok
    lines = [line for line in log.splitlines() if "backupmx: postscreen_whitelist" in line]
    print(lines[0])
    assert len(lines) == 1 and "postfix check warns after the change" in lines[0], log
    assert "unused parameter: postscren_greet_action" in lines[0]
    assert snapshot(world) == pristine and leftovers(world) == []
    assert_services_answer(world)
    result, _ = pregreet(world, relay_address(), "after failed whitelist")
    assert result.code("RCPT") == 550, "the old configuration is still in force"


def test_postmap_probe_failure_is_rolled_back(world, pristine, monkeypatch, caplog):
    """A table that leaves out a relay network fails its probe: nothing reloaded."""
    render = render_postscreen_access
    monkeypatch.setattr(backupmx.mailhost.plan, "render_postscreen_access", lambda cidrs: render(list(cidrs)[:1]))

    ok, log = run_operation(world, postscreen_whitelist, caplog)

    assert not ok
    lines = [line for line in log.splitlines() if "backupmx: postscreen_whitelist" in line]
    print(lines[0])
    assert len(lines) == 1 and "postmap probe: 198.51.100.1 should answer permit" in lines[0], log
    assert snapshot(world) == pristine and leftovers(world) == []
    assert_services_answer(world)


# --- taking it out again -----------------------------------------------------------------------


def test_present_false_takes_both_out_byte_for_byte(world, pristine, caplog):
    for operation in (rspamd_exemption, postscreen_whitelist):
        assert run_operation(world, operation, caplog)[0]
    assert snapshot(world) != pristine
    assert pregreet(world, relay_address(), "applied")[0].code("RCPT") == 250

    for operation in (postscreen_whitelist, rspamd_exemption):
        ok, log = run_operation(world, operation, caplog, present=False)
        assert ok, log

    assert snapshot(world) == pristine and leftovers(world) == []
    assert pregreet(world, relay_address(), "removed")[0].code("RCPT") == 550
    message = build_message(SENDER, RECIPIENT)[0]
    assert "R_SPF_FAIL" in rspamc_symbols(world, relay_address(), message)
