"""The drift check's pure comparisons: the MX set, the relay networks, files, the summary.
deploys/drift.py through the pyinfra CLI against the sandbox: tests/cli/test_drift.py."""

from __future__ import annotations

from support.seed import BACKUPS, PRIMARY, seed_settings

from backupmx.lifecycle import drift as dr

SEED = seed_settings()
DOMAIN = SEED.domains[0]
FULL = {PRIMARY} | BACKUPS


def messages(findings):
    return [(finding.status, finding.message) for finding in findings]


def test_the_full_mx_set_is_no_drift():
    [finding] = dr.mx_drift(DOMAIN, SEED, FULL, "DNS x")
    assert finding.status == dr.OK


def test_a_missing_backup_and_a_missing_primary_are_named():
    assert messages(dr.mx_drift(DOMAIN, SEED, FULL - {(20, "mail2.rollernet.us")}, "DNS x")) == [
        (dr.DRIFT, "backup 20 mail2.rollernet.us is missing (DNS x)")]
    assert messages(dr.mx_drift(DOMAIN, SEED, FULL - {(1, "mail.viktorbarzin.me")}, "DNS x")) == [
        (dr.DRIFT, "primary 1 mail.viktorbarzin.me is missing (DNS x)")]


def test_a_wrong_preference_and_a_foreign_record():
    live = {(1, "mail.viktorbarzin.me"), (10, "mail.rollernet.us"), (20, "mail2.rollernet.us"), (5, "mx.evil.test")}
    assert messages(dr.mx_drift(DOMAIN, SEED, live, "DNS x")) == [
        (dr.DRIFT, "backup mail.rollernet.us has preference 10, wanted 20 (DNS x)"),
        (dr.DRIFT, "unexpected MX 5 mx.evil.test (DNS x)"),
    ]


def test_no_mx_at_all():
    findings = dr.mx_drift(DOMAIN, SEED, set(), "DNS x")
    assert len(findings) == 3 and all(finding.status == dr.DRIFT for finding in findings)


def test_cidr_lists_compare_as_networks():
    assert dr.cidr_drift("whitelist", "h", ["192.0.2.0/24"], ["192.0.2.0/24"], "f")[0].status == dr.OK
    [finding] = dr.cidr_drift("whitelist", "h", ["192.0.2.0/24", "2001:db8::/48"], ["192.0.2.0/24", "198.51.100.0/24"], "f")
    assert finding.status == dr.DRIFT
    assert finding.message == "f lacks 2001:db8::/48; has 198.51.100.0/24 beyond the inventory"
    assert dr.cidr_drift("whitelist", "h", ["192.0.2.0/24"], ["nonsense"], "f")[0].message == \
        "f lists nonsense, which is not a network"


def test_provider_cidr_drift_says_what_to_set():
    [finding] = dr.provider_cidr_drift(SEED, ["162.216.242.0/24", "72.51.59.0/24"], "api mail/relay_addresses")
    assert finding.status == dr.DRIFT
    assert "lacks 72.51.58.0/24" in finding.message and "has 72.51.59.0/24 beyond the inventory" in finding.message
    assert 'set relay_cidrs = ["162.216.242.0/24", "72.51.59.0/24"]' in finding.message
    assert dr.provider_cidr_drift(SEED, ["72.51.58.0/24", "162.216.242.0/24"], "x")[0].status == dr.OK


def test_files_drift():
    assert dr.files_drift("monitoring", "h", {"/a": "x"}, {"/a": "x"})[0].status == dr.OK
    assert messages(dr.files_drift("monitoring", "h", {"/a": "x", "/b": "y"}, {"/a": "z", "/b": None})) == [
        (dr.DRIFT, "/a differs"), (dr.DRIFT, "/b is missing")]


def test_summary_prints_no_drift_or_one_line_per_drift_and_notes_last():
    ok = dr.Finding("mx", "d", dr.OK, "fine")
    note = dr.Finding("mta-sts", "d", dr.NOTE, "inert")
    drift = dr.Finding("mx", "d", dr.DRIFT, "backup missing")
    unknown = dr.Finding("provider-cidrs", "rollernet", dr.UNKNOWN, "API down")
    assert dr.summary([ok, note]) == (["no drift", "note mta-sts d: inert"], False)
    lines, failing = dr.summary([ok, note, drift, unknown])
    assert failing
    assert lines == ["DRIFT mx d: backup missing", "UNKNOWN provider-cidrs rollernet: API down", "note mta-sts d: inert"]
