"""A mail host's state as stage 3's plans read it (``backupmx.mailhost.plan.MailhostState``): every fact
in one SSH round trip, and the plans a preparing pass made, kept for the operations it calls next.
"""

from __future__ import annotations

from pyinfra import host

from backupmx.core.context import recall
from backupmx.core.pyinfra_glue import executing_after_preparing
from backupmx.core.validate import cidr_strings
from backupmx.mailhost.model import MailHost
from backupmx.mailhost.plan import MailhostState, plan_exemption, plan_whitelist
from backupmx.mailhost.render import rspamd_files
from backupmx.postfix.hostplan import HostPlan
from facts.mailhost import (
    DockerMailserverPolicies,
    InterruptedTransactions,
    MailhostFiles,
    PostscreenListeners,
    RspamdExemption,
    facts_args,
)
from facts.mailhost_proof import MailhostProof
from facts.mailhost_reads import MailhostReads


def listeners_args(mailhost: MailHost) -> dict:
    return {"config_dir": mailhost.postfix_config_dir, **facts_args(mailhost)}


def state_reads(mailhost: MailHost) -> dict[str, tuple[type, dict]]:
    """``MailhostState``'s fields, each as the fact (and its arguments) that reads it."""
    # The external_relay mode's own files (native): read in either mode, to take our blocks out.
    external = tuple(path for path in rspamd_files(mailhost, None) if path != mailhost.rspamd_settings_host_path)
    reads = {
        "listeners": (PostscreenListeners, listeners_args(mailhost)),
        "postfix_files": (MailhostFiles, {"paths": mailhost.postfix_host_paths()}),  # on the host
        "exemption": (RspamdExemption, {
            "settings_path": mailhost.rspamd_settings_host_path, "rspamadm_args": mailhost.rspamadm_args,
            "live_path": mailhost.rspamd_settings_live_path if mailhost.is_docker else None, "dump": False,
            **facts_args(mailhost)}),
        "rspamd_files": (MailhostFiles, {"paths": external}),
        "interrupted": (InterruptedTransactions, {"paths": tuple(mailhost.managed_host_paths()) + external,
                                                  "stage_dir": mailhost.stage_dir}),
    }
    if mailhost.is_docker:
        reads["policies"] = (DockerMailserverPolicies, {**facts_args(mailhost), "config_dir": mailhost.config_dir})
    return reads


def read_state(mailhost: MailHost, proof: dict | None = None, target=None) -> tuple[MailhostState, dict | None]:
    """Every fact of the state in one SSH round trip, run concurrently on the host; with ``proof``
    (``backupmx.mailhost.proof.proof_request``), stage 4's reads too, in the same round trip:
    (the state, what the proof read, or None). ``target``: another host than the current one."""
    on = host if target is None else target
    reads = state_reads(mailhost)
    if proof is not None:
        reads["proof"] = (MailhostProof, {**proof, **facts_args(mailhost)})
    found = on.get_fact(MailhostReads, reads=tuple((fact.__name__, tuple(sorted(arguments.items())))
                                                   for fact, arguments in reads.values()))
    if len(found) != len(reads):  # an incomplete answer: each fact on its own
        found = [on.get_fact(fact, **arguments) for fact, arguments in reads.values()]
    values = dict(zip(reads, found))
    proof_read = values.pop("proof", None)
    return MailhostState(**values), proof_read


def plan_key(plan_label: str, mailhost: MailHost, relay_cidrs, present: bool) -> tuple:
    return ("plan", plan_label, mailhost, tuple(cidr_strings(relay_cidrs)), present)


def recall_plan(plan_label: str, mailhost: MailHost, relay_cidrs, present: bool) -> HostPlan | None:
    if executing_after_preparing():
        # The operation already took its plan while preparing, and execution may
        # come long after (a prompt): read the host as it is now.
        return None
    # Preparing, or executing under -y (the operation body runs only now): the plan
    # this run's assessment made moments ago, without reading the same facts again.
    # Safe to apply: the transaction refuses if a file no longer holds what the plan saw.
    key = plan_key(plan_label, mailhost, relay_cidrs, present)
    return recall(key)


def whitelist_plan(mailhost: MailHost, relay_cidrs, present: bool = True) -> HostPlan:
    """The whitelist's plan for the current host: the one this pass made already, or one made now."""
    return (recall_plan("postscreen_whitelist", mailhost, relay_cidrs, present)
            or plan_whitelist(mailhost, relay_cidrs, read_state(mailhost)[0], present, host.name))


def exemption_plan(mailhost: MailHost, relay_cidrs, present: bool = True) -> HostPlan:
    """The exemption's plan for the current host: the one this pass made already, or one made now."""
    return (recall_plan("rspamd_exemption", mailhost, relay_cidrs, present)
            or plan_exemption(mailhost, relay_cidrs, read_state(mailhost)[0], present, host.name))
