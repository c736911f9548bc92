"""Helpers for tests that send mail through the sandbox and read the Maildir.

postscreen keeps a PASS cache for a day per address, so every SMTP test claims a
fresh random address (198.18.0.0/15, 2001:db8:ffff::/48: outside every relay CIDR).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import ipaddress
import random
import time
from pathlib import Path


def endpoint(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def fresh_ipv4() -> str:
    return str(ipaddress.ip_address("198.18.0.0") + random.randrange(1, 2**17 - 1))


def fresh_ipv6() -> str:
    return str(ipaddress.ip_address("2001:db8:ffff::") + random.randrange(1, 2**80))


def fresh_address_in(network: str) -> str:
    net = ipaddress.ip_network(network)
    return str(net.network_address + random.randrange(1, min(net.num_addresses - 1, 2**32)))


def find_delivered(maildir: str, message_id: str) -> email.message.EmailMessage | None:
    """The message in the Maildir's new/ or in a folder's (docker-mailserver files spam into .Junk)."""
    needle = f"Message-ID: {message_id}".encode()
    for path in [*Path(maildir).glob("new/*"), *Path(maildir).glob(".[!.]*/new/*")]:
        data = path.read_bytes()
        if needle in data:
            return email.message_from_bytes(data, policy=email.policy.default)
    return None


def delivered(maildir: str, message_id: str) -> bool:
    return find_delivered(maildir, message_id) is not None


def wait_for_delivery(maildir: str, message_id: str, timeout: float = 20.0) -> email.message.EmailMessage:
    """The delivered message carrying ``message_id`` (tests run as root and can read the Maildir)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = find_delivered(maildir, message_id)
        if message is not None:
            return message
        time.sleep(0.05)
    raise AssertionError(f"{message_id} not delivered to {maildir} within {timeout}s")
