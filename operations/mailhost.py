"""Operations of the mail host stage (stages 3 and 4 of deploys/backupmx.py).

- ``rspamd_exemption``: the settings rule that drops SPF and DMARC scoring for the
  relay networks only (seed change 3).
- ``postscreen_whitelist``: ``postscreen_access.cidr`` and the PROXY-v2 listener's
  own ``postscreen_access_list`` and cache map (seed change 2).
- ``verify_live``: stage 4, the proof, at execution time, that both are in force.

Each change is one transaction on the mail host (``backupmx.postfix.transaction.transaction_script``):
files swapped atomically, validated before any reload, the previous files put back
byte for byte on any failure. The plan (``plan_*``) is made from facts and pure
functions, so the deploy file can show it in the gate report before anything runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from pyinfra import host, logger
from pyinfra.api import DeployError, FunctionCommand, OperationError, operation

from backupmx.core.context import executing, executing_after_preparing, recall, remember
from backupmx.core.errors import BackupMXError
from backupmx.core.relayhost import postfix_size
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, TODO
from backupmx.core.validate import IPNetwork
from backupmx.mailhost.listener import missing_listener_message, wanted_listener_options
from backupmx.mailhost.model import (
    ACCESS_LIST,
    EXEMPT,
    POSTFIX_DEFAULT_ACCESS_LIST,
    RSPAMD_BLOCK,
    RSPAMD_CAP_RULE,
    RSPAMD_RULE,
    USER_PATCHES_BLOCK,
    MailHost,
    dms_policy_conflicts,
    load_mailhost,
)
from backupmx.mailhost.proof import Proof, judge_scans, probe_addresses, scan_message, settings_rule_in_dump
from backupmx.mailhost.render import render_postscreen_access, render_user_patches_block, rspamd_files
from backupmx.postfix.blocks import with_block
from backupmx.postfix.maincf import postfix_list
from backupmx.postfix.mastercf import Listener, remove_service_options, set_service_options
from backupmx.postfix.transaction import FileChange, Transaction, unified_diff
from facts.mailhost import (
    DockerMailserverPolicies,
    InterruptedTransactions,
    MailhostFiles,
    MailhostProof,
    MailhostReads,
    PostscreenListeners,
    RspamdExemption,
    facts_args,
)
from operations.transaction import transaction_commands

# How long stage 4 waits for a reload to take effect (rspamd restarts its
# workers after the HUP; a cold start compiles its hyperscan cache first).
SETTLE_SECONDS = 60.0


@dataclass
class Plan:
    """What one operation would do on one mail host, and why not if it cannot."""

    label: str
    problems: list[str] = field(default_factory=list)
    files: list[FileChange] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # docker-mailserver: what changes in the running container
    transaction: Transaction | None = None
    already: str = ""

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


def _cidrs(relay_cidrs: Iterable[IPNetwork | str]) -> list[str]:
    return [str(cidr) for cidr in relay_cidrs]


# --- plans ----------------------------------------------------------------------

# The facts the plans read, with their arguments: one place, so that
# assess_mailhost's combined read and the plans' own reads are the same reads.


def _listeners_args(mailhost: MailHost) -> dict:
    return {"config_dir": mailhost.postfix_config_dir, **facts_args(mailhost)}


def _files_args(mailhost: MailHost) -> dict:
    second = mailhost.user_patches_host_path if mailhost.is_docker else mailhost.master_cf_path
    return {"paths": (mailhost.cidr_host_path, second)}  # on the host, not in the container


def _exemption_args(mailhost: MailHost) -> dict:
    return {"settings_path": mailhost.rspamd_settings_host_path, "rspamadm_args": mailhost.rspamadm_args,
            "live_path": mailhost.rspamd_settings_live_path if mailhost.is_docker else None, "dump": False,
            **facts_args(mailhost)}


def _external_relay_args(mailhost: MailHost) -> dict:
    """The external_relay mode's own files (native only; read in either mode, to take our blocks out)."""
    return {"paths": tuple(path for path in rspamd_files(mailhost, None)
                           if path != mailhost.rspamd_settings_host_path)}


def _interrupted_args(mailhost: MailHost) -> dict:
    return {"paths": tuple(mailhost.managed_host_paths()) + _external_relay_args(mailhost)["paths"]}


def _plan_reads(mailhost: MailHost) -> list[tuple[type, dict]]:
    reads = [(RspamdExemption, _exemption_args(mailhost)), (PostscreenListeners, _listeners_args(mailhost)),
             (MailhostFiles, _files_args(mailhost)), (InterruptedTransactions, _interrupted_args(mailhost))]
    if _external_relay_args(mailhost)["paths"]:
        reads.append((MailhostFiles, _external_relay_args(mailhost)))
    if mailhost.is_docker:
        reads.append((DockerMailserverPolicies, facts_args(mailhost)))
    return reads


# Facts read ahead in one round trip while preparing (assess_mailhost) are kept for
# the host's pass (backupmx.core.context), each taken once by the plan that asks
# for it; anything else reads the host.
_NOT_READ = object()


def _read_key(fact: type, arguments: dict) -> tuple:
    return ("fact", fact.__name__, tuple(sorted(arguments.items())))


def _read_ahead(reads: list[tuple[type, dict]]) -> None:
    if executing():
        return
    found = host.get_fact(MailhostReads, reads=tuple((fact.__name__, tuple(sorted(arguments.items())))
                                                     for fact, arguments in reads))
    if len(found) != len(reads):
        return  # incomplete answer: each plan reads its own fact, as without read-ahead
    for (fact, arguments), value in zip(reads, found):
        remember(_read_key(fact, arguments), value)


def _fact(fact: type, arguments: dict, shared: bool = False):
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
    cidrs = _cidrs(relay_cidrs)
    fargs = facts_args(mailhost)
    listeners = _fact(PostscreenListeners, _listeners_args(mailhost))
    if not listeners["postconf"]:
        plan.problems.append(f"Postfix: cannot read its configuration on {host.name} ({listeners['error']}); "
                             "is Postfix installed and mailhost.postfix_config_dir right?")
        return plan
    missing = missing_listener_message(mailhost, listeners["services"])
    if missing:
        plan.problems.append(missing)
        return plan
    if mailhost.is_docker:
        policies = _fact(DockerMailserverPolicies, fargs)
        if not policies["ok"]:
            plan.problems.append(f"docker-mailserver: {policies['error']}")
            return plan
        conflicts = dms_policy_conflicts(policies["env"], policies["restrictions"], policies["milters"])
        if conflicts and present:
            plan.problems.append("docker-mailserver judges relayed mail before rspamd: " + "; ".join(conflicts))
            return plan
    second = mailhost.user_patches_host_path if mailhost.is_docker else mailhost.master_cf_path
    files = _fact(MailhostFiles, _files_args(mailhost))
    for path in (mailhost.cidr_host_path, second):
        entry = files.get(path)
        if entry is None or entry["error"]:
            plan.problems.append(f"cannot read {path}: {entry['error'] if entry else 'no answer'}")
    if plan.problems:
        return plan
    cidr_now, second_now = files[mailhost.cidr_host_path]["content"], files[second]["content"]
    listener = listeners["services"][mailhost.service_key]
    if present:
        options = wanted_listener_options(mailhost, listeners["services"], listeners["main"])
        cidr_new = render_postscreen_access(cidrs)
    else:
        options = _options_without_whitelist(mailhost, listener, listeners["main"])
        cidr_new = None
    try:
        if mailhost.is_docker:
            block = render_user_patches_block(mailhost, options) if present else None
            # A new user-patches.sh starts with a shebang; docker-mailserver runs it with bash.
            second_new = with_block(second_now, USER_PATCHES_BLOCK, block, header="#!/bin/bash\n")
        elif present:
            second_new = set_service_options(second_now or "", mailhost.proxy_service,
                                                mailhost.proxy_service_type, options)
        else:
            second_new = _master_cf_without_whitelist(mailhost, second_now or "", listener, options)
    except BackupMXError as error:
        plan.problems.append(str(error))
        return plan
    for path, old, new in ((mailhost.cidr_host_path, cidr_now, cidr_new), (second, second_now, second_new)):
        if old != new:
            plan.files.append(FileChange(path, old, new))
    _redo_interrupted(plan, mailhost, {mailhost.cidr_host_path: cidr_now, second: second_now})
    live_commands = []
    if mailhost.is_docker:
        # The container's master.cf: what user-patches.sh sets at the next start, now.
        for option, value in options.items():
            current = listener.params.get(option)
            if value is None and current is not None:
                live_commands.append((f"postconf -PX {mailhost.service_key}/{option}",
                                      tuple(mailhost.postconf("-PX", f"{mailhost.service_key}/{option}"))))
            elif value is not None and current != value:
                live_commands.append((f"postconf -P {mailhost.service_key}/{option}={value}",
                                      tuple(mailhost.postconf("-P", f"{mailhost.service_key}/{option}={value}"))))
        plan.live = [f"{what} (in container {mailhost.container})" for what, _ in live_commands]
    if not plan.changed:
        plan.already = (f"relay whitelist already on {mailhost.service_key} ({len(cidrs)} networks)" if present
                        else f"no relay whitelist on {mailhost.service_key}")
        return plan
    probes = probe_addresses(cidrs)
    plan.transaction = Transaction(
        label=f"postscreen_whitelist {mailhost.service_key}",
        files=tuple(plan.files),
        live_files=(tuple(mailhost.in_target([mailhost.master_cf_path])),) if live_commands else (),
        live_commands=tuple(live_commands),
        postfix_check=tuple(mailhost.postfix_check()),
        probes=tuple((tuple(mailhost.postmap_query(address)), "permit") for _, address in probes.inside)
        + tuple((tuple(mailhost.postmap_query(address)), "") for address in probes.outside) if present else (),
        reloads=(tuple(mailhost.postfix_reload_argv()),),
    )
    return plan


def _options_without_whitelist(mailhost: MailHost, listener: Listener, main) -> dict:
    """present=False: the access list without our table; None drops the override."""
    ours = f"cidr:{mailhost.cidr_path}"
    current = listener.params.get(ACCESS_LIST)
    if current is None:
        return {}
    entries = [entry for entry in postfix_list(current) if entry != ours]
    base = postfix_list(main.get(ACCESS_LIST, POSTFIX_DEFAULT_ACCESS_LIST))
    return {ACCESS_LIST: None if entries == base else ",".join(entries)}


def _master_cf_without_whitelist(mailhost: MailHost, master_cf: str, listener: Listener, options) -> str:
    value = options.get(ACCESS_LIST, "")
    if value is None:
        return remove_service_options(master_cf, mailhost.proxy_service, mailhost.proxy_service_type,
                                         {ACCESS_LIST: listener.params[ACCESS_LIST]})
    if value:
        return set_service_options(master_cf, mailhost.proxy_service, mailhost.proxy_service_type,
                                      {ACCESS_LIST: value})
    return master_cf


def plan_rspamd_exemption(mailhost: MailHost, relay_cidrs, present: bool = True) -> Plan:
    plan = Plan("rspamd_exemption")
    cidrs = _cidrs(relay_cidrs)
    live_path = mailhost.rspamd_settings_live_path if mailhost.is_docker else None
    found = _fact(RspamdExemption, _exemption_args(mailhost))
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
    if mailhost.is_docker and found["live_file"] != new:
        # docker-mailserver copies rspamd/override.d into /etc/rspamd/override.d at
        # start; do now what the next start would do.
        if new is None:
            argv = mailhost.in_target(["rm", "-f", live_path])
        else:
            argv = mailhost.in_target(["cp", mailhost.rspamd_settings_mounted_path, live_path])
        live_commands.append((f"{'remove' if new is None else 'copy the settings into'} {live_path}", tuple(argv)))
        plan.live = [f"{live_commands[0][0]} (in container {mailhost.container})"]
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
    )
    return plan


def _redo_interrupted(plan: Plan, mailhost: MailHost, current: dict[str, str | None]) -> None:
    """Files a cut-off transaction left (``InterruptedTransactions``) go through the transaction again.

    Its files may be swapped in, validated or not, and never reloaded: the running
    daemon may not have what the files say. Rewriting the same content runs the
    whole transaction (validate, reload, drop the copies) without changing a byte.
    """
    left = _fact(InterruptedTransactions, _interrupted_args(mailhost), shared=True)  # both plans ask
    for path in left:
        if path in current and all(change.path != path for change in plan.files):
            plan.files.append(FileChange(path, current[path], current[path]))


def _read_external_relay_files(mailhost: MailHost, wanted: dict, plan: Plan) -> dict:
    """The external_relay mode's two files as they are now (read even in exempt mode, to take blocks out)."""
    paths = tuple(path for path in wanted if path != mailhost.rspamd_settings_host_path)
    if not paths:
        return {}
    files = _fact(MailhostFiles, _external_relay_args(mailhost))
    contents = {}
    for path in paths:
        entry = files.get(path)
        if entry is None or entry["error"]:
            plan.problems.append(f"cannot edit {path}: {entry['error'] if entry else 'no answer'}")
        else:
            contents[path] = entry["content"]
    return contents


# --- applying a plan --------------------------------------------------------------


def _fail(state, host, message):  # (state, host): pyinfra passes them to a FunctionCommand
    host.log(f"backupmx: {message}", log_func=logger.error)
    return False


def _show(plan: Plan) -> None:
    # Shown while preparing (the --dry review) and, with -y (no preparing pass),
    # once when it runs; never twice.
    if executing_after_preparing():
        return
    host.log(f"{plan.label}: {plan.summary()}", logger.info)
    for line in plan.diff():
        logger.info("    %s", line)


def apply_plan(plan: Plan):
    if plan.problems:
        if not executing():
            raise OperationError(plan.problems[0])
        yield FunctionCommand(_fail, (plan.problems[0],), {})
        return
    if not plan.changed:
        host.noop(plan.already)
        return
    _show(plan)
    yield from transaction_commands(plan.transaction, plan.label)


@operation()
def postscreen_whitelist(mailhost: MailHost, relay_cidrs, present: bool = True):
    """
    Let the backup MX provider's relays through postscreen on the PROXY-v2 listener only.

    + mailhost: the host's ``backupmx.mailhost.model.MailHost`` (``load_mailhost(host.data.mailhost)``)
    + relay_cidrs: the provider's relay networks (IPv4 and IPv6), already validated
    + present: ``False`` takes our table out of the listener's access list and removes the file

    Writes ``postscreen_access.cidr`` (``permit`` per network) and sets, on the
    listener only (a per-service override, never main.cf), ``postscreen_access_list``
    to its current list plus ``cidr:<file>`` and, unless it has its own already,
    a ``postscreen_cache_map`` of its own. native: in master.cf; docker-mailserver:
    a marked block at the end of ``user-patches.sh`` (run at every container
    start) and, now, ``postconf -P`` in the container. Refuses while
    docker-mailserver's policyd-spf or OpenDMARC would judge relayed mail first.

    Validates before reloading: ``postfix check`` (its warnings count), and
    ``postmap -q`` answers ``permit`` for an address in each relay network and
    nothing for one outside them all. Any failure restores the previous files byte
    for byte and reloads nothing.

    **Example:**

    .. code:: python

        postscreen_whitelist(
            name="Stage 3: postscreen whitelist on the PROXY-v2 listener",
            mailhost=load_mailhost(host.data.mailhost),
            relay_cidrs=settings.relay_cidrs,
        )
    """
    plan = _recall("postscreen_whitelist", mailhost, relay_cidrs, present)
    yield from apply_plan(plan or plan_postscreen_whitelist(mailhost, relay_cidrs, present))


@operation()
def rspamd_exemption(mailhost: MailHost, relay_cidrs, present: bool = True):
    """
    Exempt mail from the relay networks from rspamd's SPF and DMARC scoring, nothing else.

    + mailhost: the host's ``backupmx.mailhost.model.MailHost``
    + relay_cidrs: the provider's relay networks
    + present: ``False`` removes the rule (and the file, if it held nothing else)

    A settings rule ``backupmx_relay_exempt { priority = high; ip = [...]; apply {
    groups_disabled = ["spf", "dmarc"]; } }`` in a marked block of
    ``local.d/settings.conf`` (native) or the mounted ``rspamd/override.d/settings.conf``
    (docker-mailserver, also copied into the running container). Other rules in
    that file are kept byte for byte. Content, antivirus, Bayes and DKIM checks
    stay active. Validated with ``rspamadm configtest`` (any new output counts)
    before rspamd is reloaded; on failure the previous file is restored.

    ``mailhost.relay_scoring: external_relay`` (native only) writes instead a rule
    capping the relay networks' action (``reject = null``) in the same block, plus
    marked blocks in ``local.d/external_relay.conf`` (a ``count`` rule taking the
    sending address from the relay's own Received header) and ``local.d/rspamd.lua``
    (the condition that limits that rule to relay addresses). The mode is switched
    in one transaction over the three files (docs/mailhost.md, "Relay scoring").

    **Example:**

    .. code:: python

        rspamd_exemption(
            name="Stage 3: rspamd SPF/DMARC exemption for the relays",
            mailhost=load_mailhost(host.data.mailhost),
            relay_cidrs=settings.relay_cidrs,
        )
    """
    plan = _recall("rspamd_exemption", mailhost, relay_cidrs, present)
    yield from apply_plan(plan or plan_rspamd_exemption(mailhost, relay_cidrs, present))


# --- stage 4: proof ---------------------------------------------------------------


def prove_live(mailhost: MailHost, relay_cidrs, domain: str, dump: bool = True, target=None) -> Proof:
    """Read the mail host again and check the whitelist and the exemption are in force.

    - the CIDR file permits exactly the relay networks;
    - postmap: an address in each relay network answers ``permit``, one outside none;
    - ``postconf -P``: the access list with our table is on the PROXY-v2 listener and
      on no other service, nor in main.cf;
    - the rspamd settings file holds the rendered rule and ``rspamadm configdump``
      shows it;
    - rspamc through the controller: a message from ``postmaster@domain`` claimed
      from a relay address has no R_SPF_*/DMARC_* symbol, from an outside address it
      has R_SPF_* (the running rspamd has the rule); with relay scoring
      ``external_relay``, ``judge_scans`` checks instead that the relay's Received
      header is taken and scored, and the action is not reject;
    - an SMTP session through the listener claiming each relay address and talking
      before the greeting reaches RCPT 250 (the running postscreen has the table).
    """
    on = host if target is None else target
    cidrs = _cidrs(relay_cidrs)
    probes = probe_addresses(cidrs)
    fargs = facts_args(mailhost)
    proof = Proof(True)
    relay_ip, outside_ip = probes.inside[0][1], probes.outside[0]
    sources = tuple(address for _, address in probes.inside)
    # Every read of the proof in one SSH round trip, run concurrently on the host.
    read = on.get_fact(MailhostProof, cidr_host_path=mailhost.cidr_host_path,
                       config_dir=mailhost.postfix_config_dir, cidr_path=mailhost.cidr_path,
                       addresses=probes.addresses, settings_path=mailhost.rspamd_settings_host_path,
                       rspamadm_args=mailhost.rspamadm_args,
                       live_path=mailhost.rspamd_settings_live_path if mailhost.is_docker else None, dump=dump,
                       controller=mailhost.rspamd_controller, ips=(relay_ip, outside_ip),
                       mail_from=f"postmaster@{domain}", message=scan_message(mailhost, domain, outside_ip),
                       listener=mailhost.smtp_probe or None, sources=sources, rcpt=f"postmaster@{domain}", **fargs)

    table = read["table"]
    if table is None or table["error"]:
        proof.add("cidr file", False, f"{mailhost.cidr_host_path}: {table['error'] if table else 'absent'}")
    else:
        same = sorted(table["networks"]) == sorted(cidrs) and not table["invalid"]
        proof.add("cidr file", same, f"{len(cidrs)} networks permitted" if same else
                  f"{mailhost.cidr_host_path} permits {', '.join(table['networks']) or 'nothing'}"
                  f"{'; unreadable lines: ' + ', '.join(table['invalid']) if table['invalid'] else ''}")

    found = read["probes"]
    if not found["postmap"]:
        proof.add("postmap", False, found["error"])
    else:
        bad = []
        for _, address in probes.inside:
            answer = found["answers"].get(address, {})
            if answer.get("answer") != "permit" or answer.get("error"):
                bad.append(f"{address} got {answer.get('answer')!r} {answer.get('error') or ''}".strip())
        for address in probes.outside:
            answer = found["answers"].get(address, {})
            if answer.get("answer") or answer.get("error"):
                bad.append(f"outside {address} got {answer.get('answer')!r} {answer.get('error') or ''}".strip())
        proof.add("postmap", not bad, "; ".join(bad) if bad else
                  f"{len(probes.inside)} relay addresses permit, outside {', '.join(probes.outside)} no answer")

    listeners = read["listeners"]
    ours = f"cidr:{mailhost.cidr_path}"
    if not listeners["postconf"]:
        proof.add("postconf", False, listeners["error"])
    else:
        services = listeners["services"]
        listener = services.get(mailhost.service_key)
        value = listener.params.get(ACCESS_LIST, "") if listener else ""
        elsewhere = [key for key, service in services.items() if key != mailhost.service_key
                     and ours in postfix_list(service.params.get(ACCESS_LIST, ""))]
        if ours in postfix_list(listeners["main"].get(ACCESS_LIST, "")):
            elsewhere.append("main.cf")
        ok = listener is not None and ours in postfix_list(value) and not elsewhere
        if ok:
            detail = f"{ours} on {mailhost.service_key} only"
        else:
            detail = f"{mailhost.service_key}/{ACCESS_LIST} = {value or '(not set)'}"
            if elsewhere:
                detail += f"; also on {', '.join(elsewhere)} (must be the PROXY-v2 listener only)"
        proof.add("postconf -P", ok, detail)

    exemption = read["exemption"]
    wanted_block = rspamd_files(mailhost, cidrs)[mailhost.rspamd_settings_host_path][2]
    block_ok = exemption["block"] == wanted_block
    if mailhost.is_docker:
        block_ok = block_ok and exemption["live_file"] == exemption["file"]
    proof.add("rspamd settings", block_ok, "rule in place" if block_ok else f"{mailhost.rspamd_settings_host_path} does not hold the rendered rule"
              f"{' (or the container copy differs)' if mailhost.is_docker else ''}")
    if dump:
        rules = exemption["rules"] if exemption["rspamadm"] else {}
        dump_ok, rule_name = settings_rule_in_dump(mailhost, rules, cidrs)
        proof.add("configdump", dump_ok, f"{rule_name} for {len(cidrs)} networks" if dump_ok
                  else f"configdump does not show {rule_name} as rendered ({exemption['error'] or 'rule missing'})")

    scan = read["scan"]
    if not scan["rspamc"]:
        proof.add("rspamc", False, "rspamc not found on the mail host")
    else:
        relay, outside = scan["results"].get(relay_ip, {}), scan["results"].get(outside_ip, {})
        if relay.get("symbols") is None or outside.get("symbols") is None:
            proof.add("rspamc", False, relay.get("error") or outside.get("error") or "no scan result")
        else:
            # What the scans must show depends on the relay scoring mode.
            proof.add("rspamc", *judge_scans(mailhost, relay_ip, outside_ip, relay, outside))

    if mailhost.smtp_probe:
        session = read["pregreet"]
        if not session["python"]:
            proof.add("pregreet", False, "python3 not found on the mail host (set mailhost.smtp_probe: false to skip)")
        else:
            bad = [f"{source}: {result.get('text') or result.get('error')}"
                   for source, result in session["results"].items() if result.get("code") != 250]
            missing = [source for source in sources if source not in session["results"]]
            bad += [f"{source}: no answer" for source in missing]
            proof.add("pregreet", not bad, "; ".join(bad) if bad else
                      f"{len(sources)} relay addresses talking early via {mailhost.smtp_probe}: RCPT 250")
    return proof


# Checks whose failure may only mean a reload is still taking effect.
_SETTLING = {"rspamc", "pregreet"}


def prove_live_settled(mailhost: MailHost, relay_cidrs, domain: str, timeout: float = SETTLE_SECONDS,
                       target=None) -> Proof:
    """``prove_live``, again while only the running daemons lag behind the files."""
    return prove_settled(lambda first: prove_live(mailhost, relay_cidrs, domain, dump=first, target=target),
                         _SETTLING, timeout)


def prove_settled(prove: Callable[[bool], Proof], settling: set[str], timeout: float) -> Proof:
    """``prove(True)``, then ``prove(False)`` once a second while every failing check is in
    ``settling`` (a reload still taking effect), until ``timeout``."""
    deadline = time.monotonic() + timeout
    proof = prove(True)
    while not proof.live and time.monotonic() < deadline:
        if not {name for name, ok, _ in proof.checks if not ok} <= settling:
            break
        time.sleep(1.0)
        proof = prove(False)
    return proof


def run_proof(host, prove: Callable[[], Proof], record, check: str, proven: str, failed: str,
              next_step: str) -> bool:
    """A proof at execution, for the ordering guard: ``record``ed, logged with its time, False if not live."""
    started = time.monotonic()
    try:
        proof = prove()
    except BackupMXError as error:
        proof = Proof(False, [(check, False, str(error))])
    evidence = proof.evidence()
    if record is not None:
        record(host.name, proof.live, evidence)
    took = f" ({time.monotonic() - started:.1f}s)"
    if proof.live:
        host.log(f"{proven} {evidence}{took}", logger.info)
        return True
    host.log(f"{failed}: {evidence}{took}; the DNS stage will not run; {next_step}", log_func=logger.error)
    return False


def _verify(state, host, mailhost, relay_cidrs, domain, record, timeout):  # (state, host): pyinfra passes them to a FunctionCommand
    return run_proof(host, lambda: prove_live_settled(mailhost, relay_cidrs, domain, timeout, target=host), record,
                     "stage 4", "stage 4: whitelist and exemption proven", "backupmx: stage 4",
                     "check the services and re-run")


@operation(is_idempotent=False)
def verify_live(mailhost: MailHost, relay_cidrs, domain: str,
                record: Callable[[str, bool, str], None], timeout: float = SETTLE_SECONDS):
    """
    Stage 4: prove, when it runs, that the whitelist and the exemption are in force.

    + mailhost: the host's ``backupmx.mailhost.model.MailHost``
    + relay_cidrs: the provider's relay networks
    + domain: the protected domain (the rspamc and SMTP probes use its postmaster)
    + record: called as ``record(host_name, live, evidence)`` (``Run.record_mailhost_proof``)
    + timeout: seconds to wait for reloads to take effect

    Runs the checks of ``prove_live`` at execution time, after stage 3. Not live:
    the operation fails and the host stops, so nothing later (the DNS stage) runs
    for it. Under ``--dry`` it shows as a pending check.

    **Example:**

    .. code:: python

        verify_live(
            name="Stage 4: prove the whitelist and exemption are live",
            mailhost=mailhost,
            relay_cidrs=settings.relay_cidrs,
            domain="example.org",
            record=run.record_mailhost_proof,
        )
    """
    yield FunctionCommand(_verify, (mailhost, tuple(_cidrs(relay_cidrs)), domain, record, timeout), {})


# --- the stage as a whole, read-only ------------------------------------------------


@dataclass
class Assessment:
    """Stage 3 and 4 of one mail host as seen while preparing."""

    plans: list[Plan]
    proof: Proof | None = None  # made while preparing when nothing is left to change
    message_size_limit: int | None = None  # Postfix's, as read with the plans' facts (None: not read)

    @property
    def problems(self) -> list[str]:
        return [problem for plan in self.plans for problem in plan.problems]

    @property
    def changed(self) -> bool:
        return any(plan.changed for plan in self.plans)


def assess_mailhost(mailhost: MailHost, relay_cidrs, domain: str) -> Assessment:
    """Plans of both operations; if neither would change anything, the proof too (read-only).

    The plans are kept for this host and preparing pass, so the operations called
    next reuse them instead of reading the same facts again.
    """
    # The facts both plans read, in one SSH round trip instead of three (or four).
    _read_ahead(_plan_reads(mailhost))
    listeners = _fact(PostscreenListeners, _listeners_args(mailhost), shared=True)  # the whitelist plan's too
    plans = [plan_rspamd_exemption(mailhost, relay_cidrs), plan_postscreen_whitelist(mailhost, relay_cidrs)]
    for plan in plans:
        remember(_plan_key(plan.label, mailhost, relay_cidrs, True), plan)
    assessment = Assessment(plans)
    if listeners["postconf"]:
        assessment.message_size_limit = postfix_size(listeners["main"].get("message_size_limit"))
    if not assessment.problems and not assessment.changed:
        assessment.proof = prove_live(mailhost, relay_cidrs, domain)
    return assessment


def is_mailhost(target) -> bool:
    """A host of the inventory's ``mailhosts`` group, or any host with ``mailhost`` data."""
    return "mailhosts" in (target.groups or []) or target.data.get("mailhost") is not None


def mailhost_settings(target) -> MailHost:
    """Stage 0 for one mail host: its ``mailhost`` data validated, or one ``DeployError`` line."""
    try:
        return load_mailhost(target.data.get("mailhost"))
    except BackupMXError as error:
        raise DeployError(f"{target.name}: {error}") from None


def report_mailhost(run, host_name: str, assessment: Assessment) -> None:
    """Rows 3 and 4 of the gate report for one mail host."""
    rows = []
    if assessment.problems:
        rows.append(("3", TITLE_3, FAIL, f"{host_name}: {assessment.problems[0]}",
                     "fix the mail host or its `mailhost` inventory data (docs/mailhost.md), then review with --dry"))
        rows.append(("4", TITLE_4, SKIP, f"{host_name}: not checked, stage 3 cannot run", None))
    elif assessment.changed:
        summary = "; ".join(f"{plan.label}: {plan.summary()}" for plan in assessment.plans if plan.changed)
        rows.append(("3", TITLE_3, CHANGE, f"{host_name}: {summary}", None))
        rows.append(("4", TITLE_4, TODO, f"{host_name}: proven at execution, after stage 3 (stage 5 waits for it)",
                     None))
    else:
        rows.append(("3", TITLE_3, PASS, f"{host_name}: " + "; ".join(plan.already for plan in assessment.plans), None))
        proof = assessment.proof
        rows.append(("4", TITLE_4, PASS if proof.live else FAIL, f"{host_name}: {proof.evidence()}",
                     None if proof.live else "the files are right but a running daemon does not follow them: "
                     "reload Postfix and rspamd on the mail host, then re-run"))
    for key, title, status, evidence, next_step in rows:
        run.report.add(key, title, status, evidence, next_step)
    run.primary_message_sizes[host_name] = assessment.message_size_limit


TITLE_3 = "mail host: whitelist + exemption"
TITLE_4 = "verify live on every mail host"


def _plan_key(plan_label: str, mailhost: MailHost, relay_cidrs, present: bool) -> tuple:
    return ("plan", plan_label, mailhost, tuple(_cidrs(relay_cidrs)), present)


def _recall(plan_label: str, mailhost: MailHost, relay_cidrs, present: bool) -> Plan | None:
    if executing_after_preparing():
        # The operation already took its plan while preparing, and execution may
        # come long after (a prompt): read the host as it is now.
        return None
    # Preparing, or executing under -y (the operation body runs only now): the plan
    # this run's assessment made moments ago, without reading the same facts again.
    # Safe to apply: the transaction refuses if a file no longer holds what the plan saw.
    return recall(_plan_key(plan_label, mailhost, relay_cidrs, present))
