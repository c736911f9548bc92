"""MTA-STS follow-up: the policy for the whole MX set, id rotation, and the coverage check.

Generated policies are read back by a parser written here from RFC 8461's ABNF
(§3.1 TXT, §3.2 policy), independent of ``backupmx.dns.mtasts.parse_policy``.
"""

from __future__ import annotations

import re

import pytest
from support.seed import seed_settings

from backupmx.core.report import FAIL, PASS, WARN
from backupmx.core.settings import load_settings
from backupmx.dns import mtasts
from backupmx.dns.mtasts import (
    INERT,
    Observation,
    Policy,
    PolicyError,
    check_coverage,
    mx_hosts,
    mx_matches,
    policy_for,
    policy_id,
    rotate,
)

SEED = seed_settings()
DOMAIN = SEED.domains[0]
BACKUP = SEED.backup_mx
ALL = ["mail.viktorbarzin.me", "mail.rollernet.us", "mail2.rollernet.us"]

# ------------------------------------------------------- RFC 8461 §3.2, as ABNF

# sts-policy-term = CRLF / LF; field-delim = ":" *WSP
_LDH = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"  # RFC 5321 sub-domain (Let-dig [Ldh-str])
_DOMAIN = rf"{_LDH}(?:\.{_LDH})+"
_FIELDS = {
    "version": r"STSv1",
    "mode": r"testing|enforce|none",
    "mx": rf"(?:\*\.)?{_DOMAIN}",
    "max_age": r"[0-9]{1,10}",
}
_EXT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
_EXT_VALUE = r"[\x21-\x3a\x3c\x3e-\x7e](?:[\x20-\x3a\x3c\x3e-\x7e]*[\x21-\x3a\x3c\x3e-\x7e])?"


def rfc8461_policy(text: str) -> dict:
    """Parse a policy body strictly by RFC 8461 §3.2; anything else raises ValueError."""
    if "\r\n" in text and re.search(r"(?<!\r)\n", text):
        raise ValueError("mixed line ends")
    lines = re.split(r"\r?\n", text)
    if lines and lines[-1] == "":
        lines.pop()  # [sts-policy-term] after the last field
    fields: dict[str, list[str]] = {}
    for line in lines:
        match = re.fullmatch(rf"({_EXT_NAME}):[ \t]*(.*?)[ \t]*", line)
        if not match:
            raise ValueError(f"not a field: {line!r}")
        name, value = match.groups()
        pattern = _FIELDS.get(name, _EXT_VALUE)
        if not re.fullmatch(pattern, value):
            raise ValueError(f"bad {name} value {value!r}")
        fields.setdefault(name, []).append(value)
    for required in ("version", "mode", "max_age"):
        if len(fields.get(required, [])) != 1:
            raise ValueError(f"{required} must appear exactly once")
    if fields["mode"][0] != "none" and not fields.get("mx"):
        raise ValueError("mx required unless mode is none")
    if int(fields["max_age"][0]) > 31557600:
        raise ValueError("max_age above 31557600")
    return fields


def rfc8461_txt(record: str) -> str:
    """§3.1: sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]; returns the id."""
    sep = r"[ \t]*;[ \t]*"
    field = rf"(?:id=[A-Za-z0-9]{{1,32}}|{_EXT_NAME}=[\x21-\x3a\x3c\x3e-\x7e]{{1,}})"
    if not re.fullmatch(rf"v=STSv1(?:{sep}{field})+(?:{sep})?", record):
        raise ValueError(f"not an STS TXT record: {record!r}")
    return re.search(r"id=([A-Za-z0-9]{1,32})", record).group(1)


# ------------------------------------------------------------------- generation


def test_policy_lists_the_primary_and_every_backup_one_mx_line_each():
    text = policy_for(DOMAIN, BACKUP)
    fields = rfc8461_policy(text)
    assert fields["version"] == ["STSv1"]
    assert fields["mode"] == ["enforce"]
    assert sorted(fields["mx"]) == sorted(ALL)
    assert fields["max_age"] == [str(mtasts.DEFAULT_MAX_AGE)]
    assert text.startswith("version: STSv1\r\n")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")


@pytest.mark.parametrize("mode", mtasts.MODES)
@pytest.mark.parametrize("max_age", [0, 86400, 31557600])
def test_generated_policy_round_trips_through_an_rfc8461_parser(mode, max_age):
    text = policy_for(DOMAIN, BACKUP, mode=mode, max_age=max_age)
    fields = rfc8461_policy(text)
    ours = mtasts.parse_policy(text)
    assert (fields["mode"][0], int(fields["max_age"][0]), sorted(fields["mx"])) == (ours.mode, ours.max_age,
                                                                                   sorted(ours.mx))
    assert ours == Policy(mode, tuple(sorted(ALL)), max_age)
    assert rfc8461_txt(mtasts.txt_record(text)) == policy_id(text)


def test_the_primary_comes_first_in_mx_hosts_and_a_host_is_listed_once():
    settings = load_settings({
        "domains": [{"name": "example.org", "primary_mx": [{"host": "mx2.example.org", "priority": 10},
                                                           {"host": "mx1.example.org", "priority": 5}]}],
        "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us"], "priority": 20},
        "relay_cidrs": ["192.0.2.0/24"],
        "vault": {"addr": "https://vault.example", "secret_path": "secret/x"}
    })
    assert mx_hosts(settings.domains[0], settings.backup_mx) == ["mx1.example.org", "mx2.example.org",
                                                                 "mail.rollernet.us"]


@pytest.mark.parametrize("mode, max_age", [("enforcing", 86400), ("enforce", 31557601), ("enforce", -1),
                                           ("enforce", True)])
def test_policy_for_refuses_what_rfc8461_does_not_allow(mode, max_age):
    with pytest.raises(PolicyError):
        policy_for(DOMAIN, BACKUP, mode=mode, max_age=max_age)


# ------------------------------------------------------------------ the wildcard


@pytest.mark.parametrize("host, covered", [
    ("mail.rollernet.us", True),
    ("mail2.rollernet.us", True),
    ("MAIL2.ROLLERNET.US.", True),
    ("rollernet.us", False),
    ("rollernet.us.evil.test", False),
    ("mail.rollernet.us.evil.test", False),
    ("a.mail.rollernet.us", False),
    ("evilrollernet.us", False),
])
def test_wildcard_covers_both_backups_and_nothing_else(host, covered):
    assert mx_matches("*.rollernet.us", host) is covered


def test_a_wildcard_policy_covers_the_whole_mx_set():
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.viktorbarzin.me\r\nmx: *.rollernet.us\r\nmax_age: 86400\r\n"
    rfc8461_policy(text)
    observation = Observation("viktorbarzin.me", "abc", policy=mtasts.parse_policy(text))
    assert check_coverage(observation, ALL).status == PASS
    assert check_coverage(observation, ALL + ["rollernet.us.evil.test"]).uncovered == ("rollernet.us.evil.test",)


# ---------------------------------------------------------------------- rotation


def test_nothing_published_gets_the_text_derived_id():
    text = policy_for(DOMAIN, BACKUP, mode="testing")
    rotation = rotate(None, text)
    assert rotation.changed and rotation.id == policy_id(text)
    assert rfc8461_txt(rotation.txt) == rotation.id
    assert rotation.txt == mtasts.txt_record(text)


def test_the_seeds_inert_txt_gets_a_new_id_with_the_policy():
    text = policy_for(DOMAIN, BACKUP)
    observation = Observation("viktorbarzin.me", "20260412", policy_problem="mta-sts.viktorbarzin.me has no address")
    rotation = rotate(observation, text)
    assert rotation.changed and rotation.id != "20260412"
    assert "no policy is served" in rotation.reason


def test_the_same_policy_served_keeps_its_id_even_in_another_line_order():
    text = policy_for(DOMAIN, BACKUP)
    shuffled = "version: STSv1\nmode: enforce\nmx: mail2.rollernet.us\nmx: mail.viktorbarzin.me\n" \
               "mx: mail.rollernet.us\nmax_age: 604800\n"
    observation = Observation("viktorbarzin.me", "keepme1", policy=mtasts.parse_policy(shuffled))
    rotation = rotate(observation, text)
    assert not rotation.changed and rotation.id == "keepme1" and rotation.txt == "v=STSv1; id=keepme1"


def test_a_changed_policy_gets_a_new_id():
    old = "version: STSv1\r\nmode: enforce\r\nmx: mail.viktorbarzin.me\r\nmax_age: 604800\r\n"
    new = policy_for(DOMAIN, BACKUP)
    rotation = rotate(Observation("viktorbarzin.me", policy_id(old), policy=mtasts.parse_policy(old)), new)
    assert rotation.changed and rotation.id == policy_id(new) != policy_id(old)
    # mode or max_age alone change the id too
    ids = {policy_id(policy_for(DOMAIN, BACKUP, mode=mode, max_age=age))
           for mode in ("testing", "enforce") for age in (86400, 604800)}
    assert len(ids) == 4


def test_an_id_reused_for_another_served_policy_is_rotated_away():
    """A different policy served under the id our text derives: senders may cache it under that id."""
    text = policy_for(DOMAIN, BACKUP)
    other = "version: STSv1\r\nmode: testing\r\nmx: mail.viktorbarzin.me\r\nmax_age: 86400\r\n"
    observation = Observation("viktorbarzin.me", policy_id(text), policy=mtasts.parse_policy(other))
    rotation = rotate(observation, text)
    assert rotation.changed and rotation.id != policy_id(text)
    assert rfc8461_txt(rotation.txt) == rotation.id


# ---------------------------------------------------------------------- coverage


def test_coverage_reports_the_seeds_finding():
    observation = Observation("viktorbarzin.me", "20260412", policy_problem="mta-sts.viktorbarzin.me has no address in DNS")
    coverage = check_coverage(observation, ALL)
    assert coverage.status == WARN and coverage.inert
    assert INERT in coverage.reason and "20260412" in coverage.reason
    assert all(host in coverage.reason for host in ALL)


@pytest.mark.parametrize("mode, status", [("enforce", FAIL), ("testing", WARN), ("none", PASS)])
def test_coverage_of_a_policy_without_the_backups(mode, status):
    text = f"version: STSv1\nmode: {mode}\nmx: mail.viktorbarzin.me\nmax_age: 86400\n"
    coverage = check_coverage(Observation("viktorbarzin.me", "x1", policy=mtasts.parse_policy(text)), ALL)
    assert coverage.status == status
    assert coverage.uncovered == ("mail.rollernet.us", "mail2.rollernet.us")


def test_coverage_of_a_policy_without_the_primary_fails_in_enforce_mode():
    text = "version: STSv1\nmode: enforce\nmx: *.rollernet.us\nmax_age: 86400\n"
    coverage = check_coverage(Observation("viktorbarzin.me", "x1", policy=mtasts.parse_policy(text)), ALL)
    assert coverage.status == FAIL and coverage.uncovered == ("mail.viktorbarzin.me",)


def test_coverage_of_no_policy_and_of_a_broken_txt():
    assert check_coverage(Observation("viktorbarzin.me"), ALL).status == PASS
    broken = check_coverage(Observation("viktorbarzin.me", txt_problem="2 v=STSv1 TXT records"), ALL)
    assert broken.status == WARN and "invalid" in broken.reason


def test_the_generated_policy_covers_every_mx_host():
    observation = Observation("viktorbarzin.me", "x1", policy=mtasts.parse_policy(policy_for(DOMAIN, BACKUP)))
    assert check_coverage(observation, mx_hosts(DOMAIN, BACKUP)).status == PASS
