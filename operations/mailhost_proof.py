"""Stage 4 on a mail host: the proof that the whitelist and the exemption are live (read in one SSH\nround trip), its settling retries, and the stage's read-only assessment for the gate report.\n"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

from pyinfra import host, logger

from backupmx.core.context import remember
from backupmx.core.errors import BackupMXError
from backupmx.core.progress import Progress
from backupmx.core.relayhost import postfix_size
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, TODO
from backupmx.mailhost.model import (
    ACCESS_LIST,
    MailHost,
)
from backupmx.mailhost.proof import (
    Proof,
    judge_scans,
    local_relay_networks,
    probe_addresses,
    scan_message,
    settings_rule_in_dump,
)
from backupmx.mailhost.render import rspamd_files
from backupmx.postfix.maincf import postfix_list
from facts.mailhost import PostscreenListeners, facts_args
from facts.mailhost_proof import MailhostProof
from operations.mailhost_plans import (
    Plan,
    cidr_strings,
    listeners_args,
    plan_key,
    plan_postscreen_whitelist,
    plan_reads,
    plan_rspamd_exemption,
    read_ahead,
    read_fact,
)

# How long stage 4 waits for a reload to take effect (rspamd restarts its
# workers after the HUP; a cold start compiles its hyperscan cache first).
SETTLE_SECONDS = 60.0

# The gate report's rows of stages 3 and 4.
TITLE_3 = "mail host: whitelist + exemption"
TITLE_4 = "verify live on every mail host"



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
    - an SMTP session through the listener claiming each relay address, talking
      before the greeting, with a relayed envelope (the relay's HELO name, a foreign
      sender whose SPF does not list the relay, the domain's postmaster) reaches
      RCPT 250: the running postscreen has the table and every smtpd restriction
      lets relayed mail through (``backupmx.mailhost.layers``); no mail is sent.
    """
    on = host if target is None else target
    cidrs = cidr_strings(relay_cidrs)
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
                       listener=mailhost.smtp_probe or None, sources=sources, rcpt=f"postmaster@{domain}",
                       helo=mailhost.proof_helo, sender=mailhost.proof_sender, **fargs)

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

    local = exemption["local_networks"] if dump else None
    if local is not None:
        overlaps = local_relay_networks(cidrs, local)
        if overlaps:
            proof.warn("rspamd local_networks", f"relay networks {'; '.join(overlaps)} are local to rspamd: relayed "
                       "mail from them skips SPF, DMARC and RBL checks (spam passes unscored, no mail is lost); "
                       "take them out of local_networks in the rspamd options (docs/mailhost.md)")

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
            proof.add("relayed envelope", not bad, "; ".join(bad) if bad else
                      f"{len(sources)} relay addresses talking early via {mailhost.smtp_probe} as "
                      f"{mailhost.proof_helo}, MAIL FROM <{mailhost.proof_sender}>: RCPT 250")
    return proof


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

    plans: list[Plan]
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


def assess_mailhost(mailhost: MailHost, relay_cidrs, domain: str) -> Assessment:
    """Plans of both operations; if neither would change anything, the proof too (read-only).

    The plans are kept for this host and preparing pass, so the operations called
    next reuse them instead of reading the same facts again.
    """
    # The facts both plans read, in one SSH round trip instead of three (or four).
    read_ahead(plan_reads(mailhost))
    listeners = read_fact(PostscreenListeners, listeners_args(mailhost), shared=True)  # the whitelist plan's too
    plans = [plan_rspamd_exemption(mailhost, relay_cidrs), plan_postscreen_whitelist(mailhost, relay_cidrs)]
    for plan in plans:
        remember(plan_key(plan.label, mailhost, relay_cidrs, True), plan)
    assessment = Assessment(plans)
    refused = [path for plan in plans for path in plan.refused]
    if refused:
        assessment.read_only = mailhost.read_only_refusal(refused)
    if listeners["postconf"]:
        assessment.message_size_limit = postfix_size(listeners["main"].get("message_size_limit"))
    if not assessment.problems and not assessment.changed:
        assessment.proof = prove_live(mailhost, relay_cidrs, domain)
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
    for key, title, status, evidence, next_step in rows:
        run.report.add(key, title, status, evidence, next_step)
    run.primary_message_sizes[host_name] = assessment.message_size_limit
