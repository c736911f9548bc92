"""Stage 2: gates G1-G4 of the seed design, read-only, each pass / FAIL / warn with evidence.

* G1 the domain is in the provider account in Secondary MX mode, enabled, and its
  valid-user table defaults to "allow any" (a new domain defaults to deny);
* G2 over-limit mail is deferred with 4xx, not bounced with 5xx: only a human can
  confirm it, so it is a gate-ledger entry; absent or 5xx is a hard stop;
* G3 STARTTLS on each backup MX (issuer, hostname, days to expiry): informational,
  a warning at worst, never a stop;
* G4 the inventory's relay CIDRs (what the whitelist and exemption will allow)
  equal the provider's: a difference is a stop with the exact inventory change.

With provider ``selfhosted`` only G3 runs here; G1, G2 and G4 are the relay
hosts' own rows (``operations.relayhost.assess_relayhost``, docs/provider-selfhosted.md).

Each gate is a function ``(settings, provider, ...) -> list[Check]``; ``run_gates``
runs them all (a failing gate does not hide the others) and adds the rows to the
run's report. Nothing here changes anything anywhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from backupmx.core.errors import BackupMXError, SecretError
from backupmx.core.report import CHANGE, FAIL, PASS, SKIP, WARN, Check, Report
from backupmx.core.settings import Settings
from backupmx.gates import starttls
from backupmx.providers.base import Fact, Provider, ProviderFacts, unknown
from backupmx.providers.ledger import LedgerProvider
from backupmx.providers.registry import open_provider

# The seed design's answer when the free tier's overage bounces (G2) or the free
# Secondary MX is gone (G1): the decision returns to the owner with these options.
ALTERNATIVES = ("Roller Network's paid tier (Basic, about $30/yr, lifts the cap)",
                "another provider (e.g. Dynu backup MX, $9.99/yr)",
                "a self-hosted store-and-forward relay (e.g. Postfix on a small free-tier VM)")
LEDGER_DOC = "docs/gates.md"


def _alternatives() -> str:
    return "alternatives: " + "; ".join(ALTERNATIVES)


def _sources(*facts: Fact) -> str:
    seen: list[str] = []
    for fact in facts:
        if fact.known and fact.evidence not in seen:
            seen.append(fact.evidence)
    return ", ".join(seen)


# ------------------------------------------------------------------------ G1


# How many domains' provider reads (G1) or DNS assessments (stage 5) are in flight
# at once: each is a few sequential HTTP round trips, so a 50-domain inventory
# would otherwise wait on them one after another. Small, to stay gentle with the
# provider's API; the request count is the same either way.
DOMAIN_CONCURRENCY = 8


def for_each_domain(function: Callable, domains: list) -> list:
    """``function`` over ``domains``, a few at a time, results in the domains' order."""
    if len(domains) <= 1:
        return [function(domain) for domain in domains]
    with ThreadPoolExecutor(max_workers=min(DOMAIN_CONCURRENCY, len(domains))) as pool:
        return list(pool.map(function, domains))


def g1_title(domain: str) -> str:
    return f"provider domain {domain}"


def g1_domain(settings: Settings, provider: Provider, rolled_back: Mapping[str, dict] | None = None) -> list[Check]:
    """G1 per domain: present, Secondary MX, enabled, user table default allow any.

    ``rolled_back``: per domain, the change-log entry of this tool's rollback that
    disabled it (``backupmx.core.audit.disabled_by_rollback``). Such a domain, still
    disabled, is a planned change (the deploy enables it again before stage 5),
    not a failure; any other disabled domain fails as before.
    """

    def one(domain) -> Check:
        title = g1_title(domain.name)
        try:
            facts = provider.domain_facts(domain.name)
        except BackupMXError as error:
            return Check("G1", title, FAIL, str(error), "fix the provider access and run again")
        return _g1_check(settings, title, facts, (rolled_back or {}).get(domain.name))

    return for_each_domain(one, list(settings.domains))


def _g1_check(settings: Settings, title: str, facts: ProviderFacts, rolled_back: dict | None = None) -> Check:
    name, console = facts.domain, settings.provider.manual_url
    present = facts.present
    if not present.known:
        return Check("G1", title, FAIL, f"cannot tell whether {name} is in the {settings.provider.name} account: "
                     f"{present.evidence}",
                     f"fix the provider access, or record the domain's state in gate_ledger ({LEDGER_DOC})")
    if present.value is False:
        return Check("G1", title, FAIL, f"{name} is not in the {settings.provider.name} account "
                     f"({present.evidence})",
                     f"add {name} at {console} as a Secondary MX domain, set its user table default to "
                     f"'allow any', and run again")
    fails, warns, steps, changes = [], [], [], []
    mode, table, enabled, hold = facts.mode, facts.user_table_default, facts.enabled, facts.hold
    if not mode.known:
        fails.append(f"mode unknown ({mode.evidence})")
        steps.append(f"record gate_ledger.domains['{name}'].mode ({LEDGER_DOC})")
    elif mode.value != "secondary_mx":
        fails.append(f"mode is {mode.value}, not Secondary MX")
        steps.append(f"in the ACC switch {name} from {mode.value} to Secondary MX")
    if not table.known:
        fails.append(f"user table default unknown ({table.evidence})")
        steps.append(f"record gate_ledger.domains['{name}'].user_table_default ({LEDGER_DOC})")
    elif table.value != "allow_any":
        fails.append(f"user table default is {table.value} (a new domain's default): the relays would answer "
                     f"550 to every address but abuse@ and postmaster@")
        steps.append(f"in the ACC, valid-user table of {name}: flip the default action from "
                     f"'{table.value}' to 'allow any' (catch-all)")
    if enabled.known and enabled.value is False and rolled_back is not None:
        changes.append(f"will enable {name} again before stage 5: disabled by this tool's rollback "
                       f"({rolled_back.get('when', '?')}, change log), nothing changed it since")
    elif enabled.known and enabled.value is False:
        fails.append("the domain is disabled (a rollback disables it): the relays would refuse its mail "
                     "with 554")
        steps.append(f"in the ACC enable {name}")
    elif not enabled.known:
        warns.append(f"enabled state unknown ({enabled.evidence})")
    if hold.known and hold.value is True:
        warns.append("Accept-and-Hold is on: queued mail is not delivered until it is turned off")
        steps.append("pyinfra INVENTORY deploys/maintenance.py --data hold=off when maintenance is over")
    elif not hold.known:
        warns.append(f"hold state unknown ({hold.evidence})")
    said = (f"{name}: present, mode {mode.value or '?'}, user table {table.value or '?'}, "
            f"{'enabled' if enabled.value else 'disabled' if enabled.known else 'enabled ?'}, "
            f"hold {'on' if hold.value else 'off' if hold.known else '?'}")
    sources = _sources(present, mode, table, enabled, hold)
    if fails:
        return Check("G1", title, FAIL, f"{'; '.join(fails)} ({sources})", "; ".join(steps))
    if changes:
        return Check("G1", title, CHANGE, f"{said}; {'; '.join(changes + warns)} ({sources})",
                     "; ".join(steps) or None)
    if warns:
        return Check("G1", title, WARN, f"{said}; {'; '.join(warns)} ({sources})", "; ".join(steps) or None)
    return Check("G1", title, PASS, f"{said} ({sources})")


# ------------------------------------------------------------------------ G2


def g2_overage(settings: Settings, provider: Provider) -> list[Check]:
    """G2: the ledger says over-limit mail is deferred (4xx); absent or 5xx stops the deploy."""
    title = "overage answers 4xx (defer)"
    fact = provider.overage()
    record = (f"record what Roller Network confirms (their docs or a support ticket) as gate_ledger.overage "
              f"= {{value: '4xx' or '5xx', date, evidence}} ({LEDGER_DOC})")
    if not fact.known:
        return [Check("G2", title, FAIL,
                      f"unverified: {fact.evidence}; if the 10 MB/day cap bounces (5xx) instead of deferring, "
                      f"mail is lost during an outage; {_alternatives()}", record)]
    if fact.value == "4xx":
        return [Check("G2", title, PASS, f"over-limit mail is deferred with 4xx ({fact.evidence})")]
    return [Check("G2", title, FAIL,
                  f"over-limit mail is bounced with {fact.value} ({fact.evidence}): mail would be lost during "
                  f"a long outage; the decision returns to the owner; {_alternatives()}",
                  "choose an alternative; if the provider changes the behaviour, record the new evidence")]


# ------------------------------------------------------------------------ G3


def g3_starttls(settings: Settings, provider: Provider | None = None,
                probe: Callable[..., starttls.TLSReport] = starttls.probe) -> list[Check]:
    """G3 per backup MX host: informational, warn at worst."""
    backup = settings.backup_mx

    def one(host: str) -> starttls.TLSReport:
        connect_host, port = backup.smtp_endpoint(host)
        return probe(host, connect_host, port, backup.tls_ca_bundle)

    with ThreadPoolExecutor(max_workers=max(1, len(backup.hosts))) as pool:
        results = list(pool.map(one, backup.hosts))
    checks = []
    for result in results:
        where = f" via {result.endpoint}" if result.endpoint != f"{result.host}:{backup.smtp_port}" else ""
        evidence = result.summary() + where
        if result.ok:
            checks.append(Check("G3", f"STARTTLS {result.host}", PASS, evidence))
        else:
            checks.append(Check("G3", f"STARTTLS {result.host}", WARN, evidence,
                                f"informational (blocks only a future MTA-STS policy); check with openssl "
                                f"s_client -starttls smtp -connect {result.host}:{backup.smtp_port}"))
    return checks


# ------------------------------------------------------------------------ G4


def g4_relay_cidrs(settings: Settings, provider: Provider) -> list[Check]:
    """G4: the inventory's relay CIDRs equal the provider's, or the exact change to make."""
    title = "relay CIDRs match the provider"
    try:
        fact = provider.relay_cidrs()
    except BackupMXError as error:
        fact = unknown(str(error))
    if not fact.known:
        return [Check("G4", title, FAIL, f"the provider's relay CIDRs are unknown: {fact.evidence}",
                      f"copy them from the ACC Resource Access page into gate_ledger.relay_cidrs ({LEDGER_DOC})")]
    theirs, bad = [], []
    for raw in fact.value:
        try:
            theirs.append(ipaddress.ip_network(str(raw).strip(), strict=False))
        except ValueError:
            bad.append(str(raw))
    if bad:
        return [Check("G4", title, FAIL, f"the provider lists {', '.join(bad)}, which is not a network "
                      f"({fact.evidence})", "check the provider profile (docs/provider-api.md)")]
    ours = list(settings.relay_cidrs)
    missing = [net for net in theirs if net not in ours]
    extra = [net for net in ours if net not in theirs]
    if not missing and not extra:
        return [Check("G4", title, PASS, f"{len(ours)} CIDR(s) equal the provider's ({fact.evidence}): "
                      f"{', '.join(map(str, ours))}")]
    wanted = ", ".join(f'"{net}"' for net in theirs)
    change = [f"add {', '.join(map(str, missing))}" if missing else "",
              f"remove {', '.join(map(str, extra))}" if extra else ""]
    change_text = "; ".join(part for part in change if part)
    wide = [str(net) for net in theirs if net.prefixlen < {4: 16, 6: 32}[net.version]]
    note = (f"; note: {', '.join(wide)} is wider than the inventory allows: ask the provider for its exact "
            f"ranges") if wide else ""
    return [Check("G4", title, FAIL,
                  f"inventory relay_cidrs differ from the provider's ({fact.evidence}): {change_text}; set "
                  f"relay_cidrs = [{wanted}]{note}",
                  f"edit the inventory: relay_cidrs = [{wanted}] ({change_text}), then run again")]


# ------------------------------------------------------------------------ all


def run_gates(settings: Settings, secrets, report: Report, provider: Provider | None = None,
              rolled_back: Mapping[str, dict] | None = None) -> list[Check]:
    """Run G1-G4 and add every row to ``report``; returns the rows added.

    ``secrets`` is the run's ``SecretStore`` (the api backend's key comes from it);
    a ``provider`` may be given instead (tests). A provider that cannot be opened
    fails G1 and G4 with the reason; G2 still reads the ledger and G3 still probes.
    ``rolled_back``: see ``g1_domain``.
    """
    opened = provider is None
    checks: list[Check] = []
    if settings.selfhosted and provider is None:
        # The relay hosts are the provider: G1 (catch-all), G2 (4xx only, queue
        # lifetime) and G4 (addresses) are checks of each relay host, added by its
        # own pass through the deploy (operations.relayhost.assess_relayhost); a
        # relay not configured yet is a planned change there, not a failure.
        checks += g3_starttls(settings)
        report.checks.extend(checks)
        return checks
    if provider is None:
        try:
            provider = open_provider(settings, secrets)
        except BackupMXError as error:
            if isinstance(error, SecretError):
                # Stage 1's row says why the key could not be read, and what to do: not again here.
                status, reason, next_step = SKIP, f"not checked: the {settings.provider.name} API key could " \
                    f"not be read (stage 1)", None
            else:
                status, next_step = FAIL, "fix the provider access and run again"
                reason = f"cannot use the {settings.provider.backend} backend of {settings.provider.name}: {error}"
            checks.append(Check("G1", "provider domain", status, reason, next_step))
            checks += g2_overage(settings, LedgerProvider(settings))
            checks += g3_starttls(settings)
            checks.append(Check("G4", "relay CIDRs match the provider", status, reason, next_step))
            report.checks.extend(checks)
            return checks
    try:
        checks += g1_domain(settings, provider, rolled_back)
        checks += g2_overage(settings, provider)
        checks += g3_starttls(settings, provider)
        checks += g4_relay_cidrs(settings, provider)
    finally:
        if opened:
            provider.close()
    report.checks.extend(checks)
    return checks
