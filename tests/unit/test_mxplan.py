"""MX planning as pure functions: every rule, no server."""

from __future__ import annotations

from backupmx.core.settings import BackupMX, Domain, MXHost
from backupmx.dns.plan import MANAGED_MARKER, MXRecord, plan, plan_removal
from backupmx.dns.render import diff, summary

ZONE = "viktorbarzin.me"
PRIMARY = "mail.viktorbarzin.me"
BACKUPS = ("mail.rollernet.us", "mail2.rollernet.us")
DOMAIN = Domain(ZONE, ZONE, (MXHost(PRIMARY, 1),))
BACKUP = BackupMX("rollernet", BACKUPS, 20)
QUOTA = 200


def mx(host: str, priority: int, ours: bool = False, record_id: str | None = None, name: str = ZONE) -> MXRecord:
    return MXRecord(name, host, priority, id=record_id or f"id-{host}-{priority}",
                    comment=MANAGED_MARKER if ours else None)


def primary() -> MXRecord:
    return mx(PRIMARY, 1, record_id="primary")


def applied() -> list[MXRecord]:
    return [primary(), mx(BACKUPS[0], 20, ours=True), mx(BACKUPS[1], 20, ours=True)]


def keys(records) -> list[tuple[int, str]]:
    return [record.key for record in records]


def test_fresh_zone_gets_exactly_two_creates():
    result = plan(DOMAIN, BACKUP, [primary()], record_count=190, quota=QUOTA)
    assert not result.refused and not result.deletes and not result.warnings
    assert keys(result.creates) == [(20, BACKUPS[0]), (20, BACKUPS[1])]
    assert all(r.comment == MANAGED_MARKER and r.name == ZONE and r.id is None for r in result.creates)
    assert summary(result) == f"+ MX {ZONE} 20 mail.rollernet.us\n+ MX {ZONE} 20 mail2.rollernet.us"


def test_already_applied_is_an_empty_plan():
    result = plan(DOMAIN, BACKUP, applied(), record_count=192, quota=QUOTA)
    assert not result.changed and not result.refused and not result.warnings
    assert summary(result) == f"MX {ZONE}: no change"


def test_wanted_records_not_made_by_us_count_as_present():
    # Someone added the exact records by hand: nothing to create, nothing to delete.
    records = [primary(), mx(BACKUPS[0], 20), mx(BACKUPS[1], 20)]
    assert not plan(DOMAIN, BACKUP, records, record_count=192, quota=QUOTA).changed


def test_quota_refusal_names_the_numbers():
    result = plan(DOMAIN, BACKUP, [primary()], record_count=199, quota=QUOTA)
    assert result.refused and len(result.creates) == 2
    assert "zone viktorbarzin.me holds 199 of 200 records; adding 2 needs 201" in result.refusal
    assert "REFUSED" in summary(result)


def test_quota_allows_filling_the_zone_exactly():
    assert len(plan(DOMAIN, BACKUP, [primary()], record_count=198, quota=QUOTA).creates) == 2


def test_quota_counts_only_what_is_still_missing():
    records = [primary(), mx(BACKUPS[0], 20, ours=True)]
    result = plan(DOMAIN, BACKUP, records, record_count=199, quota=QUOTA)
    assert keys(result.creates) == [(20, BACKUPS[1])]


def test_declared_primary_missing_from_the_zone_refuses():
    result = plan(DOMAIN, BACKUP, [], record_count=189, quota=QUOTA)
    assert result.refused and "declared primary MX 1 mail.viktorbarzin.me is not in the zone" in result.refusal
    assert "most preferred" in result.refusal


def test_one_of_two_declared_primaries_missing_refuses():
    domain = Domain(ZONE, ZONE, (MXHost(PRIMARY, 1), MXHost("mx2.viktorbarzin.me", 5)))
    result = plan(domain, BACKUP, [primary()], record_count=190, quota=QUOTA)
    assert result.refused and "5 mx2.viktorbarzin.me" in result.refusal


def test_primary_in_the_zone_at_another_preference_than_declared_refuses():
    # The inventory says 1, but the zone's primary sits at 20: backups would tie with it.
    records = [mx(PRIMARY, 20, record_id="primary")]
    result = plan(DOMAIN, BACKUP, records, record_count=190, quota=QUOTA)
    assert result.refused and "has preference 20 in the zone, 1 in the inventory" in result.refusal


def test_backup_preference_better_than_the_declared_primary_refuses():
    # The config model refuses this too; the planner must not rely on that.
    domain = Domain(ZONE, ZONE, (MXHost(PRIMARY, 30),))
    result = plan(domain, BACKUP, [mx(PRIMARY, 30)], record_count=190, quota=QUOTA)
    assert result.refused and "not worse than primary preference 30" in result.refusal


def test_backups_we_own_at_unequal_preferences_are_fixed():
    records = [primary(), mx(BACKUPS[0], 20, ours=True), mx(BACKUPS[1], 30, ours=True)]
    result = plan(DOMAIN, BACKUP, records, record_count=192, quota=QUOTA)
    assert keys(result.creates) == [(20, BACKUPS[1])]
    assert keys(result.deletes) == [(30, BACKUPS[1])]
    # Creates come first: the MX set never shrinks mid-change.
    assert diff(result) == [f"+ MX {ZONE} 20 mail2.rollernet.us", f"- MX {ZONE} 30 mail2.rollernet.us"]


def test_our_record_at_the_wrong_priority_is_replaced():
    records = [primary(), mx(BACKUPS[0], 10, ours=True), mx(BACKUPS[1], 20, ours=True)]
    result = plan(DOMAIN, BACKUP, records, record_count=192, quota=QUOTA)
    assert keys(result.creates) == [(20, BACKUPS[0])] and keys(result.deletes) == [(10, BACKUPS[0])]
    assert result.deletes[0].id == f"id-{BACKUPS[0]}-10"


def test_foreign_mx_is_a_warning_only_and_untouched():
    records = [primary(), mx("other.example.net", 30)]
    result = plan(DOMAIN, BACKUP, records, record_count=191, quota=QUOTA)
    assert not result.refused and len(result.creates) == 2 and not result.deletes
    warning = (f"MX {ZONE} 30 other.example.net is not declared: senders may deliver there when the primary "
               "is down; it is left untouched")
    assert result.warnings == (warning,)
    assert summary(result).endswith("! " + result.warnings[0])


def test_foreign_mx_as_preferred_as_the_primary_says_what_it_means():
    equal = plan(DOMAIN, BACKUP, [primary(), mx("other.example.net", 1)], record_count=191, quota=QUOTA)
    assert "split mail between it and the primary" in equal.warnings[0]
    better = plan(DOMAIN, BACKUP, [primary(), mx("other.example.net", 0)], record_count=191, quota=QUOTA)
    assert "prefer it over the primary" in better.warnings[0] and not better.refused


def test_foreign_backup_host_at_another_preference_is_left_alone():
    records = [primary(), mx(BACKUPS[1], 40)]
    result = plan(DOMAIN, BACKUP, records, record_count=191, quota=QUOTA)
    assert keys(result.creates) == [(20, BACKUPS[0]), (20, BACKUPS[1])] and not result.deletes
    assert result.warnings and "40 mail2.rollernet.us" in result.warnings[0]


def test_foreign_backup_host_as_preferred_as_the_primary_refuses():
    records = [primary(), mx(BACKUPS[0], 1)]
    result = plan(DOMAIN, BACKUP, records, record_count=191, quota=QUOTA)
    assert result.refused and "1 mail.rollernet.us was not created by backupmx" in result.refusal


def test_exact_duplicate_of_a_wanted_record_is_deleted_and_ours_kept():
    records = applied() + [mx(BACKUPS[0], 20, record_id="dup")]
    result = plan(DOMAIN, BACKUP, records, record_count=193, quota=QUOTA)
    assert not result.creates and [r.id for r in result.deletes] == ["dup"]


def test_our_stale_record_for_a_host_no_longer_wanted_is_deleted():
    records = applied() + [mx("old.backup.example", 20, ours=True)]
    result = plan(DOMAIN, BACKUP, records, record_count=193, quota=QUOTA)
    assert not result.creates and keys(result.deletes) == [(20, "old.backup.example")]


def test_the_primary_is_never_in_a_plan_even_if_marked_as_ours():
    records = [mx(PRIMARY, 1, ours=True), mx(PRIMARY, 1, record_id="dup-primary")]
    result = plan(DOMAIN, BACKUP, records, record_count=191, quota=QUOTA)
    touched = result.creates + result.deletes
    assert PRIMARY not in {r.host for r in touched} and len(result.creates) == 2


def test_null_mx_refuses():
    result = plan(DOMAIN, BACKUP, [primary(), mx(".", 0)], record_count=191, quota=QUOTA)
    assert result.refused and "null MX" in result.refusal


def test_records_of_other_names_are_ignored():
    records = [primary(), mx("other.example.net", 5, ours=True, name=f"sub.{ZONE}"),
               MXRecord(ZONE.upper() + ".", BACKUPS[0], 20, id="upper", comment=MANAGED_MARKER)]
    result = plan(DOMAIN, BACKUP, records, record_count=192, quota=QUOTA)
    assert keys(result.creates) == [(20, BACKUPS[1])] and not result.deletes and not result.warnings


def test_removal_deletes_only_backup_records():
    records = applied() + [mx("other.example.net", 30), mx(BACKUPS[0], 20, record_id="hand-made")]
    result = plan_removal(DOMAIN, BACKUP, records)
    assert not result.creates
    assert sorted(r.id for r in result.deletes) == sorted(
        [f"id-{BACKUPS[0]}-20", f"id-{BACKUPS[1]}-20", "hand-made"])
    assert PRIMARY not in {r.host for r in result.deletes}
    assert result.warnings == (f"MX {ZONE} 30 other.example.net was not created by backupmx; it is left untouched",)
    assert summary(result).splitlines()[0] == f"- MX {ZONE} 20 mail.rollernet.us"


def test_removal_leaves_foreign_backup_host_at_other_priority():
    result = plan_removal(DOMAIN, BACKUP, [primary(), mx(BACKUPS[0], 50)])
    assert not result.deletes and result.warnings


def test_removal_when_nothing_is_there_is_empty():
    result = plan_removal(DOMAIN, BACKUP, [primary()])
    assert not result.changed and summary(result) == f"MX {ZONE}: no change"


def test_removal_warns_when_no_primary_remains():
    result = plan_removal(DOMAIN, BACKUP, [mx(BACKUPS[0], 20, ours=True)])
    assert len(result.deletes) == 1 and "no primary MX is published" in result.warnings[0]
