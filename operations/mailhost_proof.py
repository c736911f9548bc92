"""Stage 4 on a mail host: the proof that the whitelist and the exemption are live (read in one SSH\nround trip), its settling retries, and the stage's read-only assessment for the gate report.\n"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import gevent
from pyinfra import host, logger

from backupmx.core.context import remember, run_value
from backupmx.core.errors import BackupMXError
from backupmx.core.progress import Progress
from backupmx.core.relayhost import postfix_size
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, TODO
from backupmx.core.validate import cidr_strings
from backupmx.mailhost.model import MailHost
from backupmx.mailhost.plan import plan_exemption, plan_whitelist
from backupmx.mailhost.proof import Proof, judge_proof, proof_request
from backupmx.postfix.hostplan import HostPlan
from facts.mailhost import facts_args
from facts.mailhost_proof import MailhostProof
from operations.mailhost_state import plan_key, read_state

# How long stage 4 waits for a reload to take effect (rspamd restarts its
# workers after the HUP; a cold start compiles its hyperscan cache first).
SETTLE_SECONDS = 60.0

# The gate report's rows of stages 3 and 4.
TITLE_3 = "mail host: whitelist + exemption"
TITLE_4 = "verify live on every mail host"



def prove_live(mailhost: MailHost, relay_cidrs, domain: str, dump: bool = True, target=None) -> Proof:
    """Read the mail host again (one SSH round trip) and judge whether the whitelist and the
    exemption are in force (``backupmx.mailhost.proof.judge_proof`` says check by check):

    - the CIDR file permits exactly the relay networks;
    - postmap: an address in each relay network answers ``permit``, one outside none;
    - ``postconf -P``: the access list with our table is on the PROXY-v2 listener and
      on no other service, nor in main.cf;
    - the rspamd settings file holds the rendered rule and ``rspamadm configdump``
      shows it;
    - rspamc through the controller: the exemption's (or external_relay's) verdict on
      a message claimed from a relay address and from an outside one;
    - an SMTP session through the listener claiming each relay address, talking
      before the greeting, with a relayed envelope, reaches RCPT 250: every smtpd
      restriction lets relayed mail through; no mail is sent.
    """
    on = host if target is None else target
    cidrs = cidr_strings(relay_cidrs)
    read = on.get_fact(MailhostProof, **proof_request(mailhost, cidrs, domain, dump), **facts_args(mailhost))
    return judge_proof(mailhost, cidrs, read, dump)


# Checks whose failure may only mean a reload is still taking effect, and for how long
# at most: rspamd restarts its workers (a cold start compiles its hyperscan cache);
# Postfix's new processes take the new files within a second or two, so a refusal
# of the relayed envelope that lasts longer is a layer's answer, not a reload's lag.
_SETTLING = {"rspamc": SETTLE_SECONDS, "relayed envelope": 20.0}


def prove_live_settled(mailhost: MailHost, relay_cidrs, domain: str, timeout: float = SETTLE_SECONDS,
                       target=None) -> Proof:
    """``prove_live``, again while only the running daemons lag behind the files."""
    return prove_settled(lambda first: prove_live(mailhost, relay_cidrs, domain, dump=first, target=target),
                         _SETTLING, timeout, getattr(target, "log", None))


def prove_settled(prove: Callable[[bool], Proof], settling: Mapping[str, float], timeout: float,
                  log: Callable[[str], None] | None = None) -> Proof:
    """``prove(True)``, then ``prove(False)`` once a second while every failing check is in
    ``settling`` (a reload still taking effect), until ``timeout`` or the longest wait
    ``settling`` allows the failing checks, whichever comes first. ``log``: where a longer
    wait shows its progress."""
    started = time.monotonic()
    proof = prove(True)
    with Progress("proof: waiting for the reload to take effect", timeout, log or (lambda line: None)) as progress:
        while not proof.live:
            failing = {name for name, ok, _ in proof.checks if not ok}
            if not failing <= set(settling):
                break
            if time.monotonic() - started >= min(timeout, max(settling[name] for name in failing)):
                break
            progress.update(f"not yet: {', '.join(sorted(failing))}")
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


@dataclass
class Assessment:
    """Stage 3 and 4 of one mail host as seen while preparing."""

    plans: list[HostPlan]
    proof: Proof | None = None  # made while preparing when nothing is left to change
    message_size_limit: int | None = None  # Postfix's, as read with the plans' facts (None: not read)
    read_only: str | None = None  # docker-mailserver's read-only config dir: every refused file, in one line

    @property
    def problems(self) -> list[str]:
        others = [problem for plan in self.plans if not plan.refused for problem in plan.problems]
        return ([self.read_only] if self.read_only else []) + others

    @property
    def changed(self) -> bool:
        return any(plan.changed for plan in self.plans)


def start_reads(mailhosts: Mapping[str, MailHost], targets, relay_cidrs, domain: str) -> None:
    """Start reading every mail host now (``targets``: the inventory's hosts), each on its own
    connection, while the first host is prepared and the gates run: ``assess_mailhost`` takes
    its host's answer when its turn comes, instead of reading only then, one host after another."""
    cidrs = cidr_strings(relay_cidrs)
    reads = run_value("mailhost reads", dict)
    for target in targets:
        mailhost = mailhosts[target.name]
        reads[target.name] = gevent.spawn(read_state, mailhost, proof_request(mailhost, cidrs, domain), target)


def assess_mailhost(mailhost: MailHost, relay_cidrs, domain: str) -> Assessment:
    """Plans of both operations; if neither would change anything, the proof too (read-only).

    The plans are kept for this host and preparing pass, so the operations called
    next reuse them instead of reading the same facts again.
    """
    # What both plans read, and stage 4's proof beside it, in one SSH round trip (started
    # early by start_reads): the proof counts only when nothing is left to change (a re-run).
    cidrs = cidr_strings(relay_cidrs)
    started = run_value("mailhost reads", dict).pop(host.name, None)
    state, proof_read = started.get() if started is not None else read_state(mailhost,
                                                                               proof_request(mailhost, cidrs, domain))
    plans = [plan_exemption(mailhost, relay_cidrs, state, host_name=host.name),
             plan_whitelist(mailhost, relay_cidrs, state, host_name=host.name)]
    for plan in plans:
        remember(plan_key(plan.label, mailhost, relay_cidrs, True), plan)
    assessment = Assessment(plans)
    refused = [path for plan in plans for path in plan.refused]
    if refused:
        assessment.read_only = mailhost.read_only_refusal(refused)
    if state.listeners["postconf"]:
        assessment.message_size_limit = postfix_size(state.listeners["main"].get("message_size_limit"))
    if not assessment.problems and not assessment.changed:
        assessment.proof = judge_proof(mailhost, cidrs, proof_read)
    return assessment


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
    run.add_mailhost_rows(host_name, rows, assessment.message_size_limit)
