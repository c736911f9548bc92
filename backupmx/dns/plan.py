"""A zone's apex MX plan as data: the records read, the records wanted, the changes, and its verdict.

The shape is octoDNS's ``Plan``: the planner works out the changes; the plan judges
them itself (``verdict``) and refuses to be applied when they are unsafe
(``raise_if_unsafe``). Its text (the record-level diff) is ``backupmx.dns.render``.

The rules are the seed design's safety rules. The primary MX records are never in
a plan. Backups all share one preference, strictly worse than every primary (Roller
Network's Secondary MX loops mail back to itself when it is the most preferred).
Only records this tool created (marked in the record comment) or exact duplicates
of a wanted record are ever deleted; any other MX record is reported, not touched.
Creates come before deletes, so the published MX set never shrinks mid-change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from backupmx.core.errors import BackupMXError
from backupmx.core.settings import BackupMX, Domain

# Written into the Cloudflare record comment of every record this tool creates;
# the only proof of ownership the zone can carry.
MANAGED_MARKER = "managed-by: backupmx"
NULL_MX = "."


class UnsafePlan(BackupMXError):
    """A plan its own verdict refuses: nothing of it is applied."""


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
class Verdict:
    """Why a plan must not be applied (None: it may), and what its review noted on the way."""

    refusal: str | None
    warnings: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class MXPlan(ABC):
    """The apex MX records of one domain: as read, as wanted, and the changes between them.

    ``existing`` holds the apex MX records only; ``untouched`` those neither ours nor
    wanted, which no plan ever changes. The changes are worked out even when the
    verdict refuses them: the verdict decides whether they may be applied.
    """

    domain: Domain
    backup: BackupMX
    existing: tuple[MXRecord, ...]
    creates: tuple[MXRecord, ...] = ()
    deletes: tuple[MXRecord, ...] = ()
    untouched: tuple[MXRecord, ...] = ()
    marker: str = MANAGED_MARKER

    @property
    def desired(self) -> tuple[MXRecord, ...]:
        """The apex MX records the zone holds once the plan is applied: those read and kept, then those created.

        Nothing else: a check after the change waits only for records the plan saw
        or made, never for one it merely expected (a declared primary at another
        preference than the zone's would never appear).
        """
        return tuple(record for record in self.existing if record not in self.deletes) + self.creates

    @cached_property
    def verdict(self) -> Verdict:
        """The plan's review (``review``), made once: a plan does not change."""
        return self.review()

    @abstractmethod
    def review(self) -> Verdict:
        """The rules of this kind of change, in order."""

    @property
    def primaries(self) -> list[MXRecord]:
        """The existing records of a declared primary host (whatever their preference)."""
        hosts = {mx.host for mx in self.domain.primary_mx}
        return [record for record in self.existing if record.host in hosts]

    @property
    def changed(self) -> bool:
        return bool(self.creates or self.deletes)

    @property
    def refusal(self) -> str | None:
        return self.verdict.refusal

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.verdict.warnings

    def raise_if_unsafe(self) -> None:
        refusal = self.refusal
        if refusal is not None:
            raise UnsafePlan(f"MX {self.domain.name}: {refusal}")


@dataclass(frozen=True, kw_only=True)
class PublishPlan(MXPlan):
    """Stage 5: the backup records in, next to the primaries; ``record_count`` of ``quota`` used."""

    record_count: int
    quota: int
    # The domain's inventory key (``domains[0]``), named in a refusal that asks for an inventory fix.
    domain_key: str | None = None

    def review(self) -> Verdict:
        """The rules in order; the first broken one ends the review, and the notes are those made until then."""
        primaries = self.primaries
        warnings = _primary_warnings(self.domain, primaries)
        reason = _unsafe_primaries(self.domain, self.backup, list(self.existing), primaries, self.domain_key)
        if reason:
            return Verdict(reason, tuple(warnings))
        best_primary = min(r.priority for r in primaries)
        for record in self.untouched:
            if record.host in self.backup.hosts and record.priority <= best_primary:
                return Verdict(f"{record.render()} was not created by backupmx and makes the backup as preferred "
                               f"as the primary (mail would loop at the provider); remove it by hand and run again",
                               tuple(warnings))
            warnings.append(_foreign_warning(record, best_primary))
        needed = self.record_count + len(self.creates)
        if needed > self.quota:
            return Verdict(f"zone {self.domain.zone} holds {self.record_count} of {self.quota} records; adding "
                           f"{len(self.creates)} needs {needed}; delete {needed - self.quota} unused record(s) first",
                           tuple(warnings))
        return Verdict(None, tuple(warnings))


@dataclass(frozen=True, kw_only=True)
class RemovalPlan(MXPlan):
    """Rollback: the backup records out; never refused (removing a backup cannot route mail wrong)."""

    @property
    def desired(self) -> tuple[MXRecord, ...]:
        return tuple(record for record in self.existing if record not in self.deletes)

    def review(self) -> Verdict:
        warnings = [f"{record.render()} was not created by backupmx; it is left untouched"
                    for record in self.untouched]
        if self.deletes and not self.primaries:
            warnings.append(f"no primary MX is published for {self.domain.name}: after the removal the domain "
                            f"has {len(self.existing) - len(self.deletes)} MX record(s)")
        return Verdict(None, tuple(warnings))


def apex_mx(domain: Domain, records: Iterable[MXRecord]) -> list[MXRecord]:
    name = domain.name.lower()
    return [r for r in records if r.name.lower().rstrip(".") == name]


def wanted_backups(domain: Domain, backup: BackupMX, marker: str = MANAGED_MARKER) -> tuple[MXRecord, ...]:
    return tuple(MXRecord(domain.name, host, backup.priority, comment=marker) for host in backup.hosts)


def plan(domain: Domain, backup: BackupMX, existing_records: Iterable[MXRecord], record_count: int,
         quota: int, ownership_marker: str = MANAGED_MARKER, domain_key: str | None = None) -> PublishPlan:
    """The changes that make the apex MX set ``primaries + backups``; ``verdict()`` says if they may be made.

    ``domain_key`` is the domain's inventory key (``domains[0]``): a refusal that asks
    for an inventory fix names the whole key.
    """
    existing = apex_mx(domain, existing_records)
    primary_hosts = {mx.host for mx in domain.primary_mx}
    others = [r for r in existing if r.host not in primary_hosts]
    wanted = wanted_backups(domain, backup, ownership_marker)

    kept, extra = _split_duplicates(others, {record.key for record in wanted}, ownership_marker)
    # An extra copy of a wanted record is an exact duplicate: safe to delete.
    deletes, untouched = list(extra), []
    for record in others:
        if record in kept or record in extra:
            continue
        (deletes if record.owned(ownership_marker) else untouched).append(record)

    present = {record.key for record in kept}
    creates = [record for record in wanted if record.key not in present]
    return PublishPlan(domain=domain, backup=backup, existing=tuple(existing), creates=tuple(creates),
                       deletes=tuple(deletes), untouched=tuple(untouched), marker=ownership_marker,
                       record_count=record_count, quota=quota, domain_key=domain_key)


def plan_removal(domain: Domain, backup: BackupMX, existing: Iterable[MXRecord],
                 ownership_marker: str = MANAGED_MARKER) -> RemovalPlan:
    """Rollback: delete the backup records (ours, or exact wanted matches), never a primary."""
    records = apex_mx(domain, existing)
    primary_hosts = {mx.host for mx in domain.primary_mx}
    wanted_keys = {(backup.priority, host) for host in backup.hosts}
    deletes, untouched = [], []
    for record in records:
        if record.host in primary_hosts:
            continue
        if record.owned(ownership_marker) or record.key in wanted_keys:
            deletes.append(record)
        else:
            untouched.append(record)
    return RemovalPlan(domain=domain, backup=backup, existing=tuple(records), deletes=tuple(deletes),
                       untouched=tuple(untouched), marker=ownership_marker)


def _unsafe_primaries(domain: Domain, backup: BackupMX, existing: list[MXRecord],
                      primaries: list[MXRecord], domain_key: str | None = None) -> str | None:
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
    moved = _moved_primaries(domain, primaries, domain_key)
    if moved:
        return moved
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


def _moved_primaries(domain: Domain, primaries: list[MXRecord], domain_key: str | None) -> str | None:
    """A declared primary the zone publishes only at another preference than the inventory's, or None.

    The plan would publish the backups next to an MX set that is not the one declared,
    and the check after it (and the drift probe) would look for a primary record that
    never appears: refused here, before anything changes.
    """
    parts = []
    for position, declared in enumerate(domain.primary_mx):
        published = sorted({r.priority for r in primaries if r.host == declared.host})
        if not published or declared.priority in published:
            continue
        key = f"{domain_key}.primary_mx[{position}].priority" if domain_key else \
            f"primary_mx[{position}].priority of domain {domain.name}"
        zone = " and ".join(str(priority) for priority in published)
        parts.append(f"primary MX {declared.host} has preference {zone} in the zone, {declared.priority} in the "
                     f"inventory; set {key} = {published[0]}")
    if not parts:
        return None
    return "; ".join(parts) + " (this tool never changes a primary record) or fix the zone by hand, and run again"


def _primary_warnings(domain: Domain, primaries: list[MXRecord]) -> list[str]:
    """A declared primary the zone also publishes at another preference (the declared one is there too)."""
    declared = {mx.host: mx.priority for mx in domain.primary_mx}
    present = {r.key for r in primaries}
    return [f"primary {r.render()} differs from the declared preference {declared[r.host]}; this tool never "
            f"changes a primary: fix the inventory or the zone by hand"
            for r in primaries if r.priority != declared[r.host] and (declared[r.host], r.host) in present]


def _foreign_warning(record: MXRecord, best_primary: int) -> str:
    if record.priority < best_primary:
        effect = "senders prefer it over the primary"
    elif record.priority == best_primary:
        effect = "senders split mail between it and the primary"
    else:
        effect = "senders may deliver there when the primary is down"
    return f"{record.render()} is not declared: {effect}; it is left untouched"
