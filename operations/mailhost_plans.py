"""What stage 3 would change on a mail host: its plans (files, live commands, the transaction), read\nfrom facts (ahead, in one SSH round trip, while preparing) and judged by the domain code in backupmx.mailhost.\n"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Iterable

from pyinfra import host

from backupmx.core.context import executing, executing_after_preparing, recall, remember
from backupmx.core.errors import BackupMXError
from backupmx.core.validate import IPNetwork
from backupmx.mailhost.layers import (
    HOOK,
    RELAY_SMTPD_SERVICE,
    RELAY_SMTPD_TYPE,
    SERVICE_NAME_OPTION,
    hook_lists,
    hooked_value,
    unhooked_value,
)
from backupmx.mailhost.listener import missing_listener_message, wanted_listener_options, wanted_relay_service
from backupmx.mailhost.model import (
    ACCESS_LIST,
    CACHE_MAP,
    EXEMPT,
    POSTFIX_DEFAULT_ACCESS_LIST,
    RELAY_SMTPD_BLOCK,
    RSPAMD_BLOCK,
    RSPAMD_CAP_RULE,
    RSPAMD_RULE,
    USER_PATCHES_BLOCK,
    MailHost,
    dms_policy_conflicts,
)
from backupmx.mailhost.proof import probe_addresses
from backupmx.mailhost.render import (
    main_cf_with_hook,
    render_postscreen_access,
    render_relay_smtpd_block,
    render_user_patches_block,
    rspamd_files,
)
from backupmx.postfix.blocks import with_block
from backupmx.postfix.maincf import postfix_list
from backupmx.postfix.mastercf import Listener, remove_service_options, set_service_options
from backupmx.postfix.transaction import FileChange, LiveCommand, Transaction, unified_diff
from facts.mailhost import (
    DockerMailserverPolicies,
    InterruptedTransactions,
    MailhostFiles,
    MailhostReads,
    PostscreenListeners,
    RspamdExemption,
    facts_args,
)


@dataclass
class Plan:
    """What one operation would do on one mail host, and why not if it cannot."""

    label: str
    problems: list[str] = field(default_factory=list)
    files: list[FileChange] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # docker-mailserver: what changes in the running container
    transaction: Transaction | None = None
    already: str = ""
    refused: list[str] = field(default_factory=list)  # docker-mailserver: files its read-only config dir cannot take

    @property
    def changed(self) -> bool:
        return bool(self.files or self.live)

    def summary(self) -> str:
        parts = [f"redo {c.path} (an earlier transaction was cut off: validate and reload again)" if c.old == c.new
                 else f"{'create' if c.old is None else 'remove' if c.new is None else 'change'} {c.path}"
                 for c in self.files]
        return "; ".join(parts + self.live)

    def diff(self) -> list[str]:
        lines = []
        for change in self.files:
            lines.extend(unified_diff(change.path, change.old, change.new))
        lines.extend(f"live: {item}" for item in self.live)
        return lines


def cidr_strings(relay_cidrs: Iterable[IPNetwork | str]) -> list[str]:
    return [str(cidr) for cidr in relay_cidrs]


def listeners_args(mailhost: MailHost) -> dict:
    return {"config_dir": mailhost.postfix_config_dir, **facts_args(mailhost)}


def _files_args(mailhost: MailHost) -> dict:
    return {"paths": mailhost.postfix_host_paths()}  # on the host, not in the container


def _exemption_args(mailhost: MailHost) -> dict:
    return {"settings_path": mailhost.rspamd_settings_host_path, "rspamadm_args": mailhost.rspamadm_args,
            "live_path": mailhost.rspamd_settings_live_path if mailhost.is_docker else None, "dump": False,
            **facts_args(mailhost)}


def _external_relay_args(mailhost: MailHost) -> dict:
    """The external_relay mode's own files (native only; read in either mode, to take our blocks out)."""
    return {"paths": tuple(path for path in rspamd_files(mailhost, None)
                           if path != mailhost.rspamd_settings_host_path)}


def _interrupted_args(mailhost: MailHost) -> dict:
    return {"paths": tuple(mailhost.managed_host_paths()) + _external_relay_args(mailhost)["paths"],
            "stage_dir": mailhost.stage_dir}


def plan_reads(mailhost: MailHost) -> list[tuple[type, dict]]:
    reads = [(RspamdExemption, _exemption_args(mailhost)), (PostscreenListeners, listeners_args(mailhost)),
             (MailhostFiles, _files_args(mailhost)), (InterruptedTransactions, _interrupted_args(mailhost))]
    if _external_relay_args(mailhost)["paths"]:
        reads.append((MailhostFiles, _external_relay_args(mailhost)))
    if mailhost.is_docker:
        reads.append((DockerMailserverPolicies, _policies_args(mailhost)))
    return reads


def _policies_args(mailhost: MailHost) -> dict:
    return {**facts_args(mailhost), "config_dir": mailhost.config_dir}


def _refuse_read_only(plan: Plan, mailhost: MailHost) -> None:
    """docker-mailserver: a change its config dir cannot take (mounted read-only) becomes the plan's problem."""
    if not (mailhost.is_docker and plan.changed):
        return
    policies = read_fact(DockerMailserverPolicies, _policies_args(mailhost), shared=True)  # both plans ask
    if policies.get("writable") is False:
        plan.refused = [change.path for change in plan.files]
        plan.problems.append(mailhost.read_only_refusal(plan.refused))


# Facts read ahead in one round trip while preparing (assess_mailhost) are kept for
# the host's pass (backupmx.core.context), each taken once by the plan that asks
# for it; anything else reads the host.
_NOT_READ = object()


def _read_key(fact: type, arguments: dict) -> tuple:
    return ("fact", fact.__name__, tuple(sorted(arguments.items())))


def read_ahead(reads: list[tuple[type, dict]]) -> None:
    if executing():
        return
    found = host.get_fact(MailhostReads, reads=tuple((fact.__name__, tuple(sorted(arguments.items())))
                                                     for fact, arguments in reads))
    if len(found) != len(reads):
        return  # incomplete answer: each plan reads its own fact, as without read-ahead
    for (fact, arguments), value in zip(reads, found):
        remember(_read_key(fact, arguments), value)


def read_fact(fact: type, arguments: dict, shared: bool = False):
    """``host.get_fact(fact, **arguments)``, or its value read ahead moments ago while preparing.

    A value is taken by the plan that asks for it, unless ``shared``: then it is
    left for the other readers of this pass (one SSH read, several users).
    """
    if not executing():
        value = recall(_read_key(fact, arguments), keep=shared, default=_NOT_READ)
        if value is not _NOT_READ:
            return value
    return host.get_fact(fact, **arguments)


def plan_postscreen_whitelist(mailhost: MailHost, relay_cidrs, present: bool = True) -> Plan:
    plan = Plan("postscreen_whitelist")
    cidrs = cidr_strings(relay_cidrs)
    listeners = read_fact(PostscreenListeners, listeners_args(mailhost))
    if not listeners["postconf"]:
        plan.problems.append(f"Postfix: cannot read its configuration on {host.name} ({listeners['error']}); "
                             "is Postfix installed and mailhost.postfix_config_dir right?")
        return plan
    missing = missing_listener_message(mailhost, listeners["services"])
    if missing:
        plan.problems.append(missing)
        return plan
    if mailhost.is_docker:
        policies = read_fact(DockerMailserverPolicies, _policies_args(mailhost), shared=True)
        if not policies["ok"]:
            plan.problems.append(f"docker-mailserver: {policies['error']}")
            return plan
        conflicts = dms_policy_conflicts(policies["env"], policies["restrictions"], policies["milters"])
        if conflicts and present:
            plan.problems.append("docker-mailserver judges relayed mail before rspamd: " + "; ".join(conflicts))
            return plan
    files = read_fact(MailhostFiles, _files_args(mailhost))
    for path in mailhost.postfix_host_paths():
        entry = files.get(path)
        if entry is None or entry["error"]:
            plan.problems.append(f"cannot read {path}: {entry['error'] if entry else 'no answer'}")
    if plan.problems:
        return plan
    now = {path: files[path]["content"] for path in mailhost.postfix_host_paths()}
    services, main = listeners["services"], listeners["main"]
    listener = services[mailhost.service_key]
    relay_service, layers = None, None
    if present:
        relay_service, layers = wanted_relay_service(mailhost, services, main)
        if layers.problems:
            plan.problems.extend(layers.problems)
            return plan
        options = wanted_listener_options(mailhost, services, main)
    else:
        options = _options_without_whitelist(mailhost, listener, main)
        if listener.params.get(SERVICE_NAME_OPTION) == RELAY_SMTPD_SERVICE:
            options[SERVICE_NAME_OPTION] = None
    new = {mailhost.cidr_host_path: render_postscreen_access(cidrs) if present else None}
    try:
        if mailhost.is_docker:
            block = render_user_patches_block(mailhost, options, relay_service, layers) if present else None
            # A new user-patches.sh starts with a shebang; docker-mailserver runs it with bash.
            new[mailhost.user_patches_host_path] = with_block(now[mailhost.user_patches_host_path],
                                                              USER_PATCHES_BLOCK, block, header="#!/bin/bash\n")
        else:
            master_cf = _master_cf(mailhost, now[mailhost.master_cf_path] or "", listener, options, present)
            relay_block = (render_relay_smtpd_block(mailhost, relay_service, _handoff(listener, main))
                           if relay_service is not None else None)
            new[mailhost.master_cf_path] = with_block(master_cf, RELAY_SMTPD_BLOCK, relay_block)
            new[mailhost.main_cf_path] = main_cf_with_hook(now[mailhost.main_cf_path] or "", mailhost,
                                                           layers if relay_service is not None else None,
                                                           hook_lists(main))
    except BackupMXError as error:
        plan.problems.append(str(error))
        return plan
    for path in mailhost.postfix_host_paths():
        if now[path] != new[path]:
            plan.files.append(FileChange(path, now[path], new[path]))
    _redo_interrupted(plan, mailhost, now)
    live_commands = []
    if mailhost.is_docker:
        # The container's master.cf: what user-patches.sh sets at the next start, now.
        for option, value in options.items():
            current = listener.params.get(option)
            if value is None and current is not None:
                live_commands.append((f"postconf -PX {mailhost.service_key}/{option}",
                                      postconf_argv(mailhost, "-PX", f"{mailhost.service_key}/{option}")))
            elif value is not None and current != value:
                live_commands.append((f"postconf -P {mailhost.service_key}/{option}={value}",
                                      postconf_argv(mailhost, "-P", f"{mailhost.service_key}/{option}={value}")))
        # The relay service exists before the listener hands over to it, and goes after.
        relay_commands = (_hook_commands(mailhost, main, layers if relay_service else None)
                          + _relay_service_commands(mailhost, services, relay_service))
        live_commands = relay_commands + live_commands if relay_service else live_commands + relay_commands
        plan.live = [f"{what} (in container {mailhost.container})" for what, _ in live_commands]
        # One docker exec for all of them, in order, stopping at the first that fails.
        live_commands = [LiveCommand(f"postconf in container {mailhost.container}",
                                     tuple(mailhost.in_target(["sh", "-ec", "\n".join(
                                         shlex.join(argv) for _, argv in live_commands)])))] if live_commands else []
    _refuse_read_only(plan, mailhost)
    if plan.problems:
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
                    tuple(mailhost.in_target([mailhost.main_cf_path]))) if live_commands else (),
        live_commands=tuple(live_commands),
        postfix_check=tuple(mailhost.postfix_check()),
        probes=tuple((tuple(mailhost.postmap_query(address)), "permit") for _, address in probes.inside)
        + tuple((tuple(mailhost.postmap_query(address)), "") for address in probes.outside) if present else (),
        reloads=(tuple(mailhost.postfix_reload_argv()),),
    )
    return plan


def _master_cf(mailhost: MailHost, master_cf: str, listener: Listener, options: dict, present: bool) -> str:
    """master.cf with the listener's overrides as wanted (None: an override of ours taken away)."""
    service, service_type = mailhost.proxy_service, mailhost.proxy_service_type
    if present:
        master_cf = set_service_options(master_cf, service, service_type,
                                        {name: value for name, value in options.items() if value is not None})
    else:
        master_cf = _master_cf_without_whitelist(mailhost, master_cf, listener, options)
    if options.get(SERVICE_NAME_OPTION, "") is None:
        master_cf = remove_service_options(master_cf, service, service_type,
                                           {SERVICE_NAME_OPTION: RELAY_SMTPD_SERVICE})
    return master_cf


def _handoff(listener: Listener, main) -> str:
    name = listener.params.get(SERVICE_NAME_OPTION, main.get(SERVICE_NAME_OPTION, "smtpd"))
    return f"{main.get(SERVICE_NAME_OPTION, 'smtpd') if name == RELAY_SMTPD_SERVICE else name}/pass"


def postconf_argv(mailhost: MailHost, *args: str) -> tuple[str, ...]:
    """``postconf`` as run inside docker-mailserver's container (the live commands go in one exec)."""
    return ("postconf", "-c", mailhost.postfix_config_dir, *args)


def _hook_commands(mailhost: MailHost, main, layers) -> list[tuple[str, tuple]]:
    """docker-mailserver: the container's main.cf lists with the hook where ``layers`` wants it
    (none: taken out), as user-patches.sh makes them at start."""
    commands = []
    hooked = layers.lists if layers is not None else {}
    for name in hook_lists(main):
        current = main.get(name, "")
        value = hooked_value(current, hooked[name][1]) if name in hooked else unhooked_value(current)
        if postfix_list(value) != postfix_list(current):
            commands.append((f"postconf -e {name}", postconf_argv(mailhost, "-e", f"{name}={value}")))
    if commands and hooked:
        commands.insert(0, (f"postconf -e {HOOK}=", postconf_argv(mailhost, "-e", f"{HOOK}=")))
    elif commands:
        commands.append((f"postconf -X {HOOK}", postconf_argv(mailhost, "-X", HOOK)))
    return commands


def _relay_service_commands(mailhost: MailHost, services, relay_service: Listener | None) -> list[tuple[str, tuple]]:
    """docker-mailserver: the container's relay smtpd service made as user-patches.sh makes it at start."""
    current = services.get(f"{RELAY_SMTPD_SERVICE}/{RELAY_SMTPD_TYPE}")
    if relay_service is None:
        if current is None:
            return []
        key = current.key
        return [(f"postconf -MX {key}", postconf_argv(mailhost, "-MX", key))]
    if current is not None and current.entry() == relay_service.entry() and dict(current.params) == dict(relay_service.params):
        return []
    key = relay_service.key
    commands = [(f"postconf -M {key}", postconf_argv(mailhost, "-M", f"{key}={relay_service.entry()}"))]
    for name, value in relay_service.params.items():
        commands.append((f"postconf -P {key}/{name}", postconf_argv(mailhost, "-P", f"{key}/{name}={value}")))
    return commands


def _options_without_whitelist(mailhost: MailHost, listener: Listener, main) -> dict:
    """present=False: the access list without our table, and no cache map of ours; None drops the override."""
    ours = f"cidr:{mailhost.cidr_path}"
    options: dict[str, str | None] = {}
    current = listener.params.get(ACCESS_LIST)
    if current is not None:
        entries = [entry for entry in postfix_list(current) if entry != ours]
        base = postfix_list(main.get(ACCESS_LIST, POSTFIX_DEFAULT_ACCESS_LIST))
        options[ACCESS_LIST] = None if entries == base else ",".join(entries)
    if listener.params.get(CACHE_MAP) == mailhost.cache_map():  # named after the listener: only we set it
        options[CACHE_MAP] = None
    return options


def _master_cf_without_whitelist(mailhost: MailHost, master_cf: str, listener: Listener, options) -> str:
    for name, value in options.items():
        if value is None:
            master_cf = remove_service_options(master_cf, mailhost.proxy_service, mailhost.proxy_service_type,
                                               {name: listener.params[name]})
        elif value:
            master_cf = set_service_options(master_cf, mailhost.proxy_service, mailhost.proxy_service_type,
                                            {name: value})
    return master_cf


def plan_rspamd_exemption(mailhost: MailHost, relay_cidrs, present: bool = True) -> Plan:
    plan = Plan("rspamd_exemption")
    cidrs = cidr_strings(relay_cidrs)
    live_path = mailhost.rspamd_settings_live_path if mailhost.is_docker else None
    found = read_fact(RspamdExemption, _exemption_args(mailhost))
    if not found["rspamadm"]:
        plan.problems.append(f"rspamd: {found['error']} on {host.name}; is rspamd installed"
                             f"{' in container ' + str(mailhost.container) if mailhost.is_docker else ''}?")
        return plan
    if found["file_error"]:
        plan.problems.append(f"cannot edit {mailhost.rspamd_settings_host_path}: {found['file_error']}")
        return plan
    if found["live_error"]:
        plan.problems.append(f"cannot read {live_path} in container {mailhost.container}: {found['live_error']}")
        return plan
    current = found["file"]
    foreign = with_block(current, RSPAMD_BLOCK, None) or ""
    for rule in (RSPAMD_RULE, RSPAMD_CAP_RULE):
        if rule in foreign:
            plan.problems.append(f"{mailhost.rspamd_settings_host_path} already has a rule named {rule} "
                                 "outside the backupmx block; rename or remove it")
            return plan
    wanted = rspamd_files(mailhost, cidrs if present else None)
    contents = {mailhost.rspamd_settings_host_path: current}
    contents.update(_read_external_relay_files(mailhost, wanted, plan))
    if plan.problems:
        return plan
    # settings.conf first: the drift report reads the first change as the settings file.
    for path, (block_name, comment, block) in wanted.items():
        try:
            changed = with_block(contents[path], block_name, block, comment=comment)
        except BackupMXError as error:
            plan.problems.append(f"{path}: {error}")
            return plan
        if changed != contents[path]:
            plan.files.append(FileChange(path, contents[path], changed))
    _redo_interrupted(plan, mailhost, contents)
    new = next((c.new for c in plan.files if c.path == mailhost.rspamd_settings_host_path), current)
    live_commands = []
    if mailhost.is_docker:
        # docker-mailserver's changedetector acts on rspamd/ by itself: the file goes there
        # last, once the container's own copy is validated and rspamd reloaded.
        plan.files = [FileChange(c.path, c.old, c.new, stage_dir=mailhost.stage_dir) for c in plan.files]
    if mailhost.is_docker and found["live_file"] != new:
        # docker-mailserver copies rspamd/override.d into /etc/rspamd/override.d at
        # start; do now what the next start would do.
        if new is None:
            command = LiveCommand(f"remove {live_path}", tuple(mailhost.in_target(["rm", "-f", live_path])))
        else:
            write = 'cat >"$1.backupmx-new" && mv -f "$1.backupmx-new" "$1"'
            command = LiveCommand(f"copy the settings into {live_path}",
                                  tuple(mailhost.in_target(["sh", "-c", write, "sh", live_path], stdin=True)),
                                  stdin_from=mailhost.rspamd_settings_host_path)
        live_commands.append(command)
        plan.live = [f"{command.what} (in container {mailhost.container})"]
    _refuse_read_only(plan, mailhost)
    if plan.problems:
        return plan
    if not plan.changed:
        mode = "" if mailhost.relay_scoring == EXEMPT else f", relay scoring {mailhost.relay_scoring}"
        plan.already = (f"rspamd exemption already in {mailhost.rspamd_settings_host_path} ({len(cidrs)} networks{mode})"
                        if present else "no rspamd exemption")
        return plan
    plan.transaction = Transaction(
        label="rspamd_exemption",
        files=tuple(plan.files),
        live_files=(tuple(mailhost.in_target([live_path])),) if live_commands else (),
        live_commands=tuple(live_commands),
        rspamd_configtest=tuple(mailhost.rspamadm("configtest")),
        reloads=(tuple(mailhost.rspamd_reload_argv()),),
        settle=tuple(mailhost.changedetector_settled()) if mailhost.is_docker else (),
    )
    return plan


def _redo_interrupted(plan: Plan, mailhost: MailHost, current: dict[str, str | None]) -> None:
    """Files a cut-off transaction left (``InterruptedTransactions``) go through the transaction again.

    Its files may be swapped in, validated or not, and never reloaded: the running
    daemon may not have what the files say. Rewriting the same content runs the
    whole transaction (validate, reload, drop the copies) without changing a byte.
    """
    left = read_fact(InterruptedTransactions, _interrupted_args(mailhost), shared=True)  # both plans ask
    for path in left:
        if path in current and all(change.path != path for change in plan.files):
            plan.files.append(FileChange(path, current[path], current[path]))


def _read_external_relay_files(mailhost: MailHost, wanted: dict, plan: Plan) -> dict:
    """The external_relay mode's two files as they are now (read even in exempt mode, to take blocks out)."""
    paths = tuple(path for path in wanted if path != mailhost.rspamd_settings_host_path)
    if not paths:
        return {}
    files = read_fact(MailhostFiles, _external_relay_args(mailhost))
    contents = {}
    for path in paths:
        entry = files.get(path)
        if entry is None or entry["error"]:
            plan.problems.append(f"cannot edit {path}: {entry['error'] if entry else 'no answer'}")
        else:
            contents[path] = entry["content"]
    return contents


def plan_key(plan_label: str, mailhost: MailHost, relay_cidrs, present: bool) -> tuple:
    return ("plan", plan_label, mailhost, tuple(cidr_strings(relay_cidrs)), present)


def recall_plan(plan_label: str, mailhost: MailHost, relay_cidrs, present: bool) -> Plan | None:
    if executing_after_preparing():
        # The operation already took its plan while preparing, and execution may
        # come long after (a prompt): read the host as it is now.
        return None
    # Preparing, or executing under -y (the operation body runs only now): the plan
    # this run's assessment made moments ago, without reading the same facts again.
    # Safe to apply: the transaction refuses if a file no longer holds what the plan saw.
    return recall(plan_key(plan_label, mailhost, relay_cidrs, present))
