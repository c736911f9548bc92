"""The weekly canary's pure parts: its data, when to stop waiting, which hop failed, the metrics
file, the hand-off script's answer, and one whole run against stand-ins for the hosts.
The canary against the sandbox's daemons: tests/cli/test_canary.py."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import subprocess

import pytest

from backupmx.core.errors import ConfigError
from backupmx.core.report import FAIL, PASS
from backupmx.lifecycle.canary.run import CanaryRun, by_message_id
from backupmx.lifecycle.canary.send import parse_send, send_argv
from backupmx.lifecycle.canary.settings import load_canary
from backupmx.lifecycle.canary.verdict import (
    JUDGED,
    LOST,
    NOT_SENT,
    REFUSED_BY_PRIMARY,
    REFUSED_BY_RELAY,
    STUCK,
    UNREAD,
    Canary,
    SendOutcome,
    judge,
    maildir_time,
    observe_queue,
    settled,
)
from backupmx.lifecycle.probes import compose_message, verdicts
from backupmx.mailhost.maildir import Delivered
from backupmx.mailhost.model import EXEMPT, EXTERNAL_RELAY, RSPAMD_RELAY_SYMBOL, load_mailhost
from backupmx.monitoring.canary_metrics import CanaryResult, last_successes, render_metrics
from backupmx.providers.base import QueuedMessage
from facts.maildir import MaildirMessages
from support.clock import Clock
from support.seed import seed_settings

SETTINGS = seed_settings()
CIDRS = [str(n) for n in SETTINGS.relay_cidrs]  # 162.216.242.0/24, 72.51.58.0/24
NATIVE = load_mailhost({"flavour": "native", "proxy_service": "127.0.0.1:2525/inet"})
CLEAN = "R_DKIM_ALLOW(-0.20)[sender.test:sb]; ARC_NA(0.00)[]"


def delivered(spamd: str = CLEAN, client: str = "162.216.242.25", message_id: str = "<backupmx-canary.r.d.1@s>"):
    raw = (f"Received: from mail.rollernet.us (unknown [{client}]) by mail.example with ESMTP id X\r\n"
           "Received: from mail.example.org (unknown [198.18.0.9]) by mail.rollernet.us with ESMTPS id Y\r\n"
           f"X-Spamd-Result: default: False [0.5 / 15.0]; {spamd}\r\n"
           f"Message-ID: {message_id}\r\n\r\nbody\r\n").encode()
    return email.message_from_bytes(raw, policy=email.policy.default)


def canary(**fields) -> Canary:
    base = dict(domain="viktorbarzin.me", relay="mail.rollernet.us", endpoint="mail.rollernet.us:25",
                sender="backupmx-canary-r-1@s", recipient="backupmx-canary@viktorbarzin.me",
                message_id="<backupmx-canary.r.d.1@s>", signed=True, send=SendOutcome(True, "250 2.0.0 Ok", at=100.0),
                handed_off=10.0)
    base.update(fields)
    return Canary(**base)


def queued(held=False, last_error=None, attempts=0) -> QueuedMessage:
    return QueuedMessage("Q1", "backupmx-canary-r-1@s", ("backupmx-canary@viktorbarzin.me",), 900, None, attempts,
                         held, last_error)


# --- the data -------------------------------------------------------------------


def test_canary_data_defaults_and_one_line_refusals():
    c = load_canary({"maildir": "/var/mail/canary/"}, SETTINGS)
    assert c.maildir == "/var/mail/canary" and c.recipient("viktorbarzin.me") == "backupmx-canary@viktorbarzin.me"
    assert c.sender_domain == "viktorbarzin.me" and c.helo == "mail.viktorbarzin.me" and not c.signed
    assert (c.wait_seconds, c.settle_seconds, c.poll_seconds, c.send_from, c.metrics_file) == (120, 20, 2, None, None)
    for data, words in [
        (None, "canary: missing"),
        ({}, "canary.maildir: missing"),
        ({"maildir": "relative"}, "canary.maildir: 'relative' is not an absolute path"),
        ({"maildir": "/m", "recipent": "x"}, "canary.recipent: is not a known key; did you mean recipient?"),
        ({"maildir": "/m", "recipient": "no at sign"}, "canary.recipient: 'no at sign' is not an address"),
        ({"maildir": "/m", "recipient": "c@other.example"}, "is not an address at viktorbarzin.me"),
        ({"maildir": "/m", "dkim_key": "/k"}, "canary.dkim_selector: missing"),
        ({"maildir": "/m", "dkim_selector": "s"}, "canary.dkim_selector: set without canary.dkim_key"),
        ({"maildir": "/m", "helo": "localhost"}, "canary.helo: 'localhost' is not a valid host name"),
        ({"maildir": "/m", "wait_seconds": 0}, "canary.wait_seconds: 0 is not a number of seconds"),
        ({"maildir": "/m", "poll_seconds": True}, "canary.poll_seconds: True is not a number of seconds"),
        ({"maildir": "/m", "send_from": ""}, "canary.send_from: '' is not an inventory host name"),
    ]:
        with pytest.raises(ConfigError, match=words.replace("?", r"\?").replace("(", r"\(")):
            load_canary(data, SETTINGS)


def test_several_domains_need_the_domain_placeholder():
    two = seed_settings(domains=[{"name": "a.example", "primary_mx": [{"host": "mx.a.example", "priority": 1}]},
                                 {"name": "b.example", "primary_mx": [{"host": "mx.b.example", "priority": 1}]}])
    with pytest.raises(ConfigError, match=r"several domains: write \{domain\}"):
        load_canary({"maildir": "/m", "recipient": "canary@a.example"}, two)
    c = load_canary({"maildir": "/m", "recipient": "canary+{domain}@{domain}"}, two)
    assert c.recipients == (("a.example", "canary+a.example@a.example"), ("b.example", "canary+b.example@b.example"))


# --- waiting and judging ------------------------------------------------------------


def test_settled_when_delivered_refused_held_deferred_long_enough_or_gone():
    assert settled(canary(copies=[Delivered(delivered(), 0, "f")]), 0, 20, 3)
    assert settled(canary(send=SendOutcome(False, "554", "RCPT TO", 554)), 0, 20, 3)
    waiting = canary()
    assert not settled(waiting, 11, 20, 3)
    observe_queue(waiting, queued(), 11)
    assert not settled(waiting, 12, 20, 3)
    observe_queue(waiting, queued(last_error="connect to mail: Connection refused", attempts=1), 12)
    assert not settled(waiting, 31, 20, 3) and settled(waiting, 32, 20, 3)
    held = canary()
    observe_queue(held, queued(held=True), 11)
    assert settled(held, 11, 20, 3)
    gone = canary()
    observe_queue(gone, queued(), 11)
    observe_queue(gone, None, 12)
    assert gone.left_queue == 12 and not settled(gone, 14, 20, 3) and settled(gone, 15, 20, 3)


def test_each_hop_is_named():
    relay = judge(canary(send=SendOutcome(False, "554 5.7.1 <c@d>: Relay access denied", "RCPT TO", 554)),
                  CIDRS, EXEMPT, 1)
    assert (relay.status, relay.hop) == (FAIL, REFUSED_BY_RELAY)
    assert relay.text == "refused by the relay: RCPT TO answered 554 5.7.1 <c@d>: Relay access denied"
    unreachable = judge(canary(send=SendOutcome(False, "ConnectionRefusedError: refused", "connect")), CIDRS, EXEMPT, 1)
    assert unreachable.hop == REFUSED_BY_RELAY and "cannot connect to mail.rollernet.us:25" in unreachable.text
    not_sent = judge(canary(send=SendOutcome(False, "the send script failed", "send host")), CIDRS, EXEMPT, 1)
    assert not_sent.hop == NOT_SENT

    held = canary()
    observe_queue(held, queued(held=True), 11)
    assert judge(held, CIDRS, EXEMPT, 20).text.startswith("stuck in the relay's queue: Accept-and-Hold is on")

    down = canary()
    observe_queue(down, queued(last_error="connect to 127.0.0.1[127.0.0.1]:2525: Connection refused", attempts=1), 11)
    verdict = judge(down, CIDRS, EXEMPT, 20)
    assert verdict.hop == STUCK and verdict.text.startswith("stuck in the relay's queue, not lost: the relay's last "
                                                            "attempt: connect to")
    refused = canary()
    observe_queue(refused, queued(last_error="host mail[1.2.3.4] said: 550 5.7.1 rejected (in reply to RCPT TO "
                                  "command)", attempts=1), 11)
    assert judge(refused, CIDRS, EXEMPT, 20).hop == REFUSED_BY_PRIMARY

    lost = canary()
    observe_queue(lost, queued(), 11)
    observe_queue(lost, None, 12)
    verdict = judge(lost, CIDRS, EXEMPT, 20)
    assert verdict.hop == LOST and "gone from the relay's queue, not in the mailbox 20 s after" in verdict.text
    never = judge(canary(queue_error="ACC unavailable"), CIDRS, EXEMPT, 20)
    assert never.hop == LOST and "the relay's queue could not be read: ACC unavailable" in never.text


def test_a_delivered_canary_is_judged_by_the_relay_scoring():
    clean = canary(copies=[Delivered(delivered(), 0, "/m/new/100.M250000P1.host")], delivered_wall=100.25)
    verdict = judge(clean, CIDRS, EXEMPT, 1)
    assert verdict.status == PASS and verdict.text == ("delivered in 0.25 s: no SPF/DMARC symbol; DKIM R_DKIM_ALLOW; "
                                                       "via 162.216.242.25 (whitelisted)")
    penalty = canary(copies=[Delivered(delivered("R_SPF_FAIL(1.00)[-all]; DMARC_POLICY_ALLOW(-0.5)[]; " + CLEAN), 0, "f")])
    verdict = judge(penalty, CIDRS, EXEMPT, 1)
    assert verdict.hop == JUDGED and verdict.text.startswith("delivered, but SPF/DMARC penalty: DMARC_POLICY_ALLOW, "
                                                             "R_SPF_FAIL (relay_scoring exempt forbids any)")
    outside = judge(canary(copies=[Delivered(delivered(client="203.0.113.77"), 0, "f")]), CIDRS, EXEMPT, 1)
    assert outside.hop == JUDGED and "postscreen saw 203.0.113.77, outside the relay CIDRs" in outside.text
    twice = judge(canary(copies=[Delivered(delivered(), 0, "f"), Delivered(delivered(), 0, "g")]), CIDRS, EXEMPT, 1)
    assert twice.hop == JUDGED and "delivered 2 times" in twice.text
    unsigned = judge(canary(signed=False, copies=[Delivered(delivered("ARC_NA(0.00)[]"), 0, "f")]), CIDRS, EXEMPT, 1)
    assert unsigned.status == PASS
    assert judge(canary(copies=[Delivered(delivered("ARC_NA(0.00)[]"), 0, "f")]), CIDRS, EXEMPT, 1).status == FAIL


def test_the_mailbox_hop_does_not_hide_the_client_address():
    """docker-mailserver hands mail to Dovecot over LMTP, whose Received header comes first and names no
    address: the client postscreen saw is in the next one, the mail host's own SMTP hop."""
    lmtp = ("Received: from mail.example by mail.example with LMTP id QHTQ (envelope-from <s@x>)\r\n"
            "\tfor <catchall@viktorbarzin.me>; Sun, 06 Dec 2026 18:12:29 +0000\r\n")
    via_lmtp = email.message_from_bytes(lmtp.encode() + delivered().as_bytes(), policy=email.policy.default)
    verdict = judge(canary(copies=[Delivered(via_lmtp, 0, "f")], delivered_wall=100.25), CIDRS, EXEMPT, 1)
    assert verdict.status == PASS and "via 162.216.242.25 (whitelisted)" in verdict.text
    outside = delivered(client="203.0.113.77")
    via_lmtp = email.message_from_bytes(lmtp.encode() + outside.as_bytes(), policy=email.policy.default)
    verdict = judge(canary(copies=[Delivered(via_lmtp, 0, "f")]), CIDRS, EXEMPT, 1)
    assert "postscreen saw 203.0.113.77, outside the relay CIDRs" in verdict.text


def test_external_relay_must_show_the_original_sender_scored():
    scored = delivered(f"{RSPAMD_RELAY_SYMBOL}(0.00)[198.18.0.9]; R_SPF_FAIL(1.00)[-all]; {CLEAN}")
    shown, problems = verdicts(scored, CIDRS, scoring=EXTERNAL_RELAY)
    assert problems == [] and f"original sender scored ({RSPAMD_RELAY_SYMBOL}, R_SPF_FAIL)" in shown
    _, problems = verdicts(delivered(), CIDRS, scoring=EXTERNAL_RELAY)
    assert problems == [f"external_relay did not score the original sender: {RSPAMD_RELAY_SYMBOL} missing, "
                        "SPF not scored"]


def test_the_delivery_time_comes_from_the_maildir_file_name():
    assert maildir_time("/m/new/1796209465.V803I1c2bM123456.mail.example") == pytest.approx(1796209465.123456)
    assert maildir_time("/m/cur/1796209465.M12345P77.host:2,S") == pytest.approx(1796209465.012345)
    assert maildir_time("/m/new/1796209465.host") == 1796209465
    assert maildir_time("/m/new/msg.eml") is None and maildir_time(None) is None
    # Another clock far off (or no time in the name): the run's own clock instead.
    skewed = canary(copies=[Delivered(delivered(), 0, "f")], delivered_wall=50.0, delivered_at=10.4)
    assert skewed.seconds == pytest.approx(0.4)


# --- the hand-off ------------------------------------------------------------------


def test_the_hand_off_script_answer():
    argv = send_argv("mail.rollernet.us", 25, "mail.example", "s@x", "r@y", b"hi")
    assert argv[:2] == ["python3", "-c"] and argv[3:] == ["mail.rollernet.us", "25", "mail.example", "s@x", "r@y",
                                                          "aGk="]
    taken = parse_send(True, [json.dumps({"ok": True, "stage": "DATA", "code": 250, "reply": "250 Ok", "at": 5.5})], "")
    assert (taken.ok, taken.at, taken.stage) == (True, 5.5, None)
    refused = parse_send(True, [json.dumps({"ok": False, "stage": "RCPT TO", "code": 554, "reply": "554 no"})], "")
    assert (refused.ok, refused.stage, refused.reply) == (False, "RCPT TO", "554 no")
    broken = parse_send(False, [], "sh: python3: not found\n")
    assert broken.stage == "send host" and "python3: not found" in broken.reply


# --- the metrics file ------------------------------------------------------------------


def test_metrics_carry_the_last_success_over_a_failure():
    first = render_metrics([CanaryResult("d.example", "mx1", True, 0.25), CanaryResult("d.example", "mx2", True, 0.5)],
                           now=1000)
    assert 'backupmx_canary_success{domain="d.example",mx_host="mx1"} 1' in first
    assert 'backupmx_canary_duration_seconds{domain="d.example",mx_host="mx2"} 0.500' in first
    assert "backupmx_canary_failed_hop" not in first
    second = render_metrics([CanaryResult("d.example", "mx1", True, 0.3),
                             CanaryResult("d.example", "mx2", False, None, "stuck_in_relay_queue")], now=2000,
                            previous=first)
    assert last_successes(second) == {("d.example", "mx1"): 2000, ("d.example", "mx2"): 1000}
    assert 'backupmx_canary_failed_hop{domain="d.example",mx_host="mx2",hop="stuck_in_relay_queue"} 1' in second
    assert 'backupmx_canary_last_run_timestamp_seconds{domain="d.example",mx_host="mx2"} 2000' in second
    assert 'backupmx_canary_duration_seconds{domain="d.example",mx_host="mx2"}' not in second
    never = render_metrics([CanaryResult("d.example", "mx1", False, None, "refused_by_relay")], now=3000)
    assert "backupmx_canary_last_success_timestamp_seconds" not in never
    for line in second.splitlines():
        assert line.startswith("#") or line.split()[-1].replace(".", "").isdigit(), line
    odd = render_metrics([CanaryResult('we"ird\\', "mx", True, 1.0)], now=1)
    assert last_successes(odd) == {('we"ird\\', "mx"): 1}


# --- one run against stand-ins ------------------------------------------------------------


class Provider:
    name = "rollernet"

    def __init__(self, listing):
        self.listing = listing

    def queue(self, domain):
        return self.listing


def test_a_whole_run_sends_judges_reports_and_deletes_only_canaries(tmp_path):
    key = tmp_path / "dkim.key"
    config = load_canary({"maildir": "/m", "wait_seconds": 5, "poll_seconds": 0.5,
                          "metrics_file": str(tmp_path / "canary.prom")}, SETTINGS)
    clock = Clock()
    run = CanaryRun(SETTINGS, NATIVE, config, "mail", clock=clock, sleep=clock.sleep, wall=lambda: 5000.0,
                    provider=Provider([]))
    first, second = run.canaries
    assert [c.relay for c in run.canaries] == ["mail.rollernet.us", "mail2.rollernet.us"]
    assert first.message_id != second.message_id and first.sender != second.sender
    assert not key.exists()

    sent = []

    def remote(argv):
        sent.append(argv)
        if argv[3] == "mail2.rollernet.us":
            return True, [json.dumps({"ok": False, "stage": "RCPT TO", "code": 554, "reply": "554 5.7.1 denied"})], ""
        return True, [json.dumps({"ok": True, "stage": "DATA", "code": 250, "reply": "250 Ok", "at": 1796209465.0})], ""

    run.send_all(remote, lambda line: None)
    assert len(sent) == 2
    message = email.message_from_bytes(base64.b64decode(sent[0][-1]), policy=email.policy.default)
    assert message["Message-ID"] == first.message_id and message["X-BackupMX-Canary"].startswith(run.run_id)

    late = delivered(message_id="<backupmx-canary.20200101-old.viktorbarzin.me.1@viktorbarzin.me>")
    bounce = delivered(message_id="<dsn@mail.example>")  # quotes a canary's headers, is not one
    mine = delivered(message_id=first.message_id)
    found = {"<backupmx-canary.": [Delivered(mine, 0, "/m/new/1796209465.M500000P1.h"),
                                   Delivered(late, 0, "/m/cur/1.M1P1.h:2,S"), Delivered(bounce, 0, "/m/new/2.M2P2.h")]}
    mailbox = run.wait(lambda: by_message_id(found), lambda line: None)
    run.judge_all()
    deleted = []
    run.clean_up(mailbox, deleted.extend, lambda line: None)
    assert deleted == ["/m/cur/1.M1P1.h:2,S", "/m/new/1796209465.M500000P1.h"]
    assert run.removed_late == ["<backupmx-canary.20200101-old.viktorbarzin.me.1@viktorbarzin.me>"]
    assert run.verdicts[first.key].status == PASS and first.seconds == pytest.approx(0.5)
    assert run.verdicts[second.key].hop == REFUSED_BY_RELAY
    text = run.render()
    assert "=> CANARY FAILED for mail2.rollernet.us (viktorbarzin.me): refused by the relay" in text
    assert "1 canary(ies) of earlier runs arrived late and were deleted" in text
    assert run.write_metrics() == str(tmp_path / "canary.prom")
    prom = (tmp_path / "canary.prom").read_text()
    assert 'backupmx_canary_success{domain="viktorbarzin.me",mx_host="mail.rollernet.us"} 1' in prom
    assert 'hop="refused_by_relay"' in prom


def test_compose_signs_only_with_a_key():
    plain = compose_message("a <a@x.example>", "b@y.example", "<m@x>", "s", "body\r\n", extra_headers=["X-A: 1"])
    assert plain.startswith(b"From: a <a@x.example>\r\n") and b"X-A: 1\r\n" in plain and b"DKIM-Signature" not in plain


# --- the Maildir fact ------------------------------------------------------------------------


def test_the_maildir_fact_lists_canaries_with_their_files(tmp_path):
    maildir = tmp_path / "Maildir"
    fact = MaildirMessages()
    missing = subprocess.run(["sh", "-c", fact.command(maildir=str(maildir), prefix="<backupmx-canary.")
                              .get_raw_value()], capture_output=True, text=True, check=True)
    assert fact.process(missing.stdout.splitlines()) == {"present": False, "messages": {}}
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    canary_file = maildir / "new" / "1796209465.M1P1.host"
    canary_file.write_bytes(compose_message("c <c@s>", "r@d", "<backupmx-canary.r.d.1@s>", "s", "b\r\n"))
    (maildir / "cur" / "1796209466.M2P2.host:2,S").write_bytes(compose_message("u <u@s>", "r@d", "<other@s>", "s",
                                                                               "b\r\n"))
    listed = subprocess.run(["sh", "-c", fact.command(maildir=str(maildir), prefix="<backupmx-canary.")
                             .get_raw_value()], capture_output=True, text=True, check=True)
    found = fact.process(listed.stdout.splitlines())
    assert found["present"]
    [copy] = found["messages"]["<backupmx-canary."]
    assert copy.path == str(canary_file) and copy.message["Message-ID"] == "<backupmx-canary.r.d.1@s>"
    assert copy.size == canary_file.stat().st_size
    assert list(by_message_id(found["messages"])) == ["<backupmx-canary.r.d.1@s>"]
    docker = fact.command(maildir="/var/mail/x", prefix="<p", container="mailserver").get_raw_value()
    assert docker.startswith("docker exec mailserver sh -c ")


def test_an_unreadable_mailbox_verifies_nothing():
    verdict = judge(canary(), CIDRS, EXEMPT, 5, mailbox_error="canary.maildir /m is not a Maildir on mail")
    assert verdict.hop == UNREAD and verdict.text == ("taken by the relay (250 2.0.0 Ok), not verified: "
                                                      "canary.maildir /m is not a Maildir on mail")
