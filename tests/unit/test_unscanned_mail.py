"""The failover drill's reading of a message the primary took without its milter: the
verdict of an unscanned copy, and the awk program that finds Postfix's own warning for its
queue id, run by sh and awk over log lines as Postfix writes them. On the real
docker-mailserver: tests/cli/dms/test_dms_pipeline.py."""

from __future__ import annotations

import email
import email.policy
import subprocess
from types import SimpleNamespace

import pytest

from backupmx.lifecycle.drill.mailbox import explain_unscanned
from backupmx.lifecycle.probes import NOT_SCANNED, Probe, queue_id, verdicts
from backupmx.mailhost.maildir import Delivered
from backupmx.mailhost.maillog import SCRIPT, milter_awk, parse_milter_misses
from backupmx.mailhost.model import load_mailhost
from backupmx_sandbox.seed import RELAY_CIDRS
from support.scratch import run_here

REFUSED = "warning: connect to Milter service inet:localhost:11332: Connection refused"
TIMED_OUT = "warning: milter inet:localhost:11332: can't read SMFIC_BODYEOB reply packet header: Connection timed out"
LOG = [
    # a session the milter refused: its message is taken unscanned
    "2026-12-07T00:06:13.092214+00:00 mail postfix/smtpd[1447]: connect from unknown[198.51.100.25]",
    f"2026-12-07T00:06:13.092368+00:00 mail postfix/smtpd[1447]: {REFUSED}",
    "2026-12-07T00:06:13.094043+00:00 mail postfix/smtpd[1447]: 16F0D5764B3: client=unknown[198.51.100.25]",
    "2026-12-07T00:06:13.094508+00:00 mail postfix/cleanup[1446]: 16F0D5764B3: message-id=<a@sender.test>",
    # the same smtpd process, a later session with the milter back: scanned
    "2026-12-07T00:06:20.000001+00:00 mail postfix/smtpd[1447]: connect from out1.rollernet.us[192.0.2.25]",
    "2026-12-07T00:06:20.000002+00:00 mail postfix/smtpd[1447]: 954D1576780: client=out1.rollernet.us[192.0.2.25]",
    "2026-12-07T00:06:20.000003+00:00 mail postfix/cleanup[1446]: 954D1576780: message-id=<b@sender.test>",
    # cleanup's milter timing out on the body of one message; the next one it takes is clean
    "2026-12-07T00:06:30.000001+00:00 mail postfix/smtpd[1500]: connect from out1.rollernet.us[192.0.2.25]",
    "2026-12-07T00:06:30.000002+00:00 mail postfix/smtpd[1500]: 7723F57602B: client=out1.rollernet.us[192.0.2.25]",
    "2026-12-07T00:06:30.000003+00:00 mail postfix/cleanup[1446]: 7723F57602B: message-id=<c@sender.test>",
    f"2026-12-07T00:07:00.000004+00:00 mail postfix/cleanup[1446]: {TIMED_OUT}",
    "2026-12-07T00:07:01.000003+00:00 mail postfix/cleanup[1446]: 8823F57602C: message-id=<d@sender.test>",
    # traditional syslog time stamps (native Debian with rsyslog), a service name of its own
    "Dec  7 00:08:00 mail postfix/relay-2525/smtpd[77]: connect from unknown[192.0.2.1]",
    f"Dec  7 00:08:00 mail postfix/relay-2525/smtpd[77]: {REFUSED}",
    "Dec  7 00:08:00 mail postfix/relay-2525/smtpd[77]: 4QxYz1AbC: client=unknown[192.0.2.1]",
]
WANTED = ["16F0D5764B3", "954D1576780", "7723F57602B", "8823F57602C", "4QxYz1AbC", "0NEVERLOGGED"]


def misses(tmp_path, lines=LOG, wanted=WANTED) -> dict[str, str]:
    log = tmp_path / "mail.log"
    log.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["sh", "-c", SCRIPT, "sh", str(log), "/nonexistent", "/var/log/mail.log", "2",
                           milter_awk(wanted)], capture_output=True, text=True, timeout=30, check=True)
    return parse_milter_misses(done.stdout.splitlines())


def test_the_log_names_exactly_the_messages_taken_without_the_milter(tmp_path):
    assert misses(tmp_path) == {"16F0D5764B3": REFUSED, "7723F57602B": TIMED_OUT, "4QxYz1AbC": REFUSED}


def test_a_queue_id_that_is_not_one_never_reaches_the_program():
    with pytest.raises(ValueError, match="not a Postfix queue id"):
        milter_awk(['X") } { system("id'])


def delivered(spamd: str | None, qid: str = "16F0D5764B3") -> email.message.EmailMessage:
    head = (f"Received: from mail.viktorbarzin.me by mail.viktorbarzin.me with LMTP id x\r\n"
            f"Received: from mail2.rollernet.us (unknown [198.51.100.25]) by mail.viktorbarzin.me (Postfix) "
            f"with ESMTPS id {qid} for <catchall@viktorbarzin.me>; Mon, 7 Dec 2026 00:06:13 +0000\r\n")
    if spamd is not None:
        head += f"X-Spamd-Result: default: False [0.0 / 11.0]; {spamd}\r\n"
    return email.message_from_bytes((head + "Message-ID: <a@sender.test>\r\n\r\nbody\r\n").encode(),
                                    policy=email.policy.default)


def test_an_unscanned_copy_is_judged_unscanned_and_nothing_else():
    message = delivered(None)
    shown, problems = verdicts(message, RELAY_CIDRS)
    assert problems == [NOT_SCANNED]  # no made-up DKIM or SPF verdict from a header that is not there
    assert shown == ["via 198.51.100.25 (whitelisted)"]
    assert queue_id(message) == "16F0D5764B3"


def drill_with(tmp_path, qid: str):
    log = tmp_path / "mail.log"
    log.write_text("\n".join(LOG) + "\n")
    mailhost = load_mailhost({"flavour": "native", "proxy_service": "127.0.0.1:2525/inet", "mail_log": str(log)})
    probe = Probe(4, "mail2.rollernet.us", "failover-x-4@sender.test", "<a@sender.test>", kind="large")
    message = delivered(None, qid)
    probe.problems.extend(verdicts(message, RELAY_CIDRS)[1])
    drill = SimpleNamespace(probes=[probe], mailhost=mailhost, host_name="mail.example")
    return drill, {probe.message_id: [Delivered(message, 100, "/m/new/1")]}


def test_the_drill_warns_when_the_log_says_the_milter_was_not_there(tmp_path):
    drill, found = drill_with(tmp_path, "16F0D5764B3")
    explain_unscanned(drill, run_here, found)
    probe = drill.probes[0]
    assert probe.problems == []
    assert probe.warnings == [f"not scanned: mail.example's Postfix took it (queue id 16F0D5764B3) without its "
                              f"milter ({REFUSED}), so no spam, DKIM or SPF/DMARC verdict was applied: rspamd was "
                              f"not up yet when the relay delivered"]


def test_the_drill_fails_an_unscanned_message_the_log_does_not_explain(tmp_path):
    drill, found = drill_with(tmp_path, "954D1576780")  # logged, but with the milter there
    explain_unscanned(drill, run_here, found)
    probe = drill.probes[0]
    assert probe.warnings == []
    assert probe.problems == [f"{NOT_SCANNED}: its Postfix log names no milter failure for queue id 954D1576780"]


def test_the_drill_fails_an_unscanned_message_when_the_log_cannot_be_read(tmp_path):
    drill, found = drill_with(tmp_path, "16F0D5764B3")
    explain_unscanned(drill, lambda argv: (False, [], "ssh: connection reset"), found)
    assert drill.probes[0].problems == [f"{NOT_SCANNED}: the primary's Postfix log could not be read: "
                                        "ssh: connection reset"]
