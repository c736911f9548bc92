"""What stage 4's proof sends to a mail host and how it reads the answers: an address inside each
relay network and one outside them all, the relayed envelope through the PROXY-v2 listener (a
Python script run on the mail host), the message rspamd scans, and rspamc's JSON.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable

from backupmx.core.errors import BackupMXError
from backupmx.core.validate import IPNetwork
from backupmx.mailhost.model import EXTERNAL_RELAY, MailHost

# Candidates for "an address no relay network contains": documentation and
# benchmarking ranges first (RFC 5737, 2544, 3849), so a probe never names a
# real network. Relay networks are at most /16 wide, so some candidate is free.
OUTSIDE_CANDIDATES = {
    4: ["203.0.113.1", "198.51.100.1", "192.0.2.1", "198.18.0.1", "100.64.0.1"],
    6: ["2001:db8:ffff:ffff::1", "2001:db8::1", "2001:db8:1::1", "3fff::1"],
}


# --- probe addresses ----------------------------------------------------------


@dataclass(frozen=True)
class Probes:
    inside: tuple[tuple[str, str], ...]  # (relay network, an address in it)
    outside: tuple[str, ...]  # addresses in no relay network, one per IP version in use

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(address for _, address in self.inside) + self.outside


def probe_addresses(relay_cidrs: Iterable[IPNetwork | str]) -> Probes:
    """For each relay network an address inside it (network + 1), and outside addresses in none."""
    networks = [ipaddress.ip_network(str(cidr)) for cidr in relay_cidrs]
    if not networks:
        raise BackupMXError("no relay networks to probe")
    inside = []
    for network in networks:
        address = network.network_address + 1 if network.num_addresses > 1 else network.network_address
        inside.append((str(network), str(address)))
    outside = []
    for version in sorted({network.version for network in networks}):
        for candidate in OUTSIDE_CANDIDATES[version]:
            address = ipaddress.ip_address(candidate)
            if not any(address in network for network in networks):
                outside.append(candidate)
                break
        else:  # unreachable with networks no wider than /16, kept for honesty
            raise BackupMXError(f"no IPv{version} probe address outside the relay networks")
    return Probes(tuple(inside), tuple(outside))


# --- stage 4 probes -------------------------------------------------------------

# Runs on the mail host (python3), one process for every SOURCE, their sessions side by
# side: PROXY v2 header claiming SOURCE, then a relayed envelope - EHLO with the relay's
# HELO name before the greeting, MAIL FROM a foreign sender whose SPF does not list the
# relay, RCPT a local address - and QUIT: nothing is delivered. Prints a line per source,
# in the order given: the source, then the RCPT reply (or MAIL's, when MAIL is refused),
# or "-" and what went wrong. Whitelisted, postscreen hands over to smtpd at once and every
# smtpd restriction judges the envelope; RCPT 250 means all of them let it through.
# Otherwise the pregreet test fails the session (RCPT 550 5.5.1).
PREGREET_PROBE = r"""
import ipaddress, socket, struct, sys, threading
host, port, rcpt, helo, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sources = sys.argv[6:]
def session(source):
    src = ipaddress.ip_address(source)
    dst = ipaddress.ip_address("127.0.0.1" if src.version == 4 else "::1")
    body = src.packed + dst.packed + struct.pack("!HH", 40000, port)
    header = b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11 if src.version == 4 else 0x21, len(body)) + body
    with socket.create_connection((host.strip("[]"), port), 15) as sock:
        stream = sock.makefile("rb")
        def reply():
            lines = []
            while True:
                line = stream.readline().decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    raise ConnectionError("connection closed after: " + " | ".join(lines))
                lines.append(line)
                if line[3:4] != "-":
                    return line[:3], " | ".join(lines)
        sock.sendall(header + b"EHLO " + helo.encode() + b"\r\n")
        code, text = reply()
        while code == "220":
            code, text = reply()
        sock.sendall(b"MAIL FROM:<" + sender.encode() + b">\r\n")
        code, text = reply()
        if code == "250":
            sock.sendall(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
            code, text = reply()
        else:
            text = "at MAIL FROM: " + text
        sock.sendall(b"QUIT\r\n")
        return code + " " + text
answers = {}
def probe(source):
    try:
        answers[source] = session(source)
    except Exception as error:
        answers[source] = "- " + (" ".join(str(error).split()) or type(error).__name__)
threads = [threading.Thread(target=probe, args=(source,)) for source in sources]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
for source in sources:
    print(source, answers.get(source, "- no answer"))
""".strip()


def probe_message(domain: str) -> str:
    sender = f"postmaster@{domain}"
    return (f"From: <{sender}>\r\nTo: <{sender}>\r\nSubject: backupmx stage 4 probe\r\n"
            f"Message-ID: <backupmx-probe@{domain}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nbackupmx checks the relay exemption.\r\n")


def rspamc_argv(mailhost: MailHost, ip: str, mail_from: str) -> list[str]:
    return mailhost.in_target(["rspamc", "-h", mailhost.rspamd_controller, "-t", "20", "-j", "-i", ip,
                               "-F", mail_from, "--helo", "backupmx-probe.invalid", "symbols"], stdin=True)


def parse_rspamc_symbols(text: str) -> list[str] | None:
    """Symbol names from ``rspamc -j symbols`` (None when it is not a scan result)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    symbols = data.get("symbols")
    if symbols is None and isinstance(data.get("default"), dict):  # older rspamc: per-metric
        symbols = {key: value for key, value in data["default"].items() if isinstance(value, dict)}
    if not isinstance(symbols, dict):
        return None
    return sorted(symbols)


def exempted_symbols(symbols: Iterable[str]) -> list[str]:
    """The SPF and DMARC verdicts the exemption removes."""
    return sorted(s for s in symbols if s.startswith("R_SPF_") or s.startswith("DMARC_"))


def parse_rspamc_action(text: str) -> str | None:
    """The action from ``rspamc -j symbols`` (None when it is not a scan result)."""
    start = text.find("{")
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    action = data.get("action")
    if action is None and isinstance(data.get("default"), dict):  # older rspamc: per-metric
        action = data["default"].get("action")
    return action if isinstance(action, str) else None


def scan_message(mailhost: MailHost, domain: str, outside_ip: str) -> str:
    """The probe message stage 4 scans: external_relay puts it behind a relay's Received header."""
    message = probe_message(domain)
    if mailhost.relay_scoring != EXTERNAL_RELAY:
        return message
    # The layout Postfix writes (and the sandbox relay): "from HELO (rDNS [IP])".
    return (f"Received: from backupmx-probe.invalid (unknown [{outside_ip}])\r\n"
            f"\tby relay.backupmx-probe.invalid with ESMTP id BACKUPMXPROBE\r\n"
            f"\tfor <postmaster@{domain}>; Thu, 01 Jan 2026 00:00:00 +0000\r\n") + message
