"""A canary the relay bounced: the providers' bounce listing (the self-hosted relay's mail log), the
verdict "refused by the primary" with the primary's reply, and a run that asks for bounces only when
a canary left no trace. In the sandbox: tests/cli/test_canary.py and test_selfhosted_pipeline.py."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from backupmx.core.report import FAIL
from backupmx.core.settings import load_settings
from backupmx.lifecycle.canary.run import CanaryRun, by_message_id
from backupmx.lifecycle.canary.settings import load_canary
from backupmx.lifecycle.canary.verdict import LOST, REFUSED_BY_PRIMARY, Canary, SendOutcome, judge, settled
from backupmx.mailhost.model import EXEMPT, load_mailhost
from backupmx.providers.base import BouncedMessage, ManualStepRequired, ProviderError
from backupmx.providers.relaylog import READ_SCRIPT, bounces_in, read_argv
from backupmx.providers.selfhosted import RelayTarget, SelfHostedProvider
from support.clock import Clock
from support.seed import seed_settings

SETTINGS = seed_settings()
CIDRS = [str(n) for n in SETTINGS.relay_cidrs]
NATIVE = load_mailhost({"flavour": "native", "proxy_service": "127.0.0.1:2525/inet"})
DOMAIN = "viktorbarzin.me"
SAID = ("host 127.0.0.1[127.0.0.1] said: 554 5.7.1 <backupmx-canary@viktorbarzin.me>: Recipient address "
        "rejected: Access denied (in reply to RCPT TO command)")

# The relay's mail log (Postfix's maillog_file layout) around one canary the primary refused: its
# from= line, the bounce, the notification to its sender (bounced too: outbound mail is off), and
# another domain's bounce.
LOG = [
    "Dec 06 19:06:01 relay1 postfix/qmgr[4242]: 4B1D2C3E4F: from=<backupmx-canary-r-1@sender.test>, size=1500, "
    "nrcpt=1 (queue active)",
    f"Dec 06 19:06:01 relay1 postfix/smtp[4300]: 4B1D2C3E4F: to=<backupmx-canary@{DOMAIN}>, "
    f"relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, delays=0/0/0/0.1, dsn=5.7.1, status=bounced ({SAID})",
    "Dec 06 19:06:01 relay1 postfix/qmgr[4242]: 5C2E3D4F5A: from=<>, size=3200, nrcpt=1 (queue active)",
    "Dec 06 19:06:01 relay1 postfix/error[4301]: 5C2E3D4F5A: to=<backupmx-canary-r-1@sender.test>, relay=none, "
    "delay=0, dsn=5.0.0, status=bounced (outbound mail is disabled in the sandbox)",
    "2026-12-06T19:07:00.123456+00:00 relay1 postfix/qmgr[4242]: 6D3F: from=<a@b.test>, size=9, nrcpt=1",
    "2026-12-06T19:07:00.223456+00:00 relay1 postfix/smtp[4302]: 6D3F: to=<x@other.org>, relay=none, "
    "status=bounced (host mx.other.org said: 550 no)",
]


def canary(**fields) -> Canary:
    base = dict(domain=DOMAIN, relay="mail.rollernet.us", endpoint="mail.rollernet.us:25",
                sender="backupmx-canary-r-1@sender.test", recipient=f"backupmx-canary@{DOMAIN}",
                message_id="<backupmx-canary.r.d.1@s>", signed=True, send=SendOutcome(True, "250 2.0.0 Ok", at=100.0),
                handed_off=10.0)
    base.update(fields)
    return Canary(**base)


def bounce(reply: str = SAID, sender: str = "backupmx-canary-r-1@sender.test") -> BouncedMessage:
    return BouncedMessage("B1", sender, (f"backupmx-canary@{DOMAIN}",), reply, "2026-12-06T19:06:01Z",
                          "mail.rollernet.us")


# --- the verdict ---------------------------------------------------------------------------


def test_a_bounce_on_the_primarys_5xx_is_refused_by_the_primary_with_its_reply():
    bounced = canary(bounce=bounce())
    assert settled(bounced, 11, 20, 3)
    verdict = judge(bounced, CIDRS, EXEMPT, 5)
    assert (verdict.status, verdict.hop) == (FAIL, REFUSED_BY_PRIMARY)
    assert verdict.text == f"refused by the primary: the relay bounced it on the primary's reply: {SAID}"
    assert "lost" not in verdict.text


def test_a_bounce_of_the_relays_own_is_not_blamed_on_the_primary():
    verdict = judge(canary(bounce=bounce("message expired in queue; last error: connect to x: refused")),
                    CIDRS, EXEMPT, 5)
    assert verdict.hop == LOST and verdict.text == ("lost between the relay and the mailbox: bounced by the relay "
                                                    "itself: message expired in queue; last error: connect to x: "
                                                    "refused")


def test_lost_says_when_the_provider_could_not_list_bounces():
    verdict = judge(canary(bounce_error="provider rollernet (ledger backend): bounces are not readable from here"),
                    CIDRS, EXEMPT, 20)
    assert verdict.hop == LOST
    assert verdict.text.endswith("never seen in the relay's queue; no bounce listed (provider rollernet (ledger "
                                 "backend): bounces are not readable from here)")


# --- a run -----------------------------------------------------------------------------------


class BouncingProvider:
    """A provider whose relay bounced whatever it was handed: nothing queued, everything listed as bounced."""

    name = "rollernet"

    def __init__(self, reply: str | None = SAID):
        self.reply = reply
        self.asked: list[float] = []
        self.run: CanaryRun | None = None

    def queue(self, domain):
        return []

    def bounces(self, domain):
        self.asked.append(self.run.clock())
        if self.reply is None:
            raise ManualStepRequired("provider rollernet (ledger backend): bounces are not readable from here",
                                     ["log in"])
        return [bounce(self.reply, canary.sender) for canary in self.run.canaries] + [bounce(sender="other@x")]


def run_with(provider: BouncingProvider) -> CanaryRun:
    config = load_canary({"maildir": "/m", "wait_seconds": 30, "poll_seconds": 0.5}, SETTINGS)
    clock = Clock()
    run = CanaryRun(SETTINGS, NATIVE, config, "mail", clock=clock, sleep=clock.sleep, wall=lambda: 5000.0,
                    provider=provider)
    provider.run = run
    ok = json.dumps({"ok": True, "stage": "DATA", "code": 250, "reply": "250 Ok", "at": 1796209465.0})
    run.send_all(lambda argv: (True, [ok], ""), lambda line: None)
    run.wait(lambda: by_message_id({}), lambda line: None)
    run.judge_all()
    return run


def test_a_run_asks_for_bounces_once_a_canary_left_no_trace_and_stops_waiting():
    provider = BouncingProvider()
    run = run_with(provider)
    # Not before 3 s (three polls) without a trace, then once: both canaries found, no more waiting.
    assert provider.asked == [3.0]
    assert run.clock() == 3.0
    for canary in run.canaries:
        verdict = run.verdicts[canary.key]
        assert verdict.hop == REFUSED_BY_PRIMARY and SAID in verdict.text
    assert "=> CANARY FAILED for mail.rollernet.us (viktorbarzin.me), mail2.rollernet.us (viktorbarzin.me): " \
           "refused by the primary" in run.render()


def test_a_provider_without_a_bounce_listing_is_asked_once_and_the_row_says_so():
    provider = BouncingProvider(reply=None)
    run = run_with(provider)
    assert provider.asked == [3.0]  # one domain, asked once: never again in this run
    for canary in run.canaries:
        verdict = run.verdicts[canary.key]
        assert verdict.hop == LOST and "no bounce listed (provider rollernet (ledger backend)" in verdict.text


# --- the self-hosted relay's mail log ----------------------------------------------------------


def test_bounces_in_the_mail_log_for_the_domain_only_with_their_sender_and_reply():
    [found] = bounces_in(LOG, DOMAIN, "relay-a")
    assert found == BouncedMessage("relay-a:4B1D2C3E4F", "backupmx-canary-r-1@sender.test",
                                   (f"backupmx-canary@{DOMAIN}",), SAID, "Dec 06 19:06:01", "relay-a")
    [other] = bounces_in(LOG, "other.org", "relay-a")
    assert other.sender == "a@b.test" and other.at.startswith("2026-12-06T19:07:00")
    assert bounces_in(LOG, "elsewhere.org", "relay-a") == []


def test_the_read_script_prints_only_the_lines_that_matter_from_maillog_file(tmp_path):
    log = tmp_path / "postfix.log"
    log.write_text("\n".join(["Dec 06 19:05:59 relay1 postfix/smtpd[1]: connect from unknown[127.0.0.1]"] + LOG)
                   + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    postconf = bin_dir / "postconf"
    postconf.write_text(f"#!/bin/sh\n[ \"$3\" = -h ] && [ \"$4\" = maillog_file ] && echo {log}\n")
    postconf.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    argv = read_argv("/etc/postfix", 5)
    assert argv[:3] == ["sh", "-c", READ_SCRIPT]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [line for line in LOG[-5:] if "from=<" in line or "status=bounced" in line]
    log.write_text("Dec 06 19:05:59 relay1 postfix/smtpd[1]: connect from unknown[127.0.0.1]\n")
    quiet = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=10)
    assert (quiet.returncode, quiet.stdout) == (0, "")  # nothing bounced is not an error


def test_the_self_hosted_relay_reads_each_relay_hosts_log_and_fails_in_one_line():
    data = {
        "domains": [{"name": DOMAIN, "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
        "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us"], "priority": 20},
        "relay_cidrs": ["192.0.2.0/24"],
        "vault": {"addr": "http://127.0.0.1:8200", "secret_path": "secret/viktor"},
        "providers": {"selfhosted": {"backup_mx": {"provider": "selfhosted", "priority": 30}}},
        "provider": "selfhosted",
    }
    relays = {"relay-a": {"hostname": "relay1.viktorbarzin.me", "public_addresses": ["198.51.100.7"],
                          "primary": "mail.viktorbarzin.me"}}
    settings = load_settings(data, relays)

    class Relay:
        postfix_config_dir = "/etc/postfix"

    ran = []

    def reads(argv):
        ran.append(argv)
        return True, LOG, ""

    [found] = SelfHostedProvider(settings, [RelayTarget("relay-a", Relay(), reads)]).bounces(DOMAIN)
    assert found.reply == SAID and ran == [read_argv("/etc/postfix")]

    def no_log(argv):
        return False, [], "no mail log to read: maillog_file unset, no /var/log/mail.log, no journalctl\n"

    with pytest.raises(ProviderError) as caught:
        SelfHostedProvider(settings, [RelayTarget("relay-a", Relay(), no_log)]).bounces(DOMAIN)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("relay host relay-a: cannot read its mail log (no mail log")
