"""Gate G5's pure parts: the failover data, the verdicts read from a delivered message's
headers, the Maildir listing. The drill in the sandbox: tests/cli/test_failover_drill.py."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest

from backupmx.core.errors import ConfigError
from backupmx.lifecycle.drill_settings import load_failover
from backupmx.lifecycle.probes import parse_maildir_listing, verdicts
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
    data = base64.b64encode(b"Message-ID: <a@x>\r\n\r\nhi\r\n").decode()
    found = parse_maildir_listing([f"==> <a@x> {data}", f"==> <a@x> {data}", "noise"])
    assert len(found["<a@x>"]) == 2
