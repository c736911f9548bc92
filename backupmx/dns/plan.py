"""What to change in a zone's apex MX records: pure functions, plain data in and out.

The rules are the seed design's safety rules. The primary MX records are never in
a plan. Backups all share one preference, strictly worse than every primary (Roller
Network's Secondary MX loops mail back to itself when it is the most preferred).
Only records this tool created (marked in the record comment) or exact duplicates
of a wanted record are ever deleted; any other MX record is reported, not touched.
Creates come before deletes, so the published MX set never shrinks mid-change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from backupmx.core.settings import BackupMX, Domain

# Written into the Cloudflare record comment of every record this tool creates;
# the only proof of ownership the zone can carry.
MANAGED_MARKER = "managed-by: backupmx"
NULL_MX = "."


@dataclass(frozen=True)
class MXRecord:
    """One apex MX record as the zone holds it (``id`` is None for a record still to create)."""

    name: str
    host: str
    priority: int
    id: str | None = None
    comment: str | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.priority, self.host)

    def owned(self, marker: str) -> bool:
        return bool(self.comment) and marker in self.comment

    def render(self) -> str:
        return f"MX {self.name} {self.priority} {self.host}"


@dataclass(frozen=True)
class Plan:
    """Record-level changes for one domain, or the reason it must not change."""

    domain: str
    creates: tuple[MXRecord, ...] = ()
    deletes: tuple[MXRecord, ...] = ()
    warnings: tuple[str, ...] = ()
    refusal: str | None = None

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    @property
    def changed(self) -> bool:
        return bool(self.creates or self.deletes)

    def diff(self) -> list[str]:
        """``+``/``-`` lines, creates first (the order they must be applied in)."""
        return [f"+ {r.render()}" for r in self.creates] + [f"- {r.render()}" for r in self.deletes]

    def render(self) -> str:
        if self.refused:
            lines = [f"MX {self.domain}: REFUSED: {self.refusal}"]
        elif self.changed:
            lines = self.diff()
        else:
            lines = [f"MX {self.domain}: no change"]
        return "\n".join(lines + [f"! {warning}" for warning in self.warnings])


def refuse(domain: str, reason: str, warnings: Iterable[str] = ()) -> Plan:
    return Plan(domain, refusal=reason, warnings=tuple(warnings))


def apex_mx(domain: Domain, records: Iterable[MXRecord]) -> list[MXRecord]:
    name = domain.name.lower()
    return [r for r in records if r.name.lower().rstrip(".") == name]


def plan(domain: Domain, backup: BackupMX, existing_records: Iterable[MXRecord], record_count: int,
         quota: int, ownership_marker: str = MANAGED_MARKER) -> Plan:
    """The changes that make the apex MX set ``primaries + backups``, or a refusal."""
    existing = apex_mx(domain, existing_records)
    primary_hosts = {mx.host for mx in domain.primary_mx}
    primaries = [r for r in existing if r.host in primary_hosts]
    others = [r for r in existing if r.host not in primary_hosts]
    warnings = _primary_warnings(domain, primaries)

    reason = _unsafe_primaries(domain, backup, existing, primaries)
    if reason:
        return refuse(domain.name, reason, warnings)
    wanted = [MXRecord(domain.name, host, backup.priority, comment=ownership_marker) for host in backup.hosts]
    wanted_keys = {record.key for record in wanted}

    kept, extra = _split_duplicates(others, wanted_keys, ownership_marker)
    # An extra copy of a wanted record is an exact duplicate: safe to delete.
    deletes, foreign = list(extra), []
    for record in others:
        if record in kept or record in extra:
            continue
        (deletes if record.owned(ownership_marker) else foreign).append(record)

    best_primary = min(r.priority for r in primaries)
    for record in foreign:
        if record.host in backup.hosts and record.priority <= best_primary:
            return refuse(domain.name, f"{record.render()} was not created by backupmx and makes the backup "
                          f"as preferred as the primary (mail would loop at the provider); remove it by hand "
                          f"and run again", warnings)
        warnings.append(_foreign_warning(record, best_primary))

    present = {record.key for record in kept}
    creates = [record for record in wanted if record.key not in present]
    needed = record_count + len(creates)
    if needed > quota:
        return refuse(domain.name, f"zone {domain.zone} holds {record_count} of {quota} records; adding "
                      f"{len(creates)} needs {needed}; delete {needed - quota} unused record(s) first", warnings)
    return Plan(domain.name, tuple(creates), tuple(deletes), tuple(warnings))


def plan_removal(domain: Domain, backup: BackupMX, existing: Iterable[MXRecord],
                 ownership_marker: str = MANAGED_MARKER) -> Plan:
    """Rollback: delete the backup records (ours, or exact wanted matches), never a primary."""
    records = apex_mx(domain, existing)
    primary_hosts = {mx.host for mx in domain.primary_mx}
    wanted_keys = {(backup.priority, host) for host in backup.hosts}
    deletes, warnings = [], []
    for record in records:
        if record.host in primary_hosts:
            continue
        if record.owned(ownership_marker) or record.key in wanted_keys:
            deletes.append(record)
        else:
            warnings.append(f"{record.render()} was not created by backupmx; it is left untouched")
    if deletes and not any(r.host in primary_hosts for r in records):
        warnings.append(f"no primary MX is published for {domain.name}: after the removal the domain has "
                        f"{len(records) - len(deletes)} MX record(s)")
    return Plan(domain.name, deletes=tuple(deletes), warnings=tuple(warnings))


def _unsafe_primaries(domain: Domain, backup: BackupMX, existing: list[MXRecord],
                      primaries: list[MXRecord]) -> str | None:
    """Why adding backups would be unsafe given the primaries, or None."""
    if any(r.host == NULL_MX for r in existing):
        return (f"{domain.name} publishes a null MX (RFC 7505: it accepts no mail); remove it before "
                f"adding a backup MX")
    present = {r.host for r in primaries}
    missing = [mx for mx in domain.primary_mx if mx.host not in present]
    if missing:
        names = ", ".join(f"{mx.priority} {mx.host}" for mx in missing)
        return (f"declared primary MX {names} is not in the zone: the backups would become the most "
                f"preferred MX, which the provider forbids; publish the primary first")
    worst = max([r.priority for r in primaries] + [mx.priority for mx in domain.primary_mx])
    if backup.priority <= worst:
        return (f"backup preference {backup.priority} is not worse than primary preference {worst}; use a "
                f"number greater than {worst} in backup_mx.priority")
    return None


def _split_duplicates(records: list[MXRecord], wanted_keys: set[tuple[int, str]],
                      marker: str) -> tuple[list[MXRecord], list[MXRecord]]:
    """Records matching a wanted key: one kept per key (ours preferred), the extra copies."""
    kept, extra = [], []
    for key in sorted(wanted_keys):
        matches = sorted((r for r in records if r.key == key), key=lambda r: not r.owned(marker))
        kept.extend(matches[:1])
        extra.extend(matches[1:])
    return kept, extra


def _primary_warnings(domain: Domain, primaries: list[MXRecord]) -> list[str]:
    declared = {mx.host: mx.priority for mx in domain.primary_mx}
    return [f"primary {r.render()} differs from the declared preference {declared[r.host]}; this tool never "
            f"changes a primary: fix the inventory or the zone by hand"
            for r in primaries if r.priority != declared[r.host]]


def _foreign_warning(record: MXRecord, best_primary: int) -> str:
    if record.priority < best_primary:
        effect = "senders prefer it over the primary"
    elif record.priority == best_primary:
        effect = "senders split mail between it and the primary"
    else:
        effect = "senders may deliver there when the primary is down"
    return f"{record.render()} is not declared: {effect}; it is left untouched"
