"""Operations of the self-hosted relay (provider ``selfhosted``, docs/selfhosted-relay.md).

- ``relay_config``: make a Postfix host a store-and-forward backup MX for the domains
  (catch-all, primary only with TLS required, 30-day queue, postscreen that only
  defers, not an open relay), or take that away again (``present=False``).
- ``verify_relay``: the proof, at execution, over real SMTP on the relay host.
- ``assess_relayhost``: read-only, while preparing: the plan, the proof when nothing
  is left to change, and the gate rows G1, G2 and G4 for this relay.

A change is one transaction on the relay host (``backupmx.postfix.transaction.transaction_script``):
files swapped atomically, ``postfix check`` must not print anything new, the previous
files are put back byte for byte on any failure, and only then Postfix reloads.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pyinfra import host
from pyinfra.api import FunctionCommand, operation

from backupmx.core.context import deploy_error, recall, remember
from backupmx.core.errors import BackupMXError
from backupmx.core.pyinfra_glue import executing_after_preparing
from backupmx.core.relayhost import RelayHost, load_relayhost, postfix_size
from backupmx.core.report import CHANGE, FAIL, PASS, TODO, Check
from backupmx.mailhost.proof import Proof
from backupmx.postfix.apply import apply_host_plan
from backupmx.postfix.hostplan import HostPlan
from backupmx.postfix.maincf import postfix_list
from backupmx.postfix.relay_proof import judge_smtp
from backupmx.postfix.transaction import FileChange, Transaction
from backupmx.providers.relayhost import (
    check_domains,
    main_settings,
    render_tls_policy,
    setting_mismatches,
    soft_only_problems,
    wanted_files,
)
from facts.relayhost import RelayFiles, RelayPostconf, RelayQueue, RelaySmtpProof
from operations.mailhost_proof import prove_settled, run_proof

# How long verify_relay waits for a reload to take effect (postscreen restarts).
SETTLE_SECONDS = 30.0


# --- the plan -------------------------------------------------------------------


def plan_relay_config(relay: RelayHost, domains: Sequence[str], present: bool = True, postfix=None) -> HostPlan:
    """What ``relay_config`` would change; ``postfix``: the ``RelayPostconf`` fact if already read."""
    plan = HostPlan("relay_config")
    try:
        domains = check_domains(domains)
    except BackupMXError as error:
        plan.problems.append(str(error))
        return plan
    postfix = postfix or host.get_fact(RelayPostconf, config_dir=relay.postfix_config_dir, names=())
    if not postfix["postconf"]:
        plan.problems.append(f"Postfix on {host.name}: {postfix['error']}; is relayhost.postfix_config_dir right?")
        return plan
    paths = tuple(relay.managed_paths())
    files = host.get_fact(RelayFiles, paths=paths)
    for path in paths:
        entry = files.get(path)
        if entry is None or entry["error"]:
            plan.problems.append(f"cannot read {path} on {host.name}: {entry['error'] if entry else 'no answer'}")
    if plan.problems:
        return plan
    current = {path: files[path]["content"] for path in paths}
    try:
        wanted = wanted_files(relay, domains, current[relay.main_cf_path], current[relay.master_cf_path], present)
    except BackupMXError as error:
        plan.problems.append(str(error))
        return plan
    plan.files = [FileChange(path, current[path], wanted[path]) for path in paths if current[path] != wanted[path]]
    if not plan.changed:
        plan.already = (f"relay already configured for {', '.join(domains)} (to {relay.nexthop})" if present
                        else "no backupmx relay configuration")
        return plan
    plan.transaction = Transaction(
        label=f"relay_config {relay.hostname}",
        files=tuple(plan.files),
        postfix_check=tuple(relay.postfix_check()),
        reloads=(tuple(relay.postfix_reload_argv()),),
    )
    return plan


@operation()
def relay_config(relay: RelayHost, domains: Sequence[str], present: bool = True):
    """
    Make this Postfix host a store-and-forward backup MX for ``domains``.

    + relay: the host's ``backupmx.core.relayhost.RelayHost`` (``load_relayhost(host.data.relayhost)``)
    + domains: the protected domains (every recipient of each is accepted)
    + present: ``False`` gives back the configuration found before (turned-off lines
      on again, our blocks and the TLS policy file gone)

    main.cf gets a marked block: ``relay_domains`` (catch-all: no
    ``relay_recipient_maps``), ``relay_transport = smtp:[primary]:port`` (the primary
    only, no MX lookup), ``smtp_tls_policy_maps`` requiring TLS to it,
    ``maximal_queue_lifetime`` / ``bounce_queue_lifetime``, ``mynetworks`` empty and
    ``smtpd_relay_restrictions = reject_unauth_destination`` (not an open relay,
    loopback included), postscreen pregreet/DNSBL set to ``enforce``. master.cf gets
    postscreen on the listener with ``-o soft_bounce=yes``, so postscreen only ever
    answers 4xx. Settings and services replaced elsewhere are kept, commented with
    ``#backupmx-off:``. One transaction: ``postfix check`` must print nothing new,
    else the previous files are restored byte for byte and nothing is reloaded.

    **Example:**

    .. code:: python

        relay_config(
            name="Relay: store-and-forward backup MX",
            relay=load_relayhost(host.data.relayhost),
            domains=["example.org"],
        )
    """
    plan = recall_relay_plan(relay, domains, present) or plan_relay_config(relay, domains, present)
    yield from apply_host_plan(plan)


# --- the proof ------------------------------------------------------------------


def prove_relay(relay: RelayHost, domains: Sequence[str], target=None) -> Proof:
    """Read the relay again and talk SMTP to it (from the relay host itself).

    - ``postconf``: every managed setting is in force with the wanted value;
    - ``postconf -M/-P``: the listener runs postscreen with ``soft_bounce=yes`` and no
      postscreen action is ``drop`` (which answers 521);
    - the TLS policy table holds the primary with TLS required;
    - SMTP: a random recipient of each domain gets RCPT 250, one of an outside
      domain 5xx (not an open relay), a client talking before the greeting 4xx.
    """
    on = host if target is None else target
    domains = check_domains(domains)
    proof = Proof(True)
    wanted = main_settings(relay, domains)
    found = on.get_fact(RelayPostconf, config_dir=relay.postfix_config_dir, names=tuple(wanted))
    if not found["postconf"]:
        proof.add("postconf", False, found["error"])
        return proof
    bad = setting_mismatches(wanted, found["settings"])
    proof.add("postconf", not bad, "; ".join(bad) if bad else
              f"{len(wanted)} settings in force (queue {relay.queue_lifetime}, bounces {relay.bounce_lifetime}, "
              f"to {relay.nexthop})")
    listener = found["services"].get(f"{relay.listen_service}/inet")
    params = listener.params if listener is not None and listener.command == "postscreen" else None
    soft = soft_only_problems(found["settings"], params)
    proof.add("postscreen 4xx only", not soft, "; ".join(soft) if soft else
              f"{relay.listen_service}/inet: postscreen, soft_bounce=yes, no drop action")
    policy = on.get_fact(RelayFiles, paths=(relay.tls_policy_path,)).get(relay.tls_policy_path) or {}
    policy_ok = policy.get("content") == render_tls_policy(relay)
    proof.add("tls to primary", policy_ok, f"{relay.nexthop} {relay.primary_tls}" if policy_ok else
              f"{relay.tls_policy_path}: {policy.get('error') or 'not as rendered'}")
    listener_at = "{}:{}".format(*relay.probe_endpoint)
    session = on.get_fact(RelaySmtpProof, listener=listener_at, domains=domains)
    if not session["python"] or not session["results"]:
        proof.add("smtp", False, f"no SMTP session with {listener_at}: {session['error'] or 'no answer'}")
    else:
        for name, ok, detail in judge_smtp(session["results"], domains):
            proof.add(name, ok, detail)
    return proof


_SETTLING = dict.fromkeys(("catch-all", "not an open relay", "pregreet defers", "smtp"), SETTLE_SECONDS)


def prove_relay_settled(relay: RelayHost, domains: Sequence[str], timeout: float = SETTLE_SECONDS,
                        target=None) -> Proof:
    """``prove_relay``, again while only the SMTP answers lag behind a reload."""
    return prove_settled(lambda first: prove_relay(relay, domains, target=target), _SETTLING, timeout,
                         getattr(target, "log", None))


def _verify(state, host, relay, domains, record, timeout):  # (state, host): pyinfra passes them
    return run_proof(host, lambda: prove_relay_settled(relay, domains, timeout, target=host), record, "relay",
                     "relay: proven", f"backupmx: relay {relay.hostname}", "check the relay's Postfix and re-run")


@operation(is_idempotent=False)
def verify_relay(relay: RelayHost, domains: Sequence[str],
                 record: Callable[[str, bool, str], None] | None = None, timeout: float = SETTLE_SECONDS):
    """
    Prove, when it runs (after ``relay_config``), that the relay works as a backup MX.

    + relay: the host's ``backupmx.core.relayhost.RelayHost``
    + domains: the protected domains
    + record: called as ``record(host_name, live, evidence)`` (e.g. ``run.relay_proofs.record``)
    + timeout: seconds to wait for a reload to take effect

    Runs ``prove_relay`` on the relay host: settings in force, postscreen 4xx-only,
    TLS required to the primary, and over SMTP: catch-all RCPT 250, an outside
    domain refused (5xx), a pregreeting client deferred (4xx). Not proven: the
    operation fails and the host stops.

    **Example:**

    .. code:: python

        verify_relay(
            name="Relay: prove catch-all, no open relay, 4xx only",
            relay=relay,
            domains=["example.org"],
            record=run.relay_proofs.record,
        )
    """
    yield FunctionCommand(_verify, (relay, tuple(domains), record, timeout), {})


# --- read-only assessment and gate rows ----------------------------------------------


@dataclass
class RelayAssessment:
    """One relay host as seen while preparing."""

    plan: HostPlan
    proof: Proof | None = None  # made while preparing when nothing is left to change
    rows: list[Check] = field(default_factory=list)
    message_size_limit: int | None = None  # what Postfix's will be once relay_config ran (None: not read)

    @property
    def problems(self) -> list[str]:
        return self.plan.problems

    @property
    def changed(self) -> bool:
        return self.plan.changed


TITLE_G1 = "relay listening, catch-all, not open"
TITLE_G2 = "relay defers (4xx), queue lifetime"
TITLE_G4 = "relay addresses == relay CIDRs"


def assess_relayhost(relay: RelayHost, domains: Sequence[str], relay_cidrs=None,
                     rolled_back: dict[str, dict] | None = None) -> RelayAssessment:
    """The plan of ``relay_config``; if it would change nothing, the proof; and rows G1, G2, G4.

    ``rolled_back``: per domain, the change-log entry of this tool's rollback that
    took it out of ``relay_domains`` (``backupmx.core.audit.disabled_by_rollback``);
    G1 says when ``relay_config`` puts such a domain back.

    The plan is kept for this host and preparing pass, so ``relay_config`` called
    next reuses it instead of reading the same facts again.
    """
    # One read for the plan and for gate G2's message size (backupmx.gates.message_size).
    postfix = host.get_fact(RelayPostconf, config_dir=relay.postfix_config_dir,
                            names=("message_size_limit", "relay_domains"))
    plan = plan_relay_config(relay, domains, postfix=postfix)
    remember(_plan_key(relay, domains, True), plan)
    assessment = RelayAssessment(plan)
    assessment.message_size_limit = relay.message_size_limit
    if assessment.message_size_limit is None:
        assessment.message_size_limit = postfix_size(postfix["settings"].get("message_size_limit"))
    if not plan.problems and not plan.changed:
        assessment.proof = prove_relay(relay, domains)
    name = host.name
    rows = assessment.rows
    if plan.problems:
        rows.append(Check("G1", TITLE_G1, FAIL, f"{name}: {plan.problems[0]}",
                          "fix the relay host or its `relayhost` data (docs/selfhosted-relay.md), then review with --dry"))
        rows.append(Check("G2", TITLE_G2, FAIL, f"{name}: not checked, the relay cannot be configured"))
    elif plan.changed:
        rows.append(Check("G1", TITLE_G1, CHANGE, f"{name}: relay_config will {plan.summary()}; "
                          "proven at execution by verify_relay" + _way_back(postfix, domains, rolled_back)))
        rows.append(Check("G2", TITLE_G2, TODO, f"{name}: queue {relay.queue_lifetime}, bounces "
                          f"{relay.bounce_lifetime}; 4xx proven at execution by verify_relay"))
    else:
        checks = {check: (ok, detail) for check, ok, detail in assessment.proof.checks}
        g1 = [checks.get(key) or checks.get("smtp") or (False, "no SMTP answer") for key in ("catch-all", "not an open relay")]
        g1_ok = all(ok for ok, _ in g1)
        rows.append(Check("G1", TITLE_G1, PASS if g1_ok else FAIL, f"{name}: " + "; ".join(detail for _, detail in g1),
                          None if g1_ok else "the files are right but the running Postfix does not follow them: "
                          "reload Postfix on the relay, then re-run"))
        g2 = [checks.get(key) or checks.get("smtp") or (False, f"{key}: not checked")
              for key in ("pregreet defers", "postscreen 4xx only", "postconf")]
        g2_ok = all(ok for ok, _ in g2)
        rows.append(Check("G2", TITLE_G2, PASS if g2_ok else FAIL, f"{name}: " + "; ".join(detail for _, detail in g2),
                          None if g2_ok else "re-run relay_config (it restores the settings), then review with --dry"))
    rows.append(addresses_row(relay, relay_cidrs))
    return assessment


def _way_back(postfix: dict, domains: Sequence[str], rolled_back: dict[str, dict] | None) -> str:
    """G1's note when relay_config puts back domains this tool's rollback took out of relay_domains."""
    current = set(postfix_list(postfix["settings"].get("relay_domains", "") or ""))
    back = [(domain, entry) for domain, entry in (rolled_back or {}).items() if domain not in current]
    if not back or not postfix["settings"]:
        return ""
    return "; " + "; ".join(f"enables {domain} again (back in relay_domains, its rollback transport route "
                            f"dropped): disabled by this tool's rollback ({entry.get('when', '?')}, change log)"
                            for domain, entry in back)


def addresses_row(relay: RelayHost, relay_cidrs) -> Check:
    """G4: the relay's public addresses, as networks, are exactly the run's relay CIDRs."""
    ours = sorted(str(network) for network in relay.relay_cidrs)
    if relay_cidrs is None:
        return Check("G4", TITLE_G4, PASS, f"{host.name}: relay CIDRs are {', '.join(ours)} (from relayhost data)")
    theirs = sorted(str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs)
    if theirs == ours:
        return Check("G4", TITLE_G4, PASS, f"{host.name}: {', '.join(ours)}")
    return Check("G4", TITLE_G4, FAIL, f"{host.name}: relay sends from {', '.join(ours)}, the run whitelists "
                 f"{', '.join(theirs) or 'nothing'}",
                 "make relay_cidrs the relay's public_addresses (/32, /128), then review with --dry")


def queue(relay: RelayHost, target=None) -> dict:
    """The relay's queue now (``postqueue -j``): {"ok", "error", "messages"}."""
    return (host if target is None else target).get_fact(RelayQueue, config_dir=relay.postfix_config_dir)


def is_relay(target) -> bool:
    """A host of the inventory's ``relay`` group, or any host with ``relayhost`` data."""
    return "relay" in (target.groups or []) or target.data.get("relayhost") is not None


def relay_settings(target) -> RelayHost:
    """Stage 0 for one relay host: its ``relayhost`` data validated, or one ``DeployError`` line."""
    try:
        return load_relayhost(target.data.get("relayhost"))
    except BackupMXError as error:
        raise deploy_error(error, target.name) from None


def recall_relay_plan(relay: RelayHost, domains, present: bool) -> HostPlan | None:
    """The plan ``assess_relayhost`` made for this host in this run, when it may be applied as is.

    As the mail host's plans (``operations.mailhost_state.recall_plan``): executing after
    a preparing pass (execution may come long after, a prompt), None: read the host as
    it is now. While preparing, or executing under ``-y`` (the body runs only now), the
    plan made moments ago, without reading the same facts again. Safe to apply: the
    transaction refuses if a file no longer holds what the plan saw.
    """
    if executing_after_preparing():
        return None
    key = _plan_key(relay, domains, present)
    return recall(key)


def _plan_key(relay: RelayHost, domains, present: bool) -> tuple:
    return ("relay_config", relay, tuple(str(domain).lower() for domain in domains), present)
