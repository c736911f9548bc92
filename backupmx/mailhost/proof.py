"""Stage 4's proof that the whitelist and the exemption are live: probe addresses inside
and outside the relay networks, the pregreet probe through the PROXY-v2 listener,
rspamd scans, and what each relay scoring mode must show.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from backupmx.core.errors import BackupMXError
from backupmx.core.validate import IPNetwork
from backupmx.mailhost.model import (
    EXEMPT_GROUPS,
    EXTERNAL_RELAY,
    RSPAMD_CAP_RULE,
    RSPAMD_RELAY_SYMBOL,
    RSPAMD_RULE,
    MailHost,
)

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

# Runs on the mail host (python3): PROXY v2 header claiming SOURCE, then a relayed
# envelope - EHLO with the relay's HELO name before the greeting, MAIL FROM a foreign
# sender whose SPF does not list the relay, RCPT a local address - and QUIT: nothing
# is delivered. Prints the RCPT reply (or MAIL's, when MAIL is refused). Whitelisted,
# postscreen hands over to smtpd at once and every smtpd restriction judges the
# envelope; RCPT 250 means all of them let it through. Otherwise the pregreet test
# fails the session (RCPT 550 5.5.1).
PREGREET_PROBE = r"""
import ipaddress, socket, struct, sys
host, port, source, rcpt, helo, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
src = ipaddress.ip_address(source)
dst = ipaddress.ip_address("127.0.0.1" if src.version == 4 else "::1")
body = src.packed + dst.packed + struct.pack("!HH", 40000, port)
header = b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11 if src.version == 4 else 0x21, len(body)) + body
sock = socket.create_connection((host.strip("[]"), port), 15)
stream = sock.makefile("rb")
def reply():
    lines = []
    while True:
        line = stream.readline().decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            raise SystemExit("connection closed after: " + " | ".join(lines))
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
print(code, text)
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


# --- stage 4: what each relay scoring mode must show ------------------------------


def scan_message(mailhost: MailHost, domain: str, outside_ip: str) -> str:
    """The probe message stage 4 scans: external_relay puts it behind a relay's Received header."""
    message = probe_message(domain)
    if mailhost.relay_scoring != EXTERNAL_RELAY:
        return message
    # The layout Postfix writes (and the sandbox relay): "from HELO (rDNS [IP])".
    return (f"Received: from backupmx-probe.invalid (unknown [{outside_ip}])\r\n"
            f"\tby relay.backupmx-probe.invalid with ESMTP id BACKUPMXPROBE\r\n"
            f"\tfor <postmaster@{domain}>; Thu, 01 Jan 2026 00:00:00 +0000\r\n") + message


def settings_rule_in_dump(mailhost: MailHost, rules: Mapping[str, Any], cidrs: Sequence[str]) -> tuple[bool, str]:
    """Does ``rspamadm configdump settings`` show our rule of this mode, as rendered?"""
    name = RSPAMD_CAP_RULE if mailhost.relay_scoring == EXTERNAL_RELAY else RSPAMD_RULE
    rule = rules.get(name)
    ok = isinstance(rule, dict) and sorted(rule.get("ip", [])) == sorted(cidrs)
    apply = (rule.get("apply") or {}) if isinstance(rule, dict) else {}
    # Both modes disable the reject action for the relays (configdump shows it as null).
    actions = apply.get("actions") or {}
    ok = ok and "reject" in actions and actions["reject"] is None
    if mailhost.relay_scoring != EXTERNAL_RELAY:
        ok = ok and sorted(apply.get("groups_disabled", [])) == sorted(EXEMPT_GROUPS)
    return ok, name


def judge_scans(mailhost: MailHost, relay_ip: str, outside_ip: str, relay: Mapping[str, Any],
                outside: Mapping[str, Any]) -> tuple[bool, str]:
    """Stage 4's rspamc check for the host's relay scoring mode: (live, evidence)."""
    if mailhost.relay_scoring == EXTERNAL_RELAY:
        return _judge_external_relay(relay_ip, outside_ip, relay, outside)
    leaked = exempted_symbols(relay["symbols"])
    spf_outside = [s for s in outside["symbols"] if s.startswith("R_SPF_")]
    ok = not leaked and bool(spf_outside)
    return ok, (f"relay {relay_ip} no R_SPF_*/DMARC_*, outside {outside_ip} {', '.join(spf_outside)}"
                if ok else f"relay {relay_ip}: {', '.join(leaked) or 'none'}; outside {outside_ip}: "
                f"{', '.join(spf_outside) or 'no R_SPF_* (SPF not checked at all?)'}")


def _judge_external_relay(relay_ip: str, outside_ip: str, relay: Mapping[str, Any],
                          outside: Mapping[str, Any]) -> tuple[bool, str]:
    """Both scans carry a Received header naming ``outside_ip``.

    From the relay address: our rule fired (the module took the address from the
    header), SPF was scored, with the verdict ``outside_ip`` gets when it connects
    directly (so against the original address), and the action is not reject.
    From ``outside_ip`` itself: our rule did not fire (the header is not trusted).
    """
    spf_relay = sorted(s for s in relay["symbols"] if s.startswith("R_SPF_"))
    spf_outside = sorted(s for s in outside["symbols"] if s.startswith("R_SPF_"))
    action = relay.get("action")
    problems = []
    if RSPAMD_RELAY_SYMBOL not in relay["symbols"]:
        problems.append(f"relay {relay_ip}: no {RSPAMD_RELAY_SYMBOL} (external_relay did not take the Received header)")
    if not spf_relay or spf_relay != spf_outside:
        problems.append(f"relay {relay_ip}: SPF {', '.join(spf_relay) or 'not scored'}, "
                        f"but {outside_ip} directly: {', '.join(spf_outside) or 'not scored'}")
    if action in (None, "reject"):
        problems.append(f"relay {relay_ip}: action {action or 'unknown'} (must be capped at add header)")
    if RSPAMD_RELAY_SYMBOL in outside["symbols"]:
        problems.append(f"outside {outside_ip}: {RSPAMD_RELAY_SYMBOL} fired for a client outside the relay networks")
    if problems:
        return False, "; ".join(problems)
    return True, (f"relay {relay_ip} scored as its Received header's {outside_ip}: {RSPAMD_RELAY_SYMBOL}, "
                  f"{', '.join(spf_relay)}, action {action}; outside {outside_ip} not rewritten")


def local_relay_networks(relay_cidrs: Iterable[IPNetwork | str], local_networks: Iterable[str]) -> list[str]:
    """Relay networks that overlap rspamd's local networks: mail from there is "local", and rspamd
    skips SPF, DMARC, RBL and most other checks for it (spam passes unscored)."""
    local = []
    for entry in local_networks:
        try:
            local.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            continue
    overlaps = []
    for cidr in relay_cidrs:
        relay = ipaddress.ip_network(str(cidr))
        inside = [str(network) for network in local if network.version == relay.version and network.overlaps(relay)]
        if inside:
            overlaps.append(f"{relay} (in {', '.join(inside)})")
    return overlaps


@dataclass
class Proof:
    live: bool
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))
        if not ok:
            self.live = False

    def warn(self, name: str, detail: str) -> None:
        """A finding that loses no mail but makes relayed mail worse off than direct mail."""
        self.warnings.append(f"{name}: {detail}")

    def evidence(self) -> str:
        failed = [f"{name}: {detail}" for name, ok, detail in self.checks if not ok]
        warned = "".join(f"; WARNING {warning}" for warning in self.warnings)
        if failed:
            return "NOT live: " + "; ".join(failed) + warned
        return "live: " + "; ".join(f"{name}: {detail}" for name, ok, detail in self.checks) + warned


