"""The self-hosted relay (provider ``selfhosted``) as plain Python: a store-and-forward backup MX.

Rendering and proof; the settings model is ``backupmx.core.relayhost``. Everything here is pure: data in, data out. ``facts.relayhost`` and
``operations.relayhost`` run the shell built here on the relay host (over SSH) and
hand the output back to the parsers here.

- Rendering: the managed ``main.cf`` settings (a marked block), ``master.cf`` with
  postscreen in front of smtpd (a marked block; the original listener is kept,
  commented out, and comes back with ``present=False``) and the TLS policy table.
- The SMTP proof the relay host runs against itself: ``backupmx.postfix.relay_proof``.

What the relay must be (docs/selfhosted-relay.md):

- catch-all for the protected domains (``relay_domains``, no ``relay_recipient_maps``);
- relays to the primary only (``relay_transport = smtp:[primary]:port``), TLS required
  (``smtp_tls_policy_maps``: ``secure`` with the primary's name);
- keeps mail ``maximal_queue_lifetime`` (default 30d), bounces give up after
  ``bounce_queue_lifetime`` (default 1d: a bounce that cannot be delivered is not
  worth a month of retries);
- never an open relay: ``smtpd_relay_restrictions = reject_unauth_destination`` and an
  empty ``mynetworks`` (a fresh Debian Postfix lets loopback relay);
- postscreen (pregreet, optional DNSBLs) answers 4xx, never 5xx: the postscreen
  service alone runs with ``soft_bounce = yes``, which turns its ``enforce`` reply
  (550 5.5.1) into 450 4.5.1, while smtpd still refuses other domains with 554.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping, Sequence

from backupmx.core.errors import BackupMXError
from backupmx.core.relayhost import RelayHost
from backupmx.postfix.blocks import block_begin, block_end, find_block, with_block
from backupmx.postfix.maincf import postfix_list
from backupmx.postfix.syntax import logical_lines
from backupmx.providers.relayroute import without_routes

MAIN_BLOCK = "relay-main"
MASTER_BLOCK = "relay-postscreen"
# Lines of the original configuration that a managed setting replaces, kept as
# comments with this prefix so present=False gives them back unchanged.
OFF = "#backupmx-off: "


# postscreen actions that would answer 5xx whatever soft_bounce says ("drop" is 521).
FORBIDDEN_ACTION = "drop"



_DOMAIN_ENTRY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


def check_domains(domains: Iterable[str]) -> tuple[str, ...]:
    found = tuple(str(domain).lower() for domain in domains)
    if not found:
        raise BackupMXError("relay_config: no domains to relay for")
    for domain in found:
        if not _DOMAIN_ENTRY.match(domain):
            raise BackupMXError(f"relay_config: {domain!r} is not a domain name")
    return found


# --- rendering ----------------------------------------------------------------


def main_settings(relay: RelayHost, domains: Sequence[str]) -> dict[str, str]:
    """The ``main.cf`` settings the relay needs, in the order they are written."""
    settings = {
        # Catch-all: every recipient of these domains, nothing else.
        "relay_domains": ", ".join(domains),
        "relay_recipient_maps": "",
        # Not an open relay, loopback included (a fresh Debian Postfix trusts 127.0.0.0/8).
        "mynetworks": "",
        "smtpd_relay_restrictions": "reject_unauth_destination",
        # No reputation rejections in smtpd: postscreen does that, and only defers.
        "smtpd_client_restrictions": "",
        "smtpd_helo_restrictions": "",
        "smtpd_sender_restrictions": "",
        "smtpd_recipient_restrictions": "",
        # To the primary only, TLS required.
        "relay_transport": f"smtp:{relay.nexthop}",
        "smtp_tls_policy_maps": f"texthash:{relay.tls_policy_path}",
        "smtp_tls_loglevel": "1",
    }
    if relay.primary_tls_ca:
        settings["smtp_tls_CAfile"] = relay.primary_tls_ca
    else:
        settings["smtp_tls_CApath"] = "/etc/ssl/certs"
    settings.update({
        "maximal_queue_lifetime": relay.queue_lifetime,
        "bounce_queue_lifetime": relay.bounce_lifetime,
        # postscreen: tests may only ever defer (soft_bounce on its service, master.cf).
        "postscreen_access_list": "",
        "postscreen_greet_action": "enforce",
        "postscreen_dnsbl_action": "enforce",
        "postscreen_dnsbl_sites": ", ".join(relay.dnsbl_sites),
        # Off by default, but if someone turns them on they must defer too: their
        # Postfix defaults include "drop" (521), which soft_bounce does not soften.
        "postscreen_denylist_action": "enforce",
        "postscreen_bare_newline_action": "enforce",
        "postscreen_non_smtp_command_action": "enforce",
        "postscreen_pipelining_action": "enforce",
    })
    if relay.tls_cert:
        settings.update({"smtpd_tls_cert_file": relay.tls_cert, "smtpd_tls_key_file": relay.tls_key,
                         "smtpd_tls_security_level": "may"})
    if relay.message_size_limit is not None:
        # At least the primary's (gate G2 compares): a smaller one answers 552 to
        # mail the primary would take, a bounce during an outage.
        settings["message_size_limit"] = str(relay.message_size_limit)
    settings["myhostname"] = relay.hostname
    return settings


def render_main_block(relay: RelayHost, domains: Sequence[str]) -> str:
    lines = [block_begin(MAIN_BLOCK),
             "# A store-and-forward backup MX (docs/selfhosted-relay.md). Settings this block",
             f"# replaces elsewhere in this file are kept as '{OFF.strip()}' comments."]
    lines += [f"{name} = {value}".rstrip() for name, value in main_settings(relay, domains).items()]
    lines.append(block_end(MAIN_BLOCK))
    return "\n".join(lines) + "\n"


def render_tls_policy(relay: RelayHost) -> str:
    match = f" match={relay.tls_match}" if relay.primary_tls != "encrypt" else ""
    return (f"# The primary, TLS required (written by backupmx; a texthash table, no postmap).\n"
            f"{relay.nexthop} {relay.primary_tls}{match}\n")


# Inside a block: the file had no final newline before we appended the block.
NO_FINAL_NEWLINE = "# (the file ended without a newline before this block)"


def _restore_off(text: str, block: str) -> str:
    """``text`` without our block and with the lines it turned off turned back on."""
    ours = find_block(text, block) or ""
    text = with_block(text, block, None) or ""
    if NO_FINAL_NEWLINE in ours and text.endswith("\n"):
        text = text[:-1]
    return "".join(line[len(OFF):] if line.startswith(OFF) else line for line in text.splitlines(keepends=True))


def _append_block(text: str, name: str, block: str) -> str:
    if text and not text.endswith("\n"):
        first, rest = block.split("\n", 1)
        block = f"{first}\n{NO_FINAL_NEWLINE}\n{rest}"
    return with_block(text, name, block) or ""


def _turn_off(lines: list[str], spans: Iterable[tuple[int, int]]) -> list[str]:
    off = {i for start, end in spans for i in range(start, end)}
    return [OFF + line if i in off else line for i, line in enumerate(lines)]


def configure_main_cf(current: str, relay: RelayHost, domains: Sequence[str], present: bool = True) -> str:
    """main.cf with our block (present) or as it was before us (not present); other lines kept."""
    original = _restore_off(current, MAIN_BLOCK)
    if not present:
        return original
    managed = set(main_settings(relay, domains))
    # Back in relay_domains, a domain needs no route of its own any more (a rollback's).
    original = without_routes(original, domains, relay.nexthop)
    lines = original.splitlines(keepends=True)
    spans = [(s, e) for s, e in logical_lines(lines) if lines[s].split("=", 1)[0].strip() in managed]
    return _append_block("".join(_turn_off(lines, spans)), MAIN_BLOCK, render_main_block(relay, domains))


SUPPORT_SERVICES = (("smtpd", "pass"), ("dnsblog", "unix"), ("tlsproxy", "unix"))


def configure_master_cf(current: str, relay: RelayHost, present: bool = True) -> str:
    """master.cf with postscreen on the listener in front of smtpd (present), or as before us.

    The listener's own entry and any ``smtpd pass``/``dnsblog``/``tlsproxy`` entries
    are turned off (commented with a marker) and our block defines them again: the
    listener runs postscreen with ``soft_bounce=yes`` (4xx, never 5xx), and the
    listener's original ``-o`` options move to ``smtpd pass``, which now talks SMTP.
    """
    original = _restore_off(current, MASTER_BLOCK)
    if not present:
        return original
    lines = original.splitlines(keepends=True)
    listener, support = None, []
    for start, end in logical_lines(lines):
        fields = lines[start].split()
        if len(fields) >= 8 and (fields[0], fields[1]) == (relay.listen_service, "inet"):
            listener = (start, end)
        elif len(fields) >= 2 and (fields[0], fields[1]) in SUPPORT_SERVICES:
            support.append((start, end))
    if listener is None:
        raise BackupMXError(f"relayhost.listen_service: {relay.master_cf_path} has no service "
                            f"{relay.listen_service}/inet; name the port-25 listener as `postconf -M` shows it")
    fields = lines[listener[0]].split()
    chroot = fields[4]
    if fields[7] != "smtpd":
        raise BackupMXError(f"relayhost.listen_service: {relay.listen_service}/inet runs {fields[7]}, not smtpd; "
                            "put it back to a plain smtpd listener (or remove the other postscreen set-up) and re-run")
    options = [line if line.endswith("\n") else line + "\n" for line in lines[listener[0] + 1:listener[1]]]
    block = [block_begin(MASTER_BLOCK),
             "# postscreen in front of smtpd; its tests may only ever defer (soft_bounce: 5xx -> 4xx).",
             f"{relay.listen_service} inet n - {chroot} - 1 postscreen",
             "  -o soft_bounce=yes",
             f"smtpd pass - - {chroot} - - smtpd"]
    block += [line.rstrip("\n") for line in options]
    block += [f"dnsblog unix - - {chroot} - 0 dnsblog",
              f"tlsproxy unix - - {chroot} - 0 tlsproxy",
              block_end(MASTER_BLOCK)]
    turned = _turn_off(lines, [listener, *support])
    return _append_block("".join(turned), MASTER_BLOCK, "\n".join(block) + "\n")


def wanted_files(relay: RelayHost, domains: Sequence[str], main_cf: str | None, master_cf: str | None,
                 present: bool = True) -> dict[str, str | None]:
    """Every managed file as it should be: {path: content, or None to remove}."""
    if main_cf is None or master_cf is None:
        missing = relay.main_cf_path if main_cf is None else relay.master_cf_path
        raise BackupMXError(f"{missing} does not exist; is Postfix installed and relayhost.postfix_config_dir right?")
    return {
        relay.main_cf_path: configure_main_cf(main_cf, relay, domains, present),
        relay.master_cf_path: configure_master_cf(master_cf, relay, present),
        relay.tls_policy_path: render_tls_policy(relay) if present else None,
    }


# --- what is in force -----------------------------------------------------------


def normalise(value: str) -> str:
    return " ".join(value.replace(",", " ").split())


def setting_mismatches(wanted: Mapping[str, str], effective: Mapping[str, str]) -> list[str]:
    """``name: want X, is Y`` for each setting Postfix does not report as wanted."""
    bad = []
    for name, value in wanted.items():
        found = effective.get(name)
        if found is None or normalise(found) != normalise(value):
            bad.append(f"{name}: want {value or '(empty)'!r}, is {found if found is not None else '(unknown)'!r}")
    return bad


def soft_only_problems(effective: Mapping[str, str], listener_params: Mapping[str, str] | None) -> list[str]:
    """Why postscreen could answer 5xx (empty: it only ever defers)."""
    problems = []
    if listener_params is None:
        return ["the listener does not run postscreen"]
    if listener_params.get("soft_bounce") != "yes":
        problems.append("the postscreen service lacks -o soft_bounce=yes")
    for name in ("postscreen_greet_action", "postscreen_dnsbl_action", "postscreen_denylist_action",
                 "postscreen_bare_newline_action", "postscreen_non_smtp_command_action", "postscreen_pipelining_action"):
        value = listener_params.get(name, effective.get(name, ""))
        if value == FORBIDDEN_ACTION:
            problems.append(f"{name} = drop answers 521")
    return problems


def trusted_by_mynetworks(addresses: Iterable[str], mynetworks: str) -> list[str]:
    """The relay addresses the primary's ``mynetworks`` (its ``postconf -h`` value) would trust.

    A relay inside the primary's mynetworks would skip postscreen and may relay
    through the primary: it must not be. Only literal networks are judged; a
    table (``hash:...``) or ``$name`` entry cannot be read here and is ignored.
    """
    networks = []
    for entry in postfix_list(mynetworks):
        try:  # "hash:/etc/postfix/network_table" and "$name" are not networks: skipped
            networks.append(ipaddress.ip_network(entry.replace("[", "").replace("]", ""), strict=False))
        except ValueError:
            continue
    found = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if any(ip.version == network.version and ip in network for network in networks):
            found.append(str(ip))
    return found
