"""MTA-STS: the RFC 8461 parsers, mx pattern matching and the guard as pure tests; the
policy fetch against a real HTTPS server on loopback (its own trustme CA, support.http_servers).
The whole observation against the sandbox's DNS: tests/integration/test_mtasts_zone.py."""

from __future__ import annotations

import pytest
from support.http_servers import PolicyServer, tls_for

from backupmx.core.report import FAIL, PASS, WARN
from backupmx.dns import mtasts
from backupmx.dns.mtasts import (
    INERT,
    Observation,
    Policy,
    PolicyError,
    PolicyFetchError,
    fetch_policy,
    generate_policy,
    guard,
    mx_matches,
    parse_policy,
    parse_txt,
    policy_id,
    txt_record,
)
from backupmx_sandbox import seed
from backupmx_sandbox.seed import DOMAIN
from support.providers import dead_port

BACKUPS = tuple(seed.BACKUP_MX)

# ------------------------------------------------------------------ TXT


def test_txt_gives_the_policy_id():
    assert parse_txt(["v=STSv1; id=20260412"]) == "20260412"
    assert parse_txt(["v=STSv1;id=abc123;"]) == "abc123"
    assert parse_txt(["v=spf1 -all", "v=STSv1; id=x1; ext_a=val"]) == "x1"


def test_no_sts_txt_is_no_policy():
    assert parse_txt([]) is None
    assert parse_txt(["v=spf1 mx ~all", "v=STSv10; id=1"]) is None


@pytest.mark.parametrize("records, problem", [
    (["v=STSv1; id=1", "v=STSv1; id=2"], "2 v=STSv1 TXT records"),
    (["v=STSv1"], "no id="),
    (["v=STSv1; id="], "not name=value"),
    (["v=STSv1; id=has-dash"], "1-32 letters or digits"),
    (["v=STSv1; id=" + "a" * 33], "1-32 letters or digits"),
    (["v=STSv1; id=1; id=2"], "must appear once"),
])
def test_malformed_txt_is_an_error(records, problem):
    with pytest.raises(PolicyError, match=problem):
        parse_txt(records)


# ------------------------------------------------------------------ policy


def test_policy_parses_with_lf_and_crlf():
    text = "version: STSv1\nmode: enforce\nmx: mail.viktorbarzin.me\nmx: *.rollernet.us\nmax_age: 86400\n"
    expected = Policy("enforce", ("mail.viktorbarzin.me", "*.rollernet.us"), 86400)
    assert parse_policy(text) == expected
    assert parse_policy(text.replace("\n", "\r\n")) == expected
    assert parse_policy(text.rstrip("\n")) == expected


def test_policy_tolerates_whitespace_case_of_hosts_and_extensions():
    text = "version: STSv1\r\nmode:testing  \r\nmx:  MAIL.Example.NET.\r\nmax_age: 0\r\nextension_x: whatever\r\n"
    assert parse_policy(text) == Policy("testing", ("mail.example.net",), 0)


def test_mode_none_needs_no_mx():
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").mx == ()


@pytest.mark.parametrize("text, problem", [
    ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version is None"),
    ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version is 'STSv2'"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode is 'strict'"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "max_age '31557601'"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age '-1'"),
    ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age ''"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "lists no mx"),
    ("version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n", "mode appears twice"),
    ("version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "not a host name"),
    ("<html>not a policy</html>\n", "is not 'key: value'"),
])
def test_invalid_policies_are_refused(text, problem):
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text)


def test_max_age_limit_itself_is_allowed():
    assert parse_policy(f"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {mtasts.MAX_AGE_LIMIT}\n").max_age \
        == 31557600


def test_generated_policy_round_trips():
    text = generate_policy("enforce", ["mail2.rollernet.us", "mail.viktorbarzin.me", "mail.rollernet.us"], 604800)
    assert text == ("version: STSv1\r\nmode: enforce\r\nmx: mail.rollernet.us\r\nmx: mail.viktorbarzin.me\r\n"
                    "mx: mail2.rollernet.us\r\nmax_age: 604800\r\n")
    policy = parse_policy(text)
    assert policy == Policy("enforce", ("mail.rollernet.us", "mail.viktorbarzin.me", "mail2.rollernet.us"), 604800)
    assert policy.unmatched(BACKUPS) == []


def test_generate_refuses_what_senders_would_reject():
    with pytest.raises(PolicyError):
        generate_policy("enforce", [], 604800)
    with pytest.raises(PolicyError):
        generate_policy("sometimes", ["a.example"], 604800)
    with pytest.raises(PolicyError):
        generate_policy("enforce", ["a.example"], 40_000_000)


def test_policy_id_changes_with_the_text_and_fits_the_txt_grammar():
    one = generate_policy("enforce", ["mail.viktorbarzin.me"], 604800)
    two = generate_policy("enforce", ["mail.viktorbarzin.me", "*.rollernet.us"], 604800)
    assert policy_id(one) == policy_id(one) != policy_id(two)
    assert policy_id(one).isalnum() and 1 <= len(policy_id(one)) <= 32
    reordered = generate_policy("enforce", ["b.example", "a.example"])
    assert reordered == generate_policy("enforce", ["a.example", "b.example"])
    assert parse_txt([txt_record(two)]) == policy_id(two)


# ------------------------------------------------------------------ mx patterns


@pytest.mark.parametrize("pattern, host, matches", [
    ("*.rollernet.us", "mail.rollernet.us", True),
    ("*.rollernet.us", "MAIL2.rollernet.us.", True),
    ("*.rollernet.us", "rollernet.us", False),
    ("*.rollernet.us", "a.b.rollernet.us", False),
    ("*.rollernet.us", "rollernet.us.evil.test", False),
    ("*.rollernet.us", "mailrollernet.us", False),
    ("mail.rollernet.us", "mail.rollernet.us", True),
    ("mail.rollernet.us", "mail2.rollernet.us", False),
    ("Mail.Rollernet.US.", "mail.rollernet.us", True),
])
def test_mx_patterns(pattern, host, matches):
    assert mx_matches(pattern, host) is matches


# ------------------------------------------------------------------ the guard


def observed(mode: str, mx: tuple[str, ...]) -> Observation:
    return Observation(DOMAIN, "abc", policy=Policy(mode, mx, 604800))


def test_guard_passes_without_a_txt():
    decision = guard(Observation(DOMAIN), BACKUPS)
    assert decision.status == PASS and not decision.refused


def test_guard_refuses_enforce_without_every_backup():
    decision = guard(observed("enforce", ("mail.viktorbarzin.me", "mail.rollernet.us")), BACKUPS)
    assert decision.status == FAIL and decision.refused
    assert "enforce mode and does not list mail2.rollernet.us" in decision.reason
    assert "new id in _mta-sts.viktorbarzin.me first" in decision.reason


def test_guard_passes_enforce_covering_the_backups_by_wildcard():
    decision = guard(observed("enforce", ("mail.viktorbarzin.me", "*.rollernet.us")), BACKUPS)
    assert decision.status == PASS


def test_guard_wildcard_does_not_cover_deeper_names():
    decision = guard(observed("enforce", ("*.rollernet.us",)), ("mx.eu.rollernet.us",))
    assert decision.refused


def test_guard_warns_in_testing_mode():
    decision = guard(observed("testing", ("mail.viktorbarzin.me",)), BACKUPS)
    assert decision.status == WARN and "testing mode" in decision.reason
    assert guard(observed("testing", ("*.rollernet.us",)), BACKUPS).status == PASS


def test_guard_passes_mode_none():
    assert guard(observed("none", ()), BACKUPS).status == PASS


def test_guard_warns_that_a_txt_without_a_policy_is_inert():
    decision = guard(Observation(DOMAIN, "20260412", policy_problem="mta-sts.viktorbarzin.me has no address in DNS"),
                     BACKUPS)
    assert decision.status == WARN
    assert decision.reason.startswith(INERT)
    assert INERT == "MTA-STS is inert: TXT published but no policy is served (senders ignore it)"
    assert "mail.rollernet.us, mail2.rollernet.us" in decision.reason


def test_guard_warns_on_an_invalid_txt():
    decision = guard(Observation(DOMAIN, txt_problem="2 v=STSv1 TXT records are published"), BACKUPS)
    assert decision.status == WARN and "senders assume no policy" in decision.reason


# ------------------------------------------------------------------ fetching over HTTPS


ENFORCE_ALL = generate_policy("enforce", ["mail.viktorbarzin.me", "*.rollernet.us"], 604800)
ENFORCE_PRIMARY_ONLY = generate_policy("enforce", ["mail.viktorbarzin.me"], 604800)


def test_fetch_reads_the_policy_as_a_sender_does(ca, ca_bundle):
    served = PolicyServer(tls_for(ca, [f"mta-sts.{DOMAIN}"]), ENFORCE_ALL)
    with served as address:
        text = fetch_policy(DOMAIN, connect_to=address, ca_bundle=ca_bundle, timeout=5)
    assert text == ENFORCE_ALL
    assert served.requests == [(mtasts.POLICY_PATH, f"mta-sts.{DOMAIN}")]


def test_fetch_of_a_missing_policy_is_an_error(ca, ca_bundle):
    with PolicyServer(tls_for(ca, [f"mta-sts.{DOMAIN}"]), "gone", status=404) as address, \
            pytest.raises(PolicyFetchError, match="answered HTTP 404"):
        fetch_policy(DOMAIN, connect_to=address, ca_bundle=ca_bundle, timeout=5)


def test_fetch_does_not_follow_redirects(ca, ca_bundle):
    with PolicyServer(tls_for(ca, [f"mta-sts.{DOMAIN}"]), "", status=301, location="https://elsewhere.test/") as address, \
            pytest.raises(PolicyFetchError, match="answered HTTP 301"):
        fetch_policy(DOMAIN, connect_to=address, ca_bundle=ca_bundle, timeout=5)


def test_fetch_rejects_a_certificate_for_another_name(ca, ca_bundle):
    with PolicyServer(tls_for(ca, ["www.viktorbarzin.me"]), ENFORCE_ALL) as address, \
            pytest.raises(PolicyFetchError, match="TLS failed"):
        fetch_policy(DOMAIN, connect_to=address, ca_bundle=ca_bundle, timeout=5)


def test_fetch_rejects_an_untrusted_certificate(ca):
    with PolicyServer(tls_for(ca, [f"mta-sts.{DOMAIN}"]), ENFORCE_ALL) as address, \
            pytest.raises(PolicyFetchError, match="TLS failed"):
        fetch_policy(DOMAIN, connect_to=address, timeout=5)  # system trust: the test CA is unknown


def test_fetch_of_nothing_listening_is_an_error():
    with pytest.raises(PolicyFetchError, match="cannot connect"):
        fetch_policy(DOMAIN, connect_to=f"127.0.0.1:{dead_port()}", timeout=2)
