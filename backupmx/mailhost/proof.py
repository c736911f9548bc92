"""Stage 4's proof that the whitelist and the exemption are live, judged from what the mail host
answered (``facts.mailhost_proof.MailhostProof``): the CIDR table, postmap, the listener's
overrides, rspamd's rule (file, configdump, two scans) and the relayed envelope. Nothing here
reads a host: ``proof_request`` says what to read, ``judge_proof`` what it shows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from backupmx.core.validate import IPNetwork
from backupmx.mailhost.model import (
    ACCESS_LIST,
    EXEMPT_GROUPS,
    EXTERNAL_RELAY,
    RSPAMD_CAP_RULE,
    RSPAMD_RELAY_SYMBOL,
    RSPAMD_RULE,
    MailHost,
)
from backupmx.mailhost.probes import Probes, exempted_symbols, probe_addresses, scan_message
from backupmx.mailhost.render import rspamd_files
from backupmx.postfix.maincf import postfix_list


# --- stage 4: what each relay scoring mode must show ------------------------------


def settings_rule_in_dump(mailhost: MailHost, rules: Mapping[str, Any], cidrs: Sequence[str]) -> tuple[bool, str]:
    """Does ``rspamadm configdump settings`` show our rule of this mode, as rendered?"""
    name = RSPAMD_CAP_RULE if mailhost.relay_scoring == EXTERNAL_RELAY else RSPAMD_RULE
    rule = rules.get(name)
    ok = isinstance(rule, dict) and sorted(rule.get("ip", [])) == sorted(cidrs)
    apply = (rule.get("apply") or {}) if isinstance(rule, dict) else {}
    # Both modes disable the reject action for the relays (configdump shows it as null).
    actions = apply.get("actions") or {}
    ok = ok and "reject" in actions and actions["reject"] is None
    if mailhost.relay_scoring != EXTERNAL_RELAY:
        ok = ok and sorted(apply.get("groups_disabled", [])) == sorted(EXEMPT_GROUPS)
    return ok, name


def judge_scans(mailhost: MailHost, relay_ip: str, outside_ip: str, relay: Mapping[str, Any],
                outside: Mapping[str, Any]) -> tuple[bool, str]:
    """Stage 4's rspamc check for the host's relay scoring mode: (live, evidence)."""
    if mailhost.relay_scoring == EXTERNAL_RELAY:
        return _judge_external_relay(relay_ip, outside_ip, relay, outside)
    leaked = exempted_symbols(relay["symbols"])
    spf_outside = [s for s in outside["symbols"] if s.startswith("R_SPF_")]
    ok = not leaked and bool(spf_outside)
    return ok, (f"relay {relay_ip} no R_SPF_*/DMARC_*, outside {outside_ip} {', '.join(spf_outside)}"
                if ok else f"relay {relay_ip}: {', '.join(leaked) or 'none'}; outside {outside_ip}: "
                f"{', '.join(spf_outside) or 'no R_SPF_* (SPF not checked at all?)'}")


def _judge_external_relay(relay_ip: str, outside_ip: str, relay: Mapping[str, Any],
                          outside: Mapping[str, Any]) -> tuple[bool, str]:
    """Both scans carry a Received header naming ``outside_ip``.

    From the relay address: our rule fired (the module took the address from the
    header), SPF was scored, with the verdict ``outside_ip`` gets when it connects
    directly (so against the original address), and the action is not reject.
    From ``outside_ip`` itself: our rule did not fire (the header is not trusted).
    """
    spf_relay = sorted(s for s in relay["symbols"] if s.startswith("R_SPF_"))
    spf_outside = sorted(s for s in outside["symbols"] if s.startswith("R_SPF_"))
    action = relay.get("action")
    problems = []
    if RSPAMD_RELAY_SYMBOL not in relay["symbols"]:
        problems.append(f"relay {relay_ip}: no {RSPAMD_RELAY_SYMBOL} (external_relay did not take the Received header)")
    if not spf_relay or spf_relay != spf_outside:
        problems.append(f"relay {relay_ip}: SPF {', '.join(spf_relay) or 'not scored'}, "
                        f"but {outside_ip} directly: {', '.join(spf_outside) or 'not scored'}")
    if action in (None, "reject"):
        problems.append(f"relay {relay_ip}: action {action or 'unknown'} (must be capped at add header)")
    if RSPAMD_RELAY_SYMBOL in outside["symbols"]:
        problems.append(f"outside {outside_ip}: {RSPAMD_RELAY_SYMBOL} fired for a client outside the relay networks")
    if problems:
        return False, "; ".join(problems)
    return True, (f"relay {relay_ip} scored as its Received header's {outside_ip}: {RSPAMD_RELAY_SYMBOL}, "
                  f"{', '.join(spf_relay)}, action {action}; outside {outside_ip} not rewritten")


def local_relay_networks(relay_cidrs: Iterable[IPNetwork | str], local_networks: Iterable[str]) -> list[str]:
    """Relay networks that overlap rspamd's local networks: mail from there is "local", and rspamd
    skips SPF, DMARC, RBL and most other checks for it (spam passes unscored)."""
    local = []
    for entry in local_networks:
        try:
            local.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            continue
    overlaps = []
    for cidr in relay_cidrs:
        relay = ipaddress.ip_network(str(cidr))
        inside = [str(network) for network in local if network.version == relay.version and network.overlaps(relay)]
        if inside:
            overlaps.append(f"{relay} (in {', '.join(inside)})")
    return overlaps


@dataclass
class Proof:
    live: bool
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))
        if not ok:
            self.live = False

    def warn(self, name: str, detail: str) -> None:
        """A finding that loses no mail but makes relayed mail worse off than direct mail."""
        self.warnings.append(f"{name}: {detail}")

    def evidence(self) -> str:
        failed = [f"{name}: {detail}" for name, ok, detail in self.checks if not ok]
        warned = "".join(f"; WARNING {warning}" for warning in self.warnings)
        if failed:
            return "NOT live: " + "; ".join(failed) + warned
        return "live: " + "; ".join(f"{name}: {detail}" for name, ok, detail in self.checks) + warned




# --- the proof: what to read, and what it shows ------------------------------------------------


def proof_request(mailhost: MailHost, cidrs: Sequence[str], domain: str, dump: bool = True) -> dict[str, Any]:
    """``MailhostProof``'s arguments (but the container's, ``facts.mailhost.facts_args``): every read of
    the proof, for one SSH round trip. ``dump``: read ``rspamadm configdump`` too (about a second)."""
    probes = probe_addresses(cidrs)
    relay_ip, outside_ip = probes.inside[0][1], probes.outside[0]
    return {
        "cidr_host_path": mailhost.cidr_host_path, "config_dir": mailhost.postfix_config_dir,
        "cidr_path": mailhost.cidr_path, "addresses": probes.addresses,
        "settings_path": mailhost.rspamd_settings_host_path, "rspamadm_args": mailhost.rspamadm_args,
        "live_path": mailhost.rspamd_settings_live_path if mailhost.is_docker else None, "dump": dump,
        "controller": mailhost.rspamd_controller, "ips": (relay_ip, outside_ip), "mail_from": f"postmaster@{domain}",
        "message": scan_message(mailhost, domain, outside_ip), "listener": mailhost.smtp_probe or None,
        "sources": tuple(address for _, address in probes.inside), "rcpt": f"postmaster@{domain}",
        "helo": mailhost.proof_helo, "sender": mailhost.proof_sender,
    }


def judge_proof(mailhost: MailHost, cidrs: Sequence[str], read: Mapping[str, Any], dump: bool = True) -> Proof:
    """What the mail host answered (``MailhostProof``'s value), judged check by check."""
    probes = probe_addresses(cidrs)
    proof = Proof(True)
    _check_table(proof, mailhost, cidrs, read["table"])
    _check_postmap(proof, probes, read["probes"])
    _check_listener(proof, mailhost, read["listeners"])
    _check_rspamd(proof, mailhost, cidrs, read["exemption"], dump)
    _check_scans(proof, mailhost, probes, read["scan"])
    if mailhost.smtp_probe:
        _check_envelope(proof, mailhost, probes, read["pregreet"])
    return proof


def _check_table(proof: Proof, mailhost: MailHost, cidrs: Sequence[str], table) -> None:
    if table is None or table["error"]:
        proof.add("cidr file", False, f"{mailhost.cidr_host_path}: {table['error'] if table else 'absent'}")
        return
    same = sorted(table["networks"]) == sorted(cidrs) and not table["invalid"]
    proof.add("cidr file", same, f"{len(cidrs)} networks permitted" if same else
              f"{mailhost.cidr_host_path} permits {', '.join(table['networks']) or 'nothing'}"
              f"{'; unreadable lines: ' + ', '.join(table['invalid']) if table['invalid'] else ''}")


def _check_postmap(proof: Proof, probes: Probes, found) -> None:
    """An address in each relay network answers ``permit``; one outside them all gets no answer."""
    if not found["postmap"]:
        proof.add("postmap", False, found["error"])
        return
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


def _check_listener(proof: Proof, mailhost: MailHost, listeners) -> None:
    """Our table in the PROXY-v2 listener's access list, on no other service, nor in main.cf."""
    if not listeners["postconf"]:
        proof.add("postconf", False, listeners["error"])
        return
    ours = f"cidr:{mailhost.cidr_path}"
    services = listeners["services"]
    listener = services.get(mailhost.service_key)
    value = listener.params.get(ACCESS_LIST, "") if listener else ""
    elsewhere = [key for key, service in services.items() if key != mailhost.service_key
                 and ours in postfix_list(service.params.get(ACCESS_LIST, ""))]
    if ours in postfix_list(listeners["main"].get(ACCESS_LIST, "")):
        elsewhere.append("main.cf")
    if listener is not None and ours in postfix_list(value) and not elsewhere:
        proof.add("postconf -P", True, f"{ours} on {mailhost.service_key} only")
        return
    detail = f"{mailhost.service_key}/{ACCESS_LIST} = {value or '(not set)'}"
    if elsewhere:
        detail += f"; also on {', '.join(elsewhere)} (must be the PROXY-v2 listener only)"
    proof.add("postconf -P", False, detail)


def _check_rspamd(proof: Proof, mailhost: MailHost, cidrs: Sequence[str], exemption, dump: bool) -> None:
    """The rendered rule in the settings file (and the container's copy), and in configdump."""
    wanted_block = rspamd_files(mailhost, cidrs)[mailhost.rspamd_settings_host_path][2]
    block_ok = exemption["block"] == wanted_block
    if mailhost.is_docker:
        block_ok = block_ok and exemption["live_file"] == exemption["file"]
    proof.add("rspamd settings", block_ok, "rule in place" if block_ok else
              f"{mailhost.rspamd_settings_host_path} does not hold the rendered rule"
              f"{' (or the container copy differs)' if mailhost.is_docker else ''}")
    if not dump:
        return
    rules = exemption["rules"] if exemption["rspamadm"] else {}
    dump_ok, rule_name = settings_rule_in_dump(mailhost, rules, cidrs)
    proof.add("configdump", dump_ok, f"{rule_name} for {len(cidrs)} networks" if dump_ok
              else f"configdump does not show {rule_name} as rendered ({exemption['error'] or 'rule missing'})")
    local = exemption["local_networks"]
    overlaps = local_relay_networks(cidrs, local) if local is not None else []
    if overlaps:
        proof.warn("rspamd local_networks", f"relay networks {'; '.join(overlaps)} are local to rspamd: relayed "
                   "mail from them skips SPF, DMARC and RBL checks (spam passes unscored, no mail is lost); "
                   "take them out of local_networks in the rspamd options (docs/mailhost.md)")


def _check_scans(proof: Proof, mailhost: MailHost, probes: Probes, scan) -> None:
    """What the running rspamd makes of the probe message from a relay address and from outside."""
    if not scan["rspamc"]:
        proof.add("rspamc", False, "rspamc not found on the mail host")
        return
    relay_ip, outside_ip = probes.inside[0][1], probes.outside[0]
    relay, outside = scan["results"].get(relay_ip, {}), scan["results"].get(outside_ip, {})
    if relay.get("symbols") is None or outside.get("symbols") is None:
        proof.add("rspamc", False, relay.get("error") or outside.get("error") or "no scan result")
        return
    proof.add("rspamc", *judge_scans(mailhost, relay_ip, outside_ip, relay, outside))


def _check_envelope(proof: Proof, mailhost: MailHost, probes: Probes, session) -> None:
    """The relayed envelope from each relay address, talking early, reached RCPT 250."""
    if not session["python"]:
        proof.add("pregreet", False, "python3 not found on the mail host (set mailhost.smtp_probe: false to skip)")
        return
    sources = [address for _, address in probes.inside]
    bad = [f"{source}: {result.get('text') or result.get('error')}"
           for source, result in session["results"].items() if result.get("code") != 250]
    bad += [f"{source}: {session.get('failure') or 'no answer'}" for source in sources
            if source not in session["results"]]
    proof.add("relayed envelope", not bad, "; ".join(bad) if bad else
              f"{len(sources)} relay addresses talking early via {mailhost.smtp_probe} as "
              f"{mailhost.proof_helo}, MAIL FROM <{mailhost.proof_sender}>: RCPT 250")
