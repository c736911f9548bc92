"""Rendering of the files stage 3 pushes to a mail host: ``postscreen_access.cidr``, the
rspamd settings rules (exemption, or external_relay and its cap), the marked
``user-patches.sh`` block (docker-mailserver), and the parser of the CIDR table.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping, Sequence

from backupmx.core.templates import render
from backupmx.core.validate import IPNetwork
from backupmx.mailhost.model import (
    EXEMPT_GROUPS,
    EXTERNAL_RELAY,
    EXTERNAL_RELAY_BLOCK,
    EXTERNAL_RELAY_COUNT,
    EXTERNAL_RELAY_PRIORITY,
    RSPAMD_BLOCK,
    RSPAMD_CAP_RULE,
    RSPAMD_RELAY_SYMBOL,
    RELAY_HOOK_BLOCK,
    RELAY_SMTPD_BLOCK,
    RSPAMD_RULE,
    USER_PATCHES_BLOCK,
    MailHost,
)
from backupmx.mailhost.layers import (
    EVENT_LIMIT_EXCEPTIONS,
    HOOK,
    HOOK_ENTRY,
    RELAY_SMTPD_SERVICE,
    RELAY_SMTPD_TYPE,
    RESTRICTION_LISTS,
    RelayLayers,
    named_layer,
)
from backupmx.postfix.blocks import block_begin, block_end, with_block
from backupmx.postfix.maincf import with_list_entry, without_list_entry
from backupmx.postfix.mastercf import Listener

def render_postscreen_access(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """``postscreen_access.cidr``: ``permit`` for every relay network, IPv4 and IPv6."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("postscreen_access.cidr.j2", networks=networks)


def render_rspamd_block(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """The marked settings rule: SPF and DMARC groups off for the relay networks only."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("rspamd_relay_exemption.conf.j2", begin=block_begin(RSPAMD_BLOCK), end=block_end(RSPAMD_BLOCK),
                  rule=RSPAMD_RULE, networks=networks, groups=EXEMPT_GROUPS)


def render_relay_cap_block(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """external_relay mode: the marked settings rule that caps relayed mail at "add header"."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("rspamd_relay_cap.conf.j2", begin=block_begin(RSPAMD_BLOCK), end=block_end(RSPAMD_BLOCK),
                  rule=RSPAMD_CAP_RULE, networks=networks)


def render_external_relay_block() -> str:
    """external_relay mode: the module's rule, a marked block of local.d/external_relay.conf."""
    return render("rspamd_external_relay.conf.j2", begin=block_begin(EXTERNAL_RELAY_BLOCK),
                  end=block_end(EXTERNAL_RELAY_BLOCK), symbol=RSPAMD_RELAY_SYMBOL, count=EXTERNAL_RELAY_COUNT,
                  priority=EXTERNAL_RELAY_PRIORITY, cap_rule=RSPAMD_CAP_RULE)


def render_external_relay_lua(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """external_relay mode: the Lua block (local.d/rspamd.lua) that limits the rule to relay addresses."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("rspamd_external_relay.lua.j2", begin=block_begin(EXTERNAL_RELAY_BLOCK, "--"),
                  end=block_end(EXTERNAL_RELAY_BLOCK, "--"), symbol=RSPAMD_RELAY_SYMBOL, networks=networks)


def rspamd_files(mailhost: MailHost, relay_cidrs: Iterable[IPNetwork | str] | None) -> dict[str, tuple[str, str, str | None]]:
    """Each rspamd file of the stage: path -> (block name, comment marker, wanted block or None).

    ``relay_cidrs`` None: nothing of ours anywhere (``present=False``). Switching the
    mode swaps the settings rule and adds or removes the two external_relay blocks.
    """
    external = relay_cidrs is not None and mailhost.relay_scoring == EXTERNAL_RELAY
    cidrs = list(relay_cidrs or [])
    settings = None
    if relay_cidrs is not None:
        settings = render_relay_cap_block(cidrs) if external else render_rspamd_block(cidrs)
    files = {mailhost.rspamd_settings_host_path: (RSPAMD_BLOCK, "#", settings)}
    if not mailhost.is_docker:
        files[mailhost.rspamd_external_relay_host_path] = (EXTERNAL_RELAY_BLOCK, "#",
                                                           render_external_relay_block() if external else None)
        files[mailhost.rspamd_lua_host_path] = (EXTERNAL_RELAY_BLOCK, "--",
                                                render_external_relay_lua(cidrs) if external else None)
    return files


def render_user_patches_block(mailhost: MailHost, options: Mapping[str, str | None],
                              relay_service: Listener | None = None, layers: RelayLayers | None = None) -> str:
    """docker-mailserver: the marked user-patches.sh block that sets the listener's options at start,
    and, when there are layers to make an exception for, puts the hook in main.cf's lists and
    defines the relay smtpd service first."""
    settings = []
    if relay_service is not None:
        settings += [f"{relay_service.key}/{name}={value}" for name, value in relay_service.params.items()]
    settings += [f"{mailhost.service_key}/{name}={value}" for name, value in options.items() if value is not None]
    hooks = [(name, _sed_pattern(entries, first)) for name, (entries, first) in (layers.lists if layers else {}).items()]
    return render("user-patches.block.j2", begin=block_begin(USER_PATCHES_BLOCK), end=block_end(USER_PATCHES_BLOCK),
                  settings=settings, service=mailhost.service_key, layers=layers.layers if layers else (),
                  hook=HOOK, hooks=hooks, relay_key=relay_service.key if relay_service else "",
                  relay_entry=f"{relay_service.key}={relay_service.entry()}" if relay_service else "")


def _sed_pattern(entries: list[str], first: int) -> str:
    """A sed regular expression (BRE, ``|`` delimited) for the layer at ``first`` and its argument."""
    named = named_layer(entries, first).split(" ")
    return "[ ,][ ,]*".join(re.sub(r"([][.*^$\\|&])", r"\\\1", token) for token in named)


def render_relay_smtpd_block(mailhost: MailHost, relay_service: Listener, source: str) -> str:
    """Native: the marked master.cf block with the relay smtpd service (``backupmx.mailhost.layers``)."""
    # The comment says what the entry sets: the hook (layers to skip), anvil's exceptions, or both.
    return render("relay_smtpd.master.cf.j2", begin=block_begin(RELAY_SMTPD_BLOCK), end=block_end(RELAY_SMTPD_BLOCK),
                  listener=mailhost.service_key, source=source, hook=HOOK, entry=relay_service.master_cf_lines(),
                  sets_hook=HOOK in relay_service.params, anvil=EVENT_LIMIT_EXCEPTIONS in relay_service.params)


def render_relay_hook_block(mailhost: MailHost, layers: Sequence[str]) -> str:
    """Native: the marked main.cf block that defines the hook, empty."""
    return render("relay_hook.main.cf.j2", begin=block_begin(RELAY_HOOK_BLOCK), end=block_end(RELAY_HOOK_BLOCK),
                  relay_service=f"{RELAY_SMTPD_SERVICE}/{RELAY_SMTPD_TYPE}", listener=mailhost.service_key,
                  cidr_path=mailhost.cidr_path, layers=layers, hook=HOOK)


def main_cf_with_hook(main_cf: str, mailhost: MailHost, layers: RelayLayers | None,
                      lists: Sequence[str] = RESTRICTION_LISTS) -> str:
    """Native: main.cf with the hook in the lists ``layers`` names and its definition (none: both
    out); ``lists``: where a hook may sit now (``layers.hook_lists``)."""
    edited = main_cf
    for name in lists:
        edited = without_list_entry(edited, name, HOOK_ENTRY)
    if layers is None or not layers.lists:
        return with_block(edited, RELAY_HOOK_BLOCK, None) or ""
    for name, (entries, first) in layers.lists.items():
        edited = with_list_entry(edited, name, entries, first, HOOK_ENTRY)
    return with_block(edited, RELAY_HOOK_BLOCK, render_relay_hook_block(mailhost, layers.layers))


def parse_postscreen_access(text: str) -> tuple[list[str], list[str]]:
    """The networks a cidr table permits, and the lines it cannot read."""
    networks, invalid = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        try:
            network = ipaddress.ip_network(parts[0].strip("[]").replace("]/", "/"), strict=True)
        except ValueError:
            invalid.append(line)
            continue
        if len(parts) >= 2 and parts[1].lower() == "permit":
            networks.append(str(network))
    return networks, invalid


