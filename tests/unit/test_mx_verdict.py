"""The MX plan's own safety verdict, and the records it carries: pure, no server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from backupmx.core.settings import BackupMX, Domain, MXHost
from backupmx.dns.plan import MANAGED_MARKER, MXRecord, UnsafePlan, plan, plan_removal
from backupmx.dns.render import summary

ZONE = "viktorbarzin.me"
PRIMARY = "mail.viktorbarzin.me"
BACKUPS = ("mail.rollernet.us", "mail2.rollernet.us")
DOMAIN = Domain(ZONE, ZONE, (MXHost(PRIMARY, 1),))
BACKUP = BackupMX("rollernet", BACKUPS, 20)


def mx(host: str, priority: int, ours: bool = False, name: str = ZONE) -> MXRecord:
    return MXRecord(name, host, priority, id=f"id-{host}-{priority}", comment=MANAGED_MARKER if ours else None)


def publish(records, record_count: int = 10, quota: int = 200, domain: Domain = DOMAIN, backup: BackupMX = BACKUP):
    return plan(domain, backup, records, record_count=record_count, quota=quota)


def refusal_raised(result) -> str:
    with pytest.raises(UnsafePlan) as refused:
        result.raise_if_unsafe()
    return str(refused.value)


# ------------------------------------------------------------------ refusals


def test_backup_not_worse_than_the_primary_refuses():
    # The config model refuses this pair too; the planner must not rely on that.
    result = publish([mx(PRIMARY, 20)], domain=Domain(ZONE, ZONE, (MXHost(PRIMARY, 20),)))
    assert result.refusal == ("backup preference 20 is not worse than primary preference 20; use a number "
                              "greater than 20 in backup_mx.priority")
    assert refusal_raised(result) == f"MX {ZONE}: {result.refusal}"


def test_primary_at_another_preference_than_declared_refuses_naming_both_and_the_key():
    # Zone 10, inventory 1: the backups would go in next to an MX set nobody declared, and a
    # check for the declared "1 mail.viktorbarzin.me" would wait for a record that never appears.
    result = plan(DOMAIN, BACKUP, [mx(PRIMARY, 10)], record_count=10, quota=200, domain_key="domains[0]")
    assert result.refusal == ("primary MX mail.viktorbarzin.me has preference 10 in the zone, 1 in the inventory; "
                              "set domains[0].primary_mx[0].priority = 10 (this tool never changes a primary "
                              "record) or fix the zone by hand, and run again")
    assert "\n" not in refusal_raised(result)
    assert result.creates  # worked out, but the verdict forbids applying them
    assert not [w for w in result.warnings if "differs" in w]  # said once, in the refusal


def test_primary_at_another_preference_names_the_key_without_the_domain_index():
    domain = Domain(ZONE, ZONE, (MXHost("mx0.viktorbarzin.me", 1), MXHost(PRIMARY, 5)))
    result = publish([mx("mx0.viktorbarzin.me", 1), mx(PRIMARY, 10)], domain=domain)
    assert ("primary MX mail.viktorbarzin.me has preference 10 in the zone, 5 in the inventory; set "
            "primary_mx[1].priority of domain viktorbarzin.me = 10") in result.refusal


def test_primary_published_at_the_declared_preference_and_another_warns_only():
    result = publish([mx(PRIMARY, 1), mx(PRIMARY, 10)])
    assert not result.refused
    assert result.warnings == (f"primary MX {ZONE} 10 {PRIMARY} differs from the declared preference 1; this tool "
                               "never changes a primary: fix the inventory or the zone by hand",)


def test_the_set_wanted_after_the_change_holds_only_records_read_or_created():
    # What stage 5 waits for: the zone's own primary (as read) and the backups it creates.
    result = publish([mx(PRIMARY, 1), mx(PRIMARY, 10), mx(BACKUPS[0], 30, ours=True)])
    assert [r.key for r in result.desired] == [(1, PRIMARY), (10, PRIMARY), (20, BACKUPS[0]), (20, BACKUPS[1])]


def test_backup_better_than_the_declared_primary_refuses():
    result = publish([mx(PRIMARY, 30)], domain=Domain(ZONE, ZONE, (MXHost(PRIMARY, 30),)))
    assert "backup preference 20 is not worse than primary preference 30" in refusal_raised(result)


def test_primary_missing_refuses_and_says_what_to_do():
    result = publish([mx("other.example.net", 30)])
    message = refusal_raised(result)
    assert "declared primary MX 1 mail.viktorbarzin.me is not in the zone" in message
    assert message.endswith("publish the primary first")
    # The notes stop where the verdict did: the foreign record is not judged against a missing primary.
    assert result.warnings == ()


def test_quota_full_refuses_with_the_numbers():
    result = publish([mx(PRIMARY, 1)], record_count=199, quota=200)
    assert refusal_raised(result) == (f"MX {ZONE}: zone {ZONE} holds 199 of 200 records; adding 2 needs 201; "
                                      "delete 1 unused record(s) first")


def test_quota_exactly_full_after_the_creates_is_safe():
    publish([mx(PRIMARY, 1)], record_count=198, quota=200).raise_if_unsafe()


def test_record_count_known_later_is_judged_again():
    draft = publish([mx(PRIMARY, 1)], record_count=0)
    assert not draft.refused
    assert replace(draft, record_count=199).refused


def test_foreign_record_as_preferred_as_the_primary_refuses():
    result = publish([mx(PRIMARY, 1), mx(BACKUPS[1], 1)])
    assert refusal_raised(result) == (
        f"MX {ZONE}: MX {ZONE} 1 mail2.rollernet.us was not created by backupmx and makes the backup as preferred "
        "as the primary (mail would loop at the provider); remove it by hand and run again")
    assert mx(BACKUPS[1], 1) in result.untouched and mx(BACKUPS[1], 1) not in result.deletes


def test_foreign_records_noted_before_the_refusing_one_only():
    records = [mx(PRIMARY, 1), mx("a.example.net", 30), mx(BACKUPS[0], 0), mx("b.example.net", 40)]
    result = publish(records)
    assert result.refused and [w.split(" is not declared")[0] for w in result.warnings] == [
        f"MX {ZONE} 30 a.example.net"]


def test_null_mx_refuses():
    assert "null MX" in refusal_raised(publish([mx(PRIMARY, 1), mx(".", 0)]))


def test_a_refused_plan_still_shows_its_verdict_not_its_changes():
    result = publish([mx(PRIMARY, 1)], record_count=199, quota=200)
    assert len(result.creates) == 2
    assert summary(result) == f"MX {ZONE}: REFUSED: {result.refusal}"


def test_a_foreign_record_elsewhere_is_a_warning_and_the_plan_is_safe():
    result = publish([mx(PRIMARY, 1), mx("other.example.net", 30)])
    result.raise_if_unsafe()
    assert result.untouched == (mx("other.example.net", 30),) and not result.deletes
    assert result.warnings == (f"MX {ZONE} 30 other.example.net is not declared: senders may deliver there when "
                               "the primary is down; it is left untouched",)


def test_removal_is_never_refused():
    result = plan_removal(DOMAIN, BACKUP, [mx(BACKUPS[0], 20, ours=True)])
    result.raise_if_unsafe()
    assert "no primary MX is published" in result.warnings[0]


# ------------------------------------------------------------------ what the plan carries


def test_publish_plan_carries_the_apex_records_read_and_the_set_wanted():
    other_name = mx("x.example.net", 5, name=f"sub.{ZONE}")
    result = publish([mx(PRIMARY, 1), other_name, mx(BACKUPS[0], 30, ours=True)])
    assert result.existing == (mx(PRIMARY, 1), mx(BACKUPS[0], 30, ours=True))
    assert [r.key for r in result.desired] == [(1, PRIMARY), (20, BACKUPS[0]), (20, BACKUPS[1])]
    assert [r.key for r in result.creates] == [(20, BACKUPS[0]), (20, BACKUPS[1])]
    assert [r.key for r in result.deletes] == [(30, BACKUPS[0])]


def test_removal_plan_desires_what_it_keeps():
    records = [mx(PRIMARY, 1), mx(BACKUPS[0], 20, ours=True), mx(BACKUPS[1], 20), mx("other.example.net", 30)]
    result = plan_removal(DOMAIN, BACKUP, records)
    assert [r.key for r in result.deletes] == [(20, BACKUPS[0]), (20, BACKUPS[1])]
    assert result.desired == (mx(PRIMARY, 1), mx("other.example.net", 30))
    assert result.untouched == (mx("other.example.net", 30),)


def test_the_primary_is_in_no_change_even_when_marked_as_ours():
    records = [mx(PRIMARY, 1, ours=True), mx(BACKUPS[0], 20, ours=True)]
    for result in (publish(records), plan_removal(DOMAIN, BACKUP, records)):
        assert PRIMARY not in {r.host for r in result.creates + result.deletes}
