"""Gate G5's pure parts: the failover data, the verdicts read from a delivered message's
headers, the Maildir listing, the large message's size and the spam message's verdict. The drill in the sandbox: tests/cli/test_failover_drill.py."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from backupmx.core.errors import ConfigError
from backupmx.lifecycle.drill.settings import load_failover
from backupmx.lifecycle.drill.messages import (
    HEADROOM,
    LARGE_BYTES,
    SizeDecision,
    build_message,
    kinds,
    large_size,
    spam_verdict,
)
from backupmx.lifecycle.probes import Probe, verdicts
from backupmx.mailhost.maildir import parse_maildir_listing
from backupmx.mailhost.model import load_mailhost
from backupmx_sandbox.seed import RELAY_CIDRS

NATIVE = load_mailhost({"flavour": "native", "proxy_service": "127.0.0.1:2525/inet"})


DMS = load_mailhost({"flavour": "docker-mailserver", "proxy_service": "2525/inet", "container": "mailserver",
                        "host_config_dir": "/srv/dms/config"})


SENDER = {"maildir": "/var/mail/catchall", "sender_domain": "probe.example", "dkim_key": "/k", "dkim_selector": "s"}


def test_failover_data_is_validated():
    with pytest.raises(ConfigError, match="failover.stop_command"):
        load_failover(SENDER, NATIVE, "example.org")
    with pytest.raises(ConfigError, match="failover.bogus"):
        load_failover({**SENDER, "bogus": 1}, DMS, "example.org")
    with pytest.raises(ConfigError, match="failover.probes"):
        load_failover({**SENDER, "probes": 0}, DMS, "example.org")
    settings = load_failover(SENDER, DMS, "example.org")
    assert settings.stop_command == ("docker", "stop", "mailserver")
    assert settings.start_command == ("docker", "start", "mailserver")
    assert settings.recipient == "failover-drill@example.org"
    native = load_failover({**SENDER, "stop_command": ["systemctl", "stop", "postfix"],
                            "start_command": ["systemctl", "start", "postfix"]}, NATIVE, "example.org")
    assert native.up_check == "127.0.0.1:2525"


def _message(spamd: str, client: str):
    raw = (f"Received: from relay (unknown [{client}]) by mail.example with ESMTP id X\r\n"
           f"Received: from sender by mail.rollernet.us\r\n"
           f"X-Spamd-Result: default: False [1.0 / 15.0]; {spamd}\r\n"
           "Message-ID: <a@probe.example>\r\n\r\nbody\r\n").encode()
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_verdicts_from_the_delivered_headers():
    shown, problems = verdicts(_message("R_DKIM_ALLOW(-0.20)[probe.example:s]; ARC_NA(0.00)[]", "192.0.2.25"),
                               RELAY_CIDRS)
    assert problems == [] and "via 192.0.2.25 (whitelisted)" in shown
    shown, problems = verdicts(_message("R_SPF_FAIL(1.00)[-all]; DMARC_POLICY_REJECT(2.00)[]; R_DKIM_REJECT(1)[]",
                                        "203.0.113.77"), RELAY_CIDRS)
    assert any("R_SPF_FAIL" in p and "DMARC_POLICY_REJECT" in p for p in problems)
    assert any("DKIM does not verify" in p for p in problems)
    assert any("outside the relay CIDRs" in p for p in problems)


def test_maildir_listing_parses_every_copy():
    data = base64.b64encode(b"Message-ID: <a@x>\r\n\r\n").decode()
    path = base64.b64encode(b"/var/mail/new/1.host").decode()
    found = parse_maildir_listing([f"==> <a@x> 12000900 {path} {data}", f"==> <a@x> 20 {path} {data}", "noise"])
    assert [(c.size, c.path, c.message["Message-ID"]) for c in found["<a@x>"]] == [
        (12000900, "/var/mail/new/1.host", "<a@x>"), (20, "/var/mail/new/1.host", "<a@x>")]


# --- the large message's size: never one the primary (or the backup) would refuse ------------------


def test_large_message_is_the_wanted_size_when_it_fits():
    assert large_size(12_000_000, 26_214_400) == SizeDecision(12_000_000, 12_000_000, "")
    assert large_size(12_000_000, 0, "mail.rollernet.us", 33_554_432).size == 12_000_000  # 0: no limit
    assert large_size(12_000_000, 26_214_400, "mail.rollernet.us", None).note == ""  # no SIZE announced


def test_large_message_shrinks_to_the_largest_that_fits_and_says_why():
    primary = large_size(12_000_000, 10_240_000)  # Postfix's and docker-mailserver's default
    assert primary.size == 10_240_000 - HEADROOM
    assert "message_size_limit 10240000" in primary.note and f"the largest that fits is {primary.size} bytes" in primary.note
    relay = large_size(12_000_000, 26_214_400, "mail2.rollernet.us", 10_000_000)
    assert relay.size == 10_000_000 - HEADROOM and "mail2.rollernet.us's SIZE 10000000" in relay.note
    both = large_size(12_000_000, 11_000_000, "mail2.rollernet.us", 10_500_000)
    assert both.size == 10_500_000 - HEADROOM  # the smaller limit wins; both named
    assert "message_size_limit 11000000 and mail2.rollernet.us's SIZE" in both.note


def test_large_message_is_built_to_size_and_signed(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    probe = Probe(4, "mail.rollernet.us", "failover-r-4@probe.example", "<failover-r-4@probe.example>", "large")
    message = build_message(probe, "drill@example.org", "probe.example", "s", key, "r", 12_000_000)
    assert 12_000_000 - 200 <= len(message) <= 12_000_000
    assert message.startswith(b"DKIM-Signature:")
    spam = build_message(Probe(5, "mail2.rollernet.us", "f-5@probe.example", "<f-5@probe.example>", "spam"),
                         "drill@example.org", "probe.example", "s", key, "r")
    assert b"SPAM TEST" in spam and b"bitcoin" in spam and len(spam) < 4000


def test_spam_verdict_tagged_or_not():
    tagged = email.message_from_bytes(b"X-Spamd-Result: default: False [19.63 / 15.00]; PHISHING(2.00)[]\r\n"
                                      b"X-Spam: Yes\r\n\r\n", policy=email.policy.default)
    assert spam_verdict(tagged) == "tagged (X-Spam: Yes), score 19.63 / 15.00, not rejected"
    plain = email.message_from_bytes(b"X-Spamd-Result: default: False [3.10 / 15.00]\r\n\r\n",
                                     policy=email.policy.default)
    assert spam_verdict(plain).startswith("NOT tagged") and "score 3.10 / 15.00" in spam_verdict(plain)


def test_drill_messages_and_their_settings():
    assert kinds(3, 12_000_000, True) == ["probe", "probe", "probe", "large", "spam"]
    assert kinds(2, 0, False) == ["probe", "probe"]
    settings = load_failover(SENDER, DMS, "example.org")
    assert settings.large_message_bytes == LARGE_BYTES > 10_240_000 and settings.spam_message is True
    with pytest.raises(ConfigError, match="failover.large_message_bytes"):
        load_failover({**SENDER, "large_message_bytes": "12MB"}, DMS, "example.org")
    with pytest.raises(ConfigError, match="failover.spam_message"):
        load_failover({**SENDER, "spam_message": "yes"}, DMS, "example.org")
    assert load_failover({**SENDER, "large_message_bytes": 0}, DMS, "example.org").large_message_bytes == 0
