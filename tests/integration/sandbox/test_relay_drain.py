"""Store and forward for real: a relay queues while the primary is down and drains
into the mail host's PROXY-v2 listener, announcing its relay-CIDR address."""

from __future__ import annotations

import smtplib
import time

import requests

from backupmx_sandbox import mailhost, seed
from backupmx_sandbox.smtp_client import build_message
from backupmx_sandbox.supervisor import Supervisor
from support.mailpath import endpoint, wait_for_delivery

RECIPIENT = f"drain@{seed.DOMAIN}"


def admin(world, path: str, body: dict | None = None) -> dict:
    response = requests.post(f"{world['acc_admin']}/{path}", json=body or {}, timeout=10)
    response.raise_for_status()
    return response.json()


def queue(world) -> dict:
    return requests.get(f"{world['acc_admin']}/queue", timeout=10).json()


def send_via_relay(world, host: str, message: bytes) -> None:
    relay = next(item for item in world["relays"] if item["host"] == host)
    with smtplib.SMTP(*endpoint(relay["smtp"]), timeout=10) as client:
        client.sendmail(f"someone@{seed.SENDER_DOMAIN}", [RECIPIENT], message)


def test_relay_queues_while_primary_is_down_then_drains(world, sandbox):
    admin(world, "reset")
    admin(world, "relay", {"retry_schedule": [0.5, 1]})
    supervisor = Supervisor(sandbox)
    message, message_id = build_message(f"someone@{seed.SENDER_DOMAIN}", RECIPIENT, subject="drain test")
    supervisor.stop("postfix")
    try:
        send_via_relay(world, "mail2.rollernet.us", message)
        deadline = time.monotonic() + 10
        while not any(item["attempts"] >= 1 for item in queue(world)["queued"]):
            assert time.monotonic() < deadline, "the relay never tried the primary"
            time.sleep(0.1)
        assert queue(world)["delivered"] == []
    finally:
        for service in mailhost.services(sandbox):
            supervisor.start(service)

    delivered = wait_for_delivery(world["maildir"], message_id, timeout=20)
    # The relay's Received header, then Postfix's, which names the address the
    # relay announced in its PROXY-v2 header: that is what postscreen and rspamd see.
    received = delivered.get_all("Received")
    assert f"[{seed.RELAY_SOURCE['mail2.rollernet.us']}]" in received[0]
    assert any("by mail2.rollernet.us" in header for header in received)
    assert queue(world)["queued"] == []
