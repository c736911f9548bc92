"""The primary's layers that refuse relayed mail, and the narrowest exception stage 3 adds for
them (docs/mailhost.md, "Every layer of the primary").

A backup relay delivers with the original sender's envelope, from its own address,
often hours later and in bursts. Some smtpd restrictions refuse exactly that:
policyd-spf (the relay is not in the sender's SPF), ``reject_unknown_client_hostname``
(a relay without forward-confirmed reverse DNS), ``reject_rbl_client`` (backup relays
are listed often), and anvil's rate limits (a queue drain). postscreen's DNSBL and
pregreet tests are already skipped by the whitelist.

The exception lives on the PROXY-v2 listener only. main.cf's lists get one entry,
``$backupmx_relay_exception``, right before the first layer of this module's table;
main.cf defines it empty, so it is nothing on every other service. The listener hands
its clients to an smtpd service of its own (``smtpd_service_name``), a copy of
``smtpd/pass`` that sets it to ``check_client_access cidr:<the relay table>``; the
table answers ``permit`` for the relay networks only, so everyone else, on that
listener too, still meets every layer. The lists stay main.cf's: a layer the site
adds later applies at once. Any other layer (a policy server we do not know, a
site's own access table) stays in front of the exception and is judged by stage 4's
proof.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from backupmx.postfix.maincf import postfix_list, with_list_entry, without_list_entry

# The master.cf service the PROXY-v2 listener hands its clients to once stage 3 ran.
RELAY_SMTPD_SERVICE = "backupmx-relay"
# The main.cf parameter in the lists: empty in main.cf, the exception on RELAY_SMTPD_SERVICE.
HOOK = "backupmx_relay_exception"
HOOK_ENTRY = f"${HOOK}"
RELAY_SMTPD_TYPE = "pass"
SERVICE_NAME_OPTION = "smtpd_service_name"

# smtpd's restriction lists, in the order smtpd applies them; smtpd_relay_restrictions
# is never changed (it is what keeps the primary from relaying for others).
RESTRICTION_LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
                     "smtpd_recipient_restrictions")
RELAY_RESTRICTIONS = "smtpd_relay_restrictions"
UNAUTH_DESTINATION = ("reject_unauth_destination", "defer_unauth_destination")

# Restrictions that refuse relayed mail for what a store-and-forward relay is, not for
# what the message is (PRIMARY-LAYERS.md). A policy service counts when its target
# names policyd-spf (docker-mailserver's and Debian's `unix:private/policyd-spf`).
HANDLED_RESTRICTIONS = {
    "reject_unknown_client_hostname": "the relay has no forward-confirmed reverse DNS",
    "reject_unknown_reverse_client_hostname": "the relay's address has no reverse DNS",
    "reject_unknown_helo_hostname": "the relay's HELO name has no address record",
    "reject_rbl_client": "backup relays are often on DNS blocklists",
    "reject_rhsbl_client": "backup relays' names are often on DNS blocklists",
    "reject_rhsbl_reverse_client": "backup relays' names are often on DNS blocklists",
    "reject_rhsbl_helo": "backup relays' names are often on DNS blocklists",
}
SPF_POLICY = "check_policy_service"
SPF_POLICY_WHY = "policyd-spf refuses mail whose sender's SPF does not list the relay"

# anvil: a drain of hundreds of messages from one address trips its rate limits (all
# off by Postfix's default). The concurrency limit (50 by default) alone does not
# call for the exception, but the exception covers it too once it is there.
EVENT_LIMIT_EXCEPTIONS = "smtpd_client_event_limit_exceptions"
ANVIL_LIMITS = ("smtpd_client_connection_rate_limit", "smtpd_client_message_rate_limit",
                "smtpd_client_recipient_rate_limit", "smtpd_client_new_tls_session_rate_limit")

# What `postconf` must read for this module: the lists, anvil, and the event exceptions
# (and main.cf's own parameters, which the lists may refer to: ``list_source``).
MAIN_PARAMETERS = RESTRICTION_LISTS + (RELAY_RESTRICTIONS, EVENT_LIMIT_EXCEPTIONS) + ANVIL_LIMITS

# A list entry that is another parameter: $name, ${name} or $(name).
_REFERENCE = re.compile(r"^\$(?:\{(\w+)\}|\((\w+)\)|(\w+))$")


@dataclass
class RelayLayers:
    """Where main.cf's lists get the hook, what the relay smtpd service sets, and why."""

    # list name -> (its entries as postconf reads them, without the hook; index of the first layer)
    lists: dict[str, tuple[list[str], int]] = field(default_factory=dict)
    service_options: dict[str, str] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.service_options)


def handled_layer(entries: list[str], index: int) -> str | None:
    """Why ``entries[index]`` refuses relayed mail, or None when it is not one of ours."""
    entry = entries[index]
    if entry in HANDLED_RESTRICTIONS:
        return HANDLED_RESTRICTIONS[entry]
    if entry == SPF_POLICY and index + 1 < len(entries) and "policyd-spf" in entries[index + 1]:
        return SPF_POLICY_WHY
    return None


def referred(entry: str) -> str | None:
    """The parameter a list entry refers to (``$name``), or None for a restriction."""
    found = _REFERENCE.match(entry)
    return next(group for group in found.groups() if group) if found and entry != HOOK_ENTRY else None


def list_source(main: Mapping[str, str], name: str) -> str:
    """The parameter that holds the list ``name``: itself, or the one it names alone.

    docker-mailserver 15 writes ``smtpd_sender_restrictions = $dms_smtpd_sender_restrictions``
    (its ``reject_unknown_client_hostname`` goes into the other one): the hook belongs there.
    """
    seen = [name]
    while True:
        entries = postfix_list(main.get(seen[-1], ""))
        target = referred(entries[0]) if len(entries) == 1 else None
        if target is None or target in seen or target not in main:
            return seen[-1]
        seen.append(target)


def hook_lists(main: Mapping[str, str]) -> list[str]:
    """The parameters the hook can sit in: smtpd's restriction lists, each at its ``list_source``."""
    return list(dict.fromkeys(list_source(main, name) for name in RESTRICTION_LISTS))


def relay_layers(main: Mapping[str, str], cidr_path: str) -> RelayLayers:
    """Where the hook goes in this main.cf (``postconf`` values of MAIN_PARAMETERS and of main.cf's
    own parameters), and the relay smtpd service's overrides."""
    result = RelayLayers()
    for name in RESTRICTION_LISTS:
        source = list_source(main, name)
        shown = name if source == name else f"{name} (= ${source})"
        value = main.get(source, "")
        if "{" in value:
            result.problems.append(f"main.cf {source} uses {{ }} grouping, which stage 3 cannot edit safely; "
                                   f"write it without braces, or put `{HOOK_ENTRY}` before the layer by hand")
            continue
        entries = [entry for entry in postfix_list(value) if entry != HOOK_ENTRY]
        hidden = _layer_behind_reference(main, entries)
        if hidden:
            result.problems.append(f"main.cf {shown}: {hidden}; stage 3 cannot put the exception before it "
                                   f"safely; put `{HOOK_ENTRY}` before that layer by hand, or write the list out")
            continue
        first = next((i for i in range(len(entries)) if handled_layer(entries, i)), None)
        if first is None:
            continue
        if name == "smtpd_recipient_restrictions" and not _relay_protected(entries[:first], main):
            result.problems.append(f"main.cf {shown}: no reject_unauth_destination before {entries[first]} and "
                                   f"none in {RELAY_RESTRICTIONS}; a permit there would make the primary an "
                                   "open relay for the relay networks; add reject_unauth_destination first")
            continue
        result.layers.extend(f"{shown}: {named_layer(entries, i)} ({handled_layer(entries, i)})"
                             for i in range(first, len(entries)) if handled_layer(entries, i))
        result.lists[source] = (entries, first)
    if result.lists:
        result.service_options[HOOK] = f"check_client_access,cidr:{cidr_path}"
    if any(_limit(main.get(limit)) for limit in ANVIL_LIMITS):
        current = postfix_list(main.get(EVENT_LIMIT_EXCEPTIONS, "$mynetworks"))
        result.service_options[EVENT_LIMIT_EXCEPTIONS] = ",".join(current + [f"cidr:{cidr_path}"])
        limits = ", ".join(f"{limit} = {main[limit]}" for limit in ANVIL_LIMITS if _limit(main.get(limit)))
        result.layers.append(f"anvil: {limits} (a queue drain from one relay address trips them)")
    return result


def hooked_value(value: str, first: int) -> str:
    """A list's value (as ``postconf -h`` prints it) with the hook right before its entry ``first``
    (counted without any hook already in it); the rest written as it was, as ``postconf -e`` sets it."""
    plain = unhooked_value(value)
    return _value_of(with_list_entry(_one_line(plain), "x", postfix_list(plain), first, HOOK_ENTRY))


def unhooked_value(value: str) -> str:
    """A list's value without the hook (the separator after it goes too)."""
    return _value_of(without_list_entry(_one_line(value), "x", HOOK_ENTRY))


def _one_line(value: str) -> str:
    return f"x = {value}\n"


def _value_of(line: str) -> str:
    return line.removeprefix("x = ").rstrip("\n")


def named_layer(entries: list[str], index: int) -> str:
    """The restriction with its argument (a policy service's or a blocklist's name)."""
    takes_argument = entries[index] == SPF_POLICY or entries[index].startswith("reject_rbl") \
        or entries[index].startswith("reject_rhsbl")
    return " ".join(entries[index:index + 2]) if takes_argument and index + 1 < len(entries) else entries[index]


def _layer_behind_reference(main: Mapping[str, str], entries: list[str]) -> str | None:
    """A handled layer inside a parameter this list takes in among other entries (``..., $other``)."""
    for entry in entries:
        target = referred(entry)
        inner = postfix_list(main.get(target, "")) if target else []
        layer = next((named_layer(inner, i) for i in range(len(inner)) if handled_layer(inner, i)), None)
        if layer:
            return f"{layer} comes in through {entry}"
    return None


def _relay_protected(before: list[str], main: Mapping[str, str]) -> bool:
    relay = postfix_list(main.get(RELAY_RESTRICTIONS, ""))
    return any(entry in UNAUTH_DESTINATION for entry in before + relay)


def _limit(value: str | None) -> bool:
    return bool(value) and value.strip().isdigit() and int(value) > 0
