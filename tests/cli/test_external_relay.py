"""Relay scoring (``mailhost.relay_scoring``) against the sandbox's real rspamd and Postfix.

``exempt`` (the seed's approach) drops SPF and DMARC for the relay networks;
``external_relay`` scores them against the original sender address that the
relay wrote in its own Received header, and caps relayed mail at "add header".

Mail "via the relay" is what the relay hands the mail host: a PROXY v2 header
claiming a relay address, talking before the greeting (the whitelist lets it
through), and the message behind the relay's Received header (Postfix's layout,
as the sandbox relay writes it), naming the address the relay took it from.

The deploys run through the pyinfra CLI; the external_relay inventory is the
sandbox inventory with ``relay_scoring`` set on the mail host (``--data`` would
set it on every host). The module puts the mail host, the fake Cloudflare and the
fake ACC back to their seeded state at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from backupmx.mailhost import render as mailhost_render
from backupmx.mailhost.model import (
    EXEMPT,
    EXTERNAL_RELAY,
    RSPAMD_CAP_RULE,
    RSPAMD_RELAY_SYMBOL,
    RSPAMD_RULE,
    MailHost,
    load_mailhost,
)
from backupmx.mailhost.render import render_external_relay_block
from backupmx_sandbox import seed
from backupmx_sandbox.smtp_client import build_message, send_mail
from support.mailhost import leftovers, run_api_operation, staged_copies, worker_pids
from support.mailpath import endpoint, fresh_address_in, fresh_ipv4, wait_for_delivery
from operations.mailhost import rspamd_exemption
from support.providers import has_line, output, pyinfra
from support.scoring import back_to_seed, external_relay_inventory, files, rspamd_paths

SENDER = f"someone@{seed.SENDER_DOMAIN}"  # SPF: ip4:203.0.113.10 -all; DMARC p=reject
RECIPIENT = f"xrelay@{seed.DOMAIN}"
SPOOFER = "203.0.113.77"  # not in the sender's SPF
LEGIT = seed.SENDER_ALLOWED_IP
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPF_OR_DMARC = re.compile(r"^(R_SPF_|DMARC_POLICY_)")


# --- helpers --------------------------------------------------------------------


def deploy(inventory: str, *args: str, dry: bool = False) -> subprocess.CompletedProcess:
    return pyinfra("deploys/backupmx.py", *args, dry=dry, inventory=inventory)


def relayed(original_ip: str, subject: str, body: str = "Hello via the backup MX.\n",
            sender: str = SENDER) -> tuple[bytes, str]:
    """A message as the relay hands it on: behind its own Received header naming ``original_ip``."""
    message, message_id = build_message(sender, RECIPIENT, subject=subject, body=body)
    header = (f"Received: from client.example (unknown [{original_ip}])\r\n"
              f"\tby mail.rollernet.us (Roller Network relay, backupmx sandbox) with ESMTP id 4B1D2C3E4F\r\n"
              f"\tfor <{RECIPIENT}>; Wed, 25 Nov 2026 23:00:00 +0000\r\n")
    return header.encode() + message, message_id


def relay_address() -> str:
    while True:
        address = fresh_address_in(seed.RELAY_CIDRS[0])
        if address not in seed.RELAY_SOURCE.values():
            return address


def via_relay(world, message: bytes, source: str | None = None):
    """Hand ``message`` to the mail host as a relay does (PROXY v2 from a relay address, talking early)."""
    host, port = endpoint(world["proxy_listener"])
    return send_mail(host, port, SENDER, RECIPIENT, message, proxy_source=source or relay_address(), pregreet=True)


def delivered_verdict(world, message_id: str) -> tuple[set[str], str, str]:
    """(symbols, X-Spamd-Result, Authentication-Results) of a delivered message."""
    delivered = wait_for_delivery(world["maildir"], message_id)
    result = re.sub(r"\s+", " ", str(delivered["X-Spamd-Result"]))
    auth = re.sub(r"\s+", " ", str(delivered["Authentication-Results"]))
    return set(re.findall(r"\b([A-Z][A-Z0-9_]+)\(", result)), result, auth


def scan(world, ip: str, message: bytes) -> dict:
    """The running rspamd's verdict (its controller) for ``message`` claimed from ``ip``."""
    result = subprocess.run(["rspamc", "-h", world["rspamd_controller"], "-j", "-i", ip, "-F", SENDER,
                             "--helo", "client.example", "symbols"], input=message, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout[result.stdout.find(b"{"):])


def spam_body() -> str:
    return ("<p>Dear customer, verify your account now: <a href=\"http://192.0.2.99/login\">"
            "https://www.paypal.com/login</a> and claim your $1,000,000 prize. 100% FREE</p>\n")


def spam_message(original_ip: str) -> tuple[bytes, str]:
    """Spam that scores well above the reject threshold (the sandbox's 11, docker-mailserver's; rspamd's
    own 15) on its own: no rule of ours involved."""
    message, message_id = relayed(original_ip, "URGENT!!! YOUR ACCOUNT WILL BE SUSPENDED", spam_body())
    # No Date, no MIME-Version, HTML only, undisclosed recipients: content rules pile up.
    message = re.sub(rb"(?m)^(Date|MIME-Version): .*\r\n", b"", message)
    message = message.replace(b"Content-Type: text/plain", b"Content-Type: text/html")
    message = message.replace(f"To: <{RECIPIENT}>".encode(), b"To: undisclosed-recipients:;")
    return message, message_id


# --- the modes ------------------------------------------------------------------------

_mode_files: dict[str, dict] = {}


@pytest.fixture(scope="module")
def inventories(world, tmp_path_factory):
    """The sandbox inventory as it is (exempt) and with the mail host switched to external_relay."""
    return {EXEMPT: "inventory/sandbox.py", EXTERNAL_RELAY: external_relay_inventory(tmp_path_factory.mktemp("inventory"))}


@pytest.fixture(scope="module")
def seeded_after(world):
    """Back to the seeded world at the end: mail host as `backupmx-sandbox up` left it, both fakes reset."""
    yield
    back_to_seed(world)


def ensure_mode(world, inventories, mode: str) -> subprocess.CompletedProcess | None:
    """Deploy ``mode`` unless its files are already in place (a deploy takes ~7 s)."""
    if _mode_files.get(mode) is not None and files(world) == _mode_files[mode]:
        return None
    result = deploy(inventories[mode])
    assert result.returncode == 0, output(result)
    _mode_files[mode] = files(world)
    return result


@pytest.fixture
def exempt(world, inventories, seeded_after):
    ensure_mode(world, inventories, EXEMPT)
    return world


@pytest.fixture
def external_relay(world, inventories, seeded_after):
    ensure_mode(world, inventories, EXTERNAL_RELAY)
    return world


# --- exempt (the seed's mode) -----------------------------------------------------------


def test_exempt_mode_a_spoofed_sender_via_the_relay_gets_no_spf_verdict(exempt):
    message, message_id = relayed(SPOOFER, "spoof via relay, exempt")
    result = via_relay(exempt, message)
    assert result.accepted, str(result)
    symbols, spamd, _ = delivered_verdict(exempt, message_id)
    print(f"exempt, spoofed {SENDER} from {SPOOFER} via the relay: {spamd[:160]}")
    assert not {s for s in symbols if SPF_OR_DMARC.match(s)}, spamd
    assert RSPAMD_RELAY_SYMBOL not in symbols


# --- switching ---------------------------------------------------------------------------


def test_dry_run_shows_the_switch_as_a_diff_and_changes_nothing(exempt, inventories):
    before = files(exempt)
    result = deploy(inventories[EXTERNAL_RELAY], dry=True)
    text = output(result)
    assert result.returncode == 0, text
    assert "Traceback" not in text
    for line in (f"-{RSPAMD_RULE} {{", f"+{RSPAMD_CAP_RULE} {{", "-    groups_disabled = ",
                 f"+++ {rspamd_paths(exempt)['external_relay.conf']}", "+    strategy = \"count\";",
                 f"+++ {rspamd_paths(exempt)['rspamd.lua']}", f"+  rspamd_config:add_condition(\"{RSPAMD_RELAY_SYMBOL}\""):
        assert any(row.strip() == line.strip() or row.strip().startswith(line.strip()) for row in text.splitlines()), line
    assert files(exempt) == before


def test_switch_to_external_relay_and_stage_4_proves_it(world, inventories, seeded_after):
    ensure_mode(world, inventories, EXEMPT)
    result = deploy(inventories[EXTERNAL_RELAY])
    text = output(result)
    assert result.returncode == 0, text
    _mode_files[EXTERNAL_RELAY] = files(world)
    proof = next(line for line in text.splitlines() if "stage 4: whitelist and exemption proven live" in line)
    print(proof.strip())
    assert f"configdump: {RSPAMD_CAP_RULE} for 3 networks" in proof
    assert re.search(rf"rspamc: relay \S+ scored as its Received header's 203\.0\.113\.1: {RSPAMD_RELAY_SYMBOL}, "
                     r"R_SPF_\w+, action (?!reject)", proof), proof
    assert leftovers(world) == []


# --- external_relay --------------------------------------------------------------------


def test_external_relay_a_spoofed_sender_via_the_relay_fails_spf_on_its_original_address(external_relay):
    message, message_id = relayed(SPOOFER, "spoof via relay, external_relay")
    result = via_relay(external_relay, message)
    assert result.accepted, str(result)
    symbols, spamd, auth = delivered_verdict(external_relay, message_id)
    print(f"external_relay, spoofed {SENDER} from {SPOOFER} via the relay: {auth}")
    assert {"R_SPF_FAIL", "DMARC_POLICY_REJECT", RSPAMD_RELAY_SYMBOL} <= symbols, spamd
    assert f"does not designate {SPOOFER} as permitted sender" in auth  # scored against the original address


def test_external_relay_a_legitimate_sender_via_the_relay_passes_spf_and_dmarc(external_relay):
    message, message_id = relayed(LEGIT, "legit via relay, external_relay")
    result = via_relay(external_relay, message)
    assert result.accepted, str(result)
    symbols, spamd, auth = delivered_verdict(external_relay, message_id)
    print(f"external_relay, {SENDER} from {LEGIT} via the relay: {auth}")
    assert {"R_SPF_ALLOW", "DMARC_POLICY_ALLOW", RSPAMD_RELAY_SYMBOL} <= symbols, spamd
    assert f"designates {LEGIT} as permitted sender" in auth


def test_external_relay_parses_the_sandbox_relays_own_received_header(external_relay):
    """Through the fake Roller Network relay itself: its real header (Postfix layout) is the one taken.

    The sandbox relay's client is on loopback, so the address it records is
    127.0.0.1, which rspamd's SPF module does not check (local address): the
    proof here is the rule firing and rspamd logging the address from the header.
    """
    relay = next(item for item in external_relay["relays"] if item["host"] == "mail.rollernet.us")
    host, port = endpoint(relay["smtp"])
    message, message_id = build_message(SENDER, RECIPIENT, subject="through the sandbox relay")
    result = send_mail(host, port, SENDER, RECIPIENT, message)
    assert result.accepted, str(result)
    delivered = wait_for_delivery(external_relay["maildir"], message_id, timeout=60)
    received = [re.sub(r"\s+", " ", str(value)) for value in delivered.get_all("Received")]
    assert "(Roller Network relay, backupmx sandbox)" in received[1], received
    symbols, spamd, _ = delivered_verdict(external_relay, message_id)
    print(f"via the sandbox relay: {received[1][:90]}...; {RSPAMD_RELAY_SYMBOL} in {spamd[:120]}...")
    assert RSPAMD_RELAY_SYMBOL in symbols, spamd
    log = Path(external_relay["root"], "mailhost", "rspamd-log", "rspamd.log").read_text(errors="replace")
    line = next(line for line in reversed(log.splitlines()) if f"id: {message_id}" in line and "ip: " in line)
    assert "ip: 127.0.0.1," in line, line  # the relay's client, not its PROXY source 192.0.2.25


def test_external_relay_trusts_the_received_header_of_relay_addresses_only(external_relay):
    """A client outside the relay networks cannot name an address SPF allows in a Received header of its own."""
    outside = fresh_ipv4()
    forged, _ = relayed(LEGIT, "forged received header")
    verdict = scan(external_relay, outside, forged)
    assert "R_SPF_FAIL" in verdict["symbols"] and RSPAMD_RELAY_SYMBOL not in verdict["symbols"], \
        sorted(verdict["symbols"])
    # The same message from a relay address is scored against the header's address.
    relayed_verdict = scan(external_relay, relay_address(), forged)
    assert {"R_SPF_ALLOW", RSPAMD_RELAY_SYMBOL} <= set(relayed_verdict["symbols"])


def test_external_relay_caps_spam_via_the_relay_at_add_header(external_relay):
    """Spam over the reject threshold is folded to Junk when relayed, rejected when it comes directly."""
    message, message_id = spam_message(SPOOFER)
    direct = scan(external_relay, SPOOFER, message)
    relayed_scan = scan(external_relay, relay_address(), message)
    print(f"spam directly from {SPOOFER}: {direct['action']} ({direct['score']:.1f}); "
          f"via the relay: {relayed_scan['action']} ({relayed_scan['score']:.1f})")
    assert direct["action"] == "reject" and direct["score"] >= 15
    assert relayed_scan["action"] == "add header" and relayed_scan["score"] >= 15

    result = via_relay(external_relay, message)  # through postscreen -> smtpd -> milter
    print(f"spam via the relay through Postfix: DATA {result.reply('MESSAGE')}")
    assert result.code("MESSAGE") == 250 and result.accepted, str(result)
    symbols, spamd, _ = delivered_verdict(external_relay, message_id)
    score, reject = map(float, re.search(r"\[([\d.]+) / ([\d.]+)\]", spamd).groups())
    assert score >= reject and score >= 15 and RSPAMD_RELAY_SYMBOL in symbols, spamd


def test_external_relay_gtube_via_the_relay_is_still_rejected_rspamd_3_4_limit(external_relay):
    """GTUBE is not capped: rspamd 3.4 stops at the pattern, before the settings rule is even looked up.

    Documented in docs/mailhost.md; score-based spam and pre-results of modules
    (force_actions, antivirus) are capped (see the test above, and the doc).
    """
    message, _ = relayed(SPOOFER, "gtube via relay", f"{GTUBE}\n")
    verdict = scan(external_relay, relay_address(), message)
    result = via_relay(external_relay, message)
    print(f"GTUBE via the relay: rspamc action {verdict['action']}; Postfix DATA {result.reply('MESSAGE')}")
    assert verdict["action"] == "reject" and list(verdict["symbols"]) == ["GTUBE"]
    assert result.code("MESSAGE") == 554


def test_external_relay_second_run_changes_nothing(external_relay, inventories):
    before = files(external_relay)
    result = deploy(inventories[EXTERNAL_RELAY])
    text = output(result)
    assert result.returncode == 0, text
    assert re.search(r"verify live on every mail host\s+pass", text), text
    assert "relay scoring external_relay" in text
    assert files(external_relay) == before


def test_external_relay_drift_check_sees_an_edited_lua_block_only(external_relay, inventories):
    """deploys/drift.py: an edit inside our rspamd.lua block is drift; a site's own line after it is not."""
    lua = rspamd_paths(external_relay)["rspamd.lua"]
    original = lua.read_bytes()

    def drift() -> subprocess.CompletedProcess:
        return pyinfra("deploys/drift.py", "--limit", "sandbox-mailhost", inventory=inventories[EXTERNAL_RELAY])

    try:
        lua.write_bytes(original + b"-- a site's own line\n")
        result = drift()
        assert result.returncode == 0 and has_line(result.stdout, "no drift"), output(result)
        lua.write_bytes(original.replace(b"ip:is_valid() and ", b""))
        result = drift()
        assert result.returncode == 1, output(result)
        assert f"DRIFT exemption sandbox-mailhost: change {lua}" in result.stdout, output(result)
    finally:
        lua.write_bytes(original)  # never loaded: rspamd was not reloaded


# --- round trip, failure, bad input -------------------------------------------------------


def test_exempt_to_external_relay_to_exempt_is_byte_identical(world, inventories, seeded_after):
    ensure_mode(world, inventories, EXEMPT)
    before = files(world)
    assert before["external_relay.conf"] is None and before["rspamd.lua"] is None
    for mode in (EXTERNAL_RELAY, EXEMPT):
        result = deploy(inventories[mode])
        assert result.returncode == 0, output(result)
        assert "stage 4: whitelist and exemption proven live" in output(result)
        _mode_files[mode] = files(world)
        if mode == EXTERNAL_RELAY:
            assert files(world)["settings.conf"] != before["settings.conf"]
            assert files(world)["external_relay.conf"] and files(world)["rspamd.lua"]
    assert files(world) == before
    assert leftovers(world) == []


def _run_rspamd_operation(world, mailhost: MailHost, caplog, **kwargs) -> tuple[bool, str]:

    return run_api_operation(world["ssh"], "sandbox-mailhost", rspamd_exemption, caplog, mailhost=mailhost,
                             relay_cidrs=world["relay_cidrs"], **kwargs)


def test_a_failed_switch_restores_all_three_files_and_reloads_nothing(exempt, monkeypatch, caplog):
    """rspamadm configtest fails on the new external_relay.conf: the switch is all or nothing."""
    before, pids = files(exempt), worker_pids(exempt)
    render = render_external_relay_block
    monkeypatch.setattr(mailhost_render, "render_external_relay_block",
                        lambda: render() + '.include "$LOCAL_CONFDIR/local.d/backupmx-missing.inc"\n')
    mailhost = load_mailhost({**exempt["mailhost"], "relay_scoring": EXTERNAL_RELAY})

    ok, log = _run_rspamd_operation(exempt, mailhost, caplog)

    assert not ok
    lines = [line for line in log.splitlines() if "backupmx: rspamd_exemption:" in line]
    print(lines[0])
    assert len(lines) == 1 and "rspamadm configtest fails after the change" in lines[0], log
    assert "restored byte for byte (settings.conf, external_relay.conf, rspamd.lua)" in lines[0]
    assert files(exempt) == before and leftovers(exempt) == []
    assert staged_copies(rspamd_paths(exempt)) == []
    assert worker_pids(exempt) == pids, "rspamd was reloaded"


def test_present_false_takes_every_external_relay_block_out(external_relay, caplog):
    """What rollback (--data revert_mailhost=true) runs: no rspamd file of ours is left, in either mode."""
    mailhost = load_mailhost({**external_relay["mailhost"], "relay_scoring": EXTERNAL_RELAY})
    ok, log = _run_rspamd_operation(external_relay, mailhost, caplog, present=False)
    assert ok, log
    state = files(external_relay)
    assert state["settings.conf"] is None and state["external_relay.conf"] is None and state["rspamd.lua"] is None
    message, _ = relayed(SPOOFER, "after present=False")
    verdict = scan(external_relay, relay_address(), message)
    assert "R_SPF_FAIL" in verdict["symbols"] and RSPAMD_RELAY_SYMBOL not in verdict["symbols"]


@pytest.mark.parametrize("value", ["spf_off", "External_Relay", 1])
def test_an_unknown_relay_scoring_is_one_line_naming_the_field(world, inventories, seeded_after, value):
    before = files(world)
    data = {**world["mailhost"], "relay_scoring": value}
    result = deploy(inventories[EXEMPT], "--data", f"mailhost={json.dumps(data)}")
    text = output(result)
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert result.returncode != 0 and "Traceback" not in text, text
    assert len(errors) == 1 and "inventory data mailhost.relay_scoring:" in errors[0], text
    assert "use one of exempt, external_relay" in errors[0]
    print(errors[0])
    assert files(world) == before
