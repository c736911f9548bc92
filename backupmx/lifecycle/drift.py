"""Drift: what is live versus what the inventory wants, as plain comparisons.

``deploys/drift.py`` reads (DNS, the provider, the mail hosts, the monitoring
host) and hands the answers to these functions; each returns ``Finding``s. Only
``DRIFT`` and ``UNKNOWN`` findings make the check exit non-zero: a state that
could not be read is not a state that is known to be right.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from backupmx.core.settings import Domain, Settings

DRIFT, UNKNOWN, OK, NOTE = "drift", "unknown", "ok", "note"
FAILING = (DRIFT, UNKNOWN)

MX = tuple[int, str]


@dataclass(frozen=True)
class Finding:
    kind: str  # "mx", "whitelist", "exemption", "provider-cidrs", "monitoring", "mta-sts"
    subject: str  # the domain or host it is about
    status: str  # DRIFT, UNKNOWN, OK or NOTE
    message: str

    def line(self) -> str:
        word = {DRIFT: "DRIFT", UNKNOWN: "UNKNOWN", OK: "ok", NOTE: "note"}[self.status]
        return f"{word} {self.kind} {self.subject}: {self.message}"

    @property
    def failing(self) -> bool:
        return self.status in FAILING


def _render(mx: Iterable[MX]) -> str:
    return ", ".join(f"{priority} {host}" for priority, host in sorted(mx)) or "no MX"


def wanted_mx(domain: Domain, settings: Settings) -> frozenset[MX]:
    return frozenset({(mx.priority, mx.host) for mx in domain.primary_mx}
                     | {(settings.backup_mx.priority, host) for host in settings.backup_mx.hosts})


def mx_drift(domain: Domain, settings: Settings, live: Iterable[MX], source: str) -> list[Finding]:
    """The live apex MX set against primaries + backups: one finding per difference."""
    wanted, live = wanted_mx(domain, settings), frozenset(live)
    if live == wanted:
        return [Finding("mx", domain.name, OK, f"{_render(live)} ({source})")]
    findings = []
    live_by_host = {}
    for priority, host in live:
        live_by_host.setdefault(host, []).append(priority)
    wanted_hosts = {host for _, host in wanted}
    for priority, host in sorted(wanted - live):
        role = "primary" if any(mx.host == host for mx in domain.primary_mx) else "backup"
        others = sorted(p for p in live_by_host.get(host, []) if p != priority)
        if others:
            findings.append(Finding("mx", domain.name, DRIFT, f"{role} {host} has preference "
                                    f"{', '.join(map(str, others))}, wanted {priority} ({source})"))
        else:
            findings.append(Finding("mx", domain.name, DRIFT, f"{role} {priority} {host} is missing ({source})"))
    for priority, host in sorted(live - wanted):
        if host in wanted_hosts:
            continue  # reported above as a wrong preference
        findings.append(Finding("mx", domain.name, DRIFT, f"unexpected MX {priority} {host} ({source})"))
    return findings


def _networks(values: Iterable) -> tuple[list, list[str]]:
    networks, bad = [], []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            bad.append(str(value))
    return networks, bad


def cidr_drift(kind: str, subject: str, wanted: Sequence, actual: Sequence, source: str) -> list[Finding]:
    """Two lists of networks: what should be, and what ``source`` has."""
    ours, _ = _networks(wanted)
    theirs, bad = _networks(actual)
    if bad:
        return [Finding(kind, subject, DRIFT, f"{source} lists {', '.join(bad)}, which is not a network")]
    missing = [net for net in ours if net not in theirs]
    extra = [net for net in theirs if net not in ours]
    if not missing and not extra:
        return [Finding(kind, subject, OK, f"{len(ours)} network(s) as wanted ({source})")]
    parts = []
    if missing:
        parts.append(f"lacks {', '.join(map(str, missing))}")
    if extra:
        parts.append(f"has {', '.join(map(str, extra))} beyond the inventory")
    return [Finding(kind, subject, DRIFT, f"{source} {'; '.join(parts)}")]


def provider_cidr_drift(settings: Settings, provider_cidrs: Sequence, source: str) -> list[Finding]:
    """The provider's relay networks against the inventory's ``relay_cidrs`` (what G4 gates on)."""
    findings = cidr_drift("provider-cidrs", settings.provider.name, settings.relay_cidrs, provider_cidrs,
                          f"the provider ({source})")
    if findings[0].status == DRIFT:
        wanted = ", ".join(f'"{net}"' for net in _networks(provider_cidrs)[0])
        finding = findings[0]
        findings[0] = Finding(finding.kind, finding.subject, DRIFT,
                              f"{finding.message}; if the provider's list is right, set relay_cidrs = [{wanted}] "
                              "and re-run deploys/backupmx.py (whitelist and exemption follow)")
    return findings


def files_drift(kind: str, subject: str, wanted: dict[str, str], actual: dict[str, str | None]) -> list[Finding]:
    """Rendered files against the files on a host (``None``: absent)."""
    differ = [path for path, text in wanted.items() if actual.get(path) != text]
    if not differ:
        return [Finding(kind, subject, OK, f"{len(wanted)} file(s) as rendered")]
    return [Finding(kind, subject, DRIFT, f"{path} {'is missing' if actual.get(path) is None else 'differs'}")
            for path in differ]


def summary(findings: Sequence[Finding], verbose: bool = False) -> tuple[list[str], bool]:
    """The lines to print (one per drift, then notes; with ``verbose`` the passing checks
    too) and whether anything drifted or was unknown."""
    failing = [finding for finding in findings if finding.failing]
    rest = [finding for finding in findings if finding.status == NOTE or (verbose and finding.status == OK)]
    head = [finding.line() for finding in failing] or ["no drift"]
    return head + [finding.line() for finding in rest], bool(failing)
