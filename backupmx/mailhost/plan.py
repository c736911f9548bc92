"""Stage 3 on one mail host, as data: what its files and its running container hold (``MailhostState``,
read by the facts), what stage 3 wants there, the changes between them, and the plan's own
verdict (``HostPlan.refusal``, ``raise_if_unsafe``). The DNS side's model
(``backupmx.dns.plan``); nothing here reads a host or imports pyinfra: the operations
(``operations/mailhost.py``) read the state, ask for the plan and apply its transaction.

Two plans per mail host, one per operation: ``plan_exemption`` (rspamd's settings rule) and
``plan_whitelist`` (the postscreen table, the PROXY-v2 listener's overrides and, with layers
that refuse relayed mail, the relay exception).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from backupmx.core.errors import BackupMXError
from backupmx.core.validate import cidr_strings
from backupmx.mailhost.layers import hook_lists
from backupmx.mailhost.listener import (
    handoff,
    listener_master_cf,
    missing_listener_message,
    options_without_whitelist,
    wanted_listener_options,
    wanted_relay_service,
)
from backupmx.mailhost.live import hook_changes, listener_changes, live_command, relay_service_changes
from backupmx.mailhost.model import (
    EXEMPT,
    RELAY_SMTPD_BLOCK,
    RSPAMD_BLOCK,
    RSPAMD_CAP_RULE,
    RSPAMD_RULE,
    USER_PATCHES_BLOCK,
    MailHost,
    dms_policy_conflicts,
)
from backupmx.mailhost.probes import probe_addresses
from backupmx.mailhost.render import (
    main_cf_with_hook,
    render_postscreen_access,
    render_relay_smtpd_block,
    render_user_patches_block,
    rspamd_files,
)
from backupmx.postfix.blocks import with_block
from backupmx.postfix.hostplan import HostPlan
from backupmx.postfix.transaction import LiveCommand, Transaction


@dataclass(frozen=True)
class MailhostState:
    """What one mail host has now, as the facts read it (``facts/mailhost.py``): the plans' only input."""

    listeners: Mapping[str, Any]  # PostscreenListeners: services, main.cf's parameters
    postfix_files: Mapping[str, Mapping[str, Any]]  # MailhostFiles of mailhost.postfix_host_paths()
    exemption: Mapping[str, Any]  # RspamdExemption, without configdump: the settings file (and its live copy)
    rspamd_files: Mapping[str, Mapping[str, Any]]  # MailhostFiles of the external_relay mode's files (native)
    interrupted: Sequence[str]  # InterruptedTransactions: files a cut-off transaction left
    policies: Mapping[str, Any] | None = None  # DockerMailserverPolicies (docker-mailserver only)


# --- the whitelist: postscreen's table and the listener ------------------------------------------


def plan_whitelist(mailhost: MailHost, relay_cidrs, state: MailhostState, present: bool = True,
                   host_name: str = "the mail host") -> HostPlan:
    plan = HostPlan("postscreen_whitelist")
    cidrs = cidr_strings(relay_cidrs)
    listeners = state.listeners
    if not listeners["postconf"]:
        plan.problems.append(f"Postfix: cannot read its configuration on {host_name} ({listeners['error']}); "
                             "is Postfix installed and mailhost.postfix_config_dir right?")
        return plan
    plan.problems += _listener_problems(mailhost, listeners["services"], state, present)
    plan.problems += [f"cannot read {path}: {entry['error'] if entry else 'no answer'}"
                      for path in mailhost.postfix_host_paths()
                      if (entry := state.postfix_files.get(path)) is None or entry["error"]]
    if plan.problems:
        return plan
    existing = {path: state.postfix_files[path]["content"] for path in mailhost.postfix_host_paths()}
    services, main = listeners["services"], listeners["main"]
    listener = services[mailhost.service_key]
    relay_service, layers = None, None
    if present:
        relay_service, layers = wanted_relay_service(mailhost, services, main)
        if layers.problems:
            plan.problems += layers.problems
            return plan
        options = wanted_listener_options(mailhost, services, main)
    else:
        options = options_without_whitelist(mailhost, listener, main)
    hooked = layers if relay_service is not None else None
    try:
        desired = _whitelist_files(mailhost, existing, cidrs if present else None, listener, main, options,
                                   relay_service, hooked)
    except BackupMXError as error:
        plan.problems.append(str(error))
        return plan
    plan.settle(existing, desired, state.interrupted)
    changes = []
    if mailhost.is_docker:
        # The relay service exists before the listener hands over to it, and goes after.
        relay_changes = hook_changes(mailhost, main, hooked) + relay_service_changes(mailhost, services, relay_service)
        own = listener_changes(mailhost, listener, options)
        changes = relay_changes + own if relay_service else own + relay_changes
        plan.live = [f"{what} (in container {mailhost.container})" for what, _ in changes]
    if _refuse_read_only(plan, mailhost, state):
        return plan
    if not plan.changed:
        plan.already = (f"relay whitelist already on {mailhost.service_key} ({len(cidrs)} networks)" if present
                        else f"no relay whitelist on {mailhost.service_key}")
        return plan
    probes = probe_addresses(cidrs)
    plan.transaction = Transaction(
        label=f"postscreen_whitelist {mailhost.service_key}",
        files=tuple(plan.files),
        live_files=(tuple(mailhost.in_target([mailhost.master_cf_path])),
                    tuple(mailhost.in_target([mailhost.main_cf_path]))) if changes else (),
        live_commands=(live_command(mailhost, changes),) if changes else (),
        postfix_check=tuple(mailhost.postfix_check()),
        probes=tuple((tuple(mailhost.postmap_query(address)), "permit") for _, address in probes.inside)
        + tuple((tuple(mailhost.postmap_query(address)), "") for address in probes.outside) if present else (),
        reloads=(tuple(mailhost.postfix_reload_argv()),),
    )
    return plan


def _listener_problems(mailhost: MailHost, services, state: MailhostState, present: bool) -> list[str]:
    missing = missing_listener_message(mailhost, services)
    if missing:
        return [missing]
    if not mailhost.is_docker:
        return []
    policies = state.policies or {"ok": False, "error": "not read"}
    if not policies["ok"]:
        return [f"docker-mailserver: {policies['error']}"]
    conflicts = dms_policy_conflicts(policies["env"], policies["restrictions"], policies["milters"])
    if conflicts and present:
        return ["docker-mailserver judges relayed mail before rspamd: " + "; ".join(conflicts)]
    return []


def _whitelist_files(mailhost: MailHost, existing, cidrs, listener, main, options, relay_service, layers) -> dict:
    """The files as wanted: the table (None: removed), and the listener's overrides where this flavour
    keeps them (docker-mailserver: our block of user-patches.sh; native: master.cf and main.cf)."""
    desired = {mailhost.cidr_host_path: render_postscreen_access(cidrs) if cidrs is not None else None}
    if mailhost.is_docker:
        block = render_user_patches_block(mailhost, options, relay_service, layers) if cidrs is not None else None
        # A new user-patches.sh starts with a shebang; docker-mailserver runs it with bash.
        desired[mailhost.user_patches_host_path] = with_block(existing[mailhost.user_patches_host_path],
                                                              USER_PATCHES_BLOCK, block, header="#!/bin/bash\n")
        return desired
    master_cf = listener_master_cf(mailhost, existing[mailhost.master_cf_path] or "", listener, options,
                                   cidrs is not None)
    relay_block = (render_relay_smtpd_block(mailhost, relay_service, handoff(listener, main))
                   if relay_service is not None else None)
    desired[mailhost.master_cf_path] = with_block(master_cf, RELAY_SMTPD_BLOCK, relay_block)
    desired[mailhost.main_cf_path] = main_cf_with_hook(existing[mailhost.main_cf_path] or "", mailhost, layers,
                                                       hook_lists(main))
    return desired


# --- the exemption: rspamd's settings rule -------------------------------------------------------


def plan_exemption(mailhost: MailHost, relay_cidrs, state: MailhostState, present: bool = True,
                   host_name: str = "the mail host") -> HostPlan:
    plan = HostPlan("rspamd_exemption")
    cidrs = cidr_strings(relay_cidrs)
    found = state.exemption
    plan.problems += _exemption_problems(mailhost, found, host_name)
    if plan.problems:
        return plan
    wanted = rspamd_files(mailhost, cidrs if present else None)
    existing = {mailhost.rspamd_settings_host_path: found["file"]}
    for path in wanted:
        if path != mailhost.rspamd_settings_host_path:
            entry = state.rspamd_files.get(path)
            if entry is None or entry["error"]:
                plan.problems.append(f"cannot edit {path}: {entry['error'] if entry else 'no answer'}")
            else:
                existing[path] = entry["content"]
    desired = {}
    # settings.conf first: the drift report reads the first change as the settings file.
    for path, (block_name, comment, block) in wanted.items():
        try:
            desired[path] = with_block(existing.get(path), block_name, block, comment=comment)
        except BackupMXError as error:
            plan.problems.append(f"{path}: {error}")
    if plan.problems:
        return plan
    # docker-mailserver's changedetector acts on rspamd/ by itself: the file goes there last,
    # once the container's own copy is validated and rspamd reloaded (stage_dir).
    plan.settle(existing, desired, state.interrupted, mailhost.stage_dir)
    command = _live_settings(mailhost, found["live_file"], desired[mailhost.rspamd_settings_host_path])
    if command is not None:
        plan.live = [f"{command.what} (in container {mailhost.container})"]
    if _refuse_read_only(plan, mailhost, state):
        return plan
    if not plan.changed:
        mode = "" if mailhost.relay_scoring == EXEMPT else f", relay scoring {mailhost.relay_scoring}"
        plan.already = (f"rspamd exemption already in {mailhost.rspamd_settings_host_path} ({len(cidrs)} networks{mode})"
                        if present else "no rspamd exemption")
        return plan
    plan.transaction = Transaction(
        label="rspamd_exemption",
        files=tuple(plan.files),
        live_files=(tuple(mailhost.in_target([mailhost.rspamd_settings_live_path])),) if command else (),
        live_commands=(command,) if command else (),
        rspamd_configtest=tuple(mailhost.rspamadm("configtest")),
        reloads=(tuple(mailhost.rspamd_reload_argv()),),
        settle=tuple(mailhost.changedetector_settled()) if mailhost.is_docker else (),
    )
    return plan


def _exemption_problems(mailhost: MailHost, found: Mapping[str, Any], host_name: str) -> list[str]:
    if not found["rspamadm"]:
        return [f"rspamd: {found['error']} on {host_name}; is rspamd installed"
                f"{' in container ' + str(mailhost.container) if mailhost.is_docker else ''}?"]
    if found["file_error"]:
        return [f"cannot edit {mailhost.rspamd_settings_host_path}: {found['file_error']}"]
    if found["live_error"]:
        return [f"cannot read {mailhost.rspamd_settings_live_path} in container {mailhost.container}: "
                f"{found['live_error']}"]
    foreign = with_block(found["file"], RSPAMD_BLOCK, None) or ""
    return [f"{mailhost.rspamd_settings_host_path} already has a rule named {rule} outside the backupmx block; "
            "rename or remove it" for rule in (RSPAMD_RULE, RSPAMD_CAP_RULE) if rule in foreign][:1]


def _live_settings(mailhost: MailHost, live: str | None, wanted: str | None) -> LiveCommand | None:
    """docker-mailserver: the container's copy of the settings file (DMS copies rspamd/override.d into
    /etc/rspamd/override.d at start), made what the next start would make it, now."""
    if not mailhost.is_docker or live == wanted:
        return None
    path = mailhost.rspamd_settings_live_path
    if wanted is None:
        return LiveCommand(f"remove {path}", tuple(mailhost.in_target(["rm", "-f", path])))
    write = 'cat >"$1.backupmx-new" && mv -f "$1.backupmx-new" "$1"'
    return LiveCommand(f"copy the settings into {path}",
                       tuple(mailhost.in_target(["sh", "-c", write, "sh", path], stdin=True)),
                       stdin_from=mailhost.rspamd_settings_host_path)


def _refuse_read_only(plan: HostPlan, mailhost: MailHost, state: MailhostState) -> bool:
    """docker-mailserver: a change its config dir cannot take (mounted read-only) is the plan's refusal."""
    if not (mailhost.is_docker and plan.changed and state.policies and state.policies.get("writable") is False):
        return False
    plan.refused = [change.path for change in plan.files]
    plan.problems.append(mailhost.read_only_refusal(plan.refused))
    return True
