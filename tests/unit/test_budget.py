"""The provider's budget (issue #22): its inventory data, the spend ledger, what the drill and the canary
may spend, and the outage the quota covers from a mail log. Through the CLI: tests/cli/test_budget.py."""

from __future__ import annotations

import datetime
import json
import subprocess

import pytest

from backupmx.core import spend
from backupmx.core.budget import FREE_TIER, Allowance, Budget, Spent
from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.core.profile import provider_profile
from backupmx.core.report import PASS, WARN
from backupmx.gates.outage import coverage_check
from backupmx.lifecycle.budget import SMALL_MESSAGE_BYTES, SpendCheck, canary_spend, canary_spent, drill_spend
from backupmx.lifecycle.canary.verdict import SendOutcome
from backupmx.lifecycle.drill.settings import load_failover
from backupmx.mailhost.maillog import AWK, SCRIPT, default_log, parse_volume
from backupmx.mailhost.model import load_mailhost
from facts.mailhost import facts_args
from facts.maillog import MailLogVolume
from support.scratch import calls, docker_mailserver, run_fact, stub
from support.seed import seed_settings

NOW = datetime.datetime(2026, 7, 10, 12, 0, tzinfo=datetime.UTC)
DOMAIN = seed_settings().domains[0].name
PROFILE = {"name": "rollernet", "backend": "ledger"}
NATIVE = load_mailhost({"flavour": "native", "proxy_service": "127.0.0.1:2525/inet"})
SENDER = {"maildir": "/m", "sender_domain": "sender.test", "dkim_key": "/k", "dkim_selector": "s",
          "stop_command": ["stop"], "start_command": ["start"]}


def settings(tmp_path=None, budget=KeyError, **changes):
    profile = dict(PROFILE) if budget is KeyError else {**PROFILE, "budget": budget}
    extra = {"state_dir": str(tmp_path)} if tmp_path is not None else {}
    return seed_settings(provider=profile, **extra, **changes)


# --- the inventory data ---------------------------------------------------------------------


def test_the_free_tier_is_the_default_and_selfhosted_has_none():
    assert settings().provider.budget == FREE_TIER == Budget(200, 10_000_000, 7, 0.25, 72.0)
    assert FREE_TIER.tool_messages == 50 and FREE_TIER.tool_bytes == 2_500_000
    assert FREE_TIER.outage_messages == 150 and FREE_TIER.outage_bytes == 7_500_000
    assert settings(budget=None).provider.budget is None  # a paid plan: nothing metered
    paid = settings(budget={"messages": 1000, "bytes": 50_000_000}).provider.budget
    assert (paid.messages, paid.bytes, paid.days, paid.share) == (1000, 50_000_000, 7, 0.25)
    assert provider_profile(None, "selfhosted").budget is None
    assert provider_profile({"name": "selfhosted", "budget": {"messages": 500}}, "selfhosted").budget.messages == 500


@pytest.mark.parametrize("budget,field", [
    ({"messages": 0}, "provider.budget.messages"),
    ({"bytes": "10MB"}, "provider.budget.bytes"),
    ({"days": 40}, "provider.budget.days"),
    ({"share": 2}, "provider.budget.share"),
    ({"share": True}, "provider.budget.share"),
    ({"min_outage_hours": -1}, "provider.budget.min_outage_hours"),
    ({"message": 200}, "provider.budget.message"),
    ("free", "provider.budget"),
])
def test_bad_budget_data_is_one_line_naming_the_field(budget, field):
    with pytest.raises(ConfigError) as raised:
        settings(budget=budget)
    message = str(raised.value)
    assert message.startswith(f"inventory data {field}") and "\n" not in message, message


# --- what is left, and when it frees up ----------------------------------------------------


def test_allowance_counts_the_window_only_and_says_when_enough_frees_up():
    day = datetime.timedelta(days=1)
    entries = [Spent(NOW - 8 * day, 40, 2_000_000),  # outside the 7 days: forgotten
               Spent(NOW - 6 * day, 1, 2_000_000), Spent(NOW - 2 * day, 4, 8000)]
    left = Allowance.of(FREE_TIER, entries, NOW)
    assert (left.spent_messages, left.spent_bytes) == (5, 2_008_000)
    assert (left.messages_left, left.bytes_left) == (45, 492_000)
    assert left.fits(4, 8000) and not left.fits(2, 600_000)
    assert left.frees_at(2, 600_000) == NOW - 6 * day + 7 * day  # once the 2 MB message leaves the window
    assert left.frees_at(51, 0) is None  # more than the tool's share: never
    assert "492 KB left of this tool's 50 messages / 2.5 MB (a quarter of 200 messages / 10 MB per 7 days)" \
        in left.describe_left()
    assert left.describe_frees(2, 600_000) == "enough frees up at 2026-07-11 12:00 UTC (in 1 d 0 h)"


def test_the_spend_ledger_is_appended_and_read_per_provider_and_domain(tmp_path):
    one = settings(tmp_path)
    spend.record(one, DOMAIN, 1400, "canary", "mail.rollernet.us", "run-1", when=NOW)
    spend.record(one, "other.example", 1400, "canary", "mail.rollernet.us", "run-1", when=NOW)
    line = json.loads((tmp_path / "spend.jsonl").read_text().splitlines()[0])
    assert {k: line[k] for k in ("provider", "domain", "messages", "bytes", "what", "relay", "run")} == {
        "provider": "rollernet", "domain": DOMAIN, "messages": 1, "bytes": 1400, "what": "canary",
        "relay": "mail.rollernet.us", "run": "run-1"}
    assert spend.spent(one, DOMAIN) == [Spent(NOW, 1, 1400)]
    assert spend.spent(one, "nobody.example") == []


def test_a_spend_ledger_line_that_cannot_be_read_stops_with_one_line(tmp_path):
    (tmp_path / "spend.jsonl").write_text('{"when": "2026-07-10T10:00:00+00:00", "provider": "rollernet"}\n'
                                          "not json\n")
    with pytest.raises(BackupMXError) as raised:
        SpendCheck.read(settings(tmp_path), DOMAIN, NOW)
    assert "spend.jsonl line 1: domain None is not a name" in str(raised.value) and "\n" not in str(raised.value)


# --- the drill and the canary ------------------------------------------------------------------


def test_two_drills_with_the_defaults_stay_within_the_budget_and_the_second_leaves_the_large_message_out(tmp_path):
    config = settings(tmp_path)
    large = 1_500_000  # one fits this tool's 2.5 MB; two do not
    first = drill_spend(SpendCheck.read(config, DOMAIN, NOW), 3, True, large)
    assert (first.messages, first.bytes, first.large, first.left_out, first.refusal) == (
        5, 4 * SMALL_MESSAGE_BYTES + large, large, "", "")
    for index, kind in enumerate(["probe"] * 3 + ["large", "spam"]):
        spend.record(config, DOMAIN, large if kind == "large" else 1400, f"drill {kind}", "mail.rollernet.us",
                     "first", when=NOW + datetime.timedelta(seconds=index))
    later = NOW + datetime.timedelta(minutes=5)
    second = drill_spend(SpendCheck.read(config, DOMAIN, later), 3, True, large)
    assert (second.messages, second.large, second.refusal) == (4, 0, "")
    assert second.left_out.startswith("large message left out: with its 1500000 bytes the drill (5 messages, "
                                      "1.51 MB) would go over this tool's share of rollernet's budget for ")
    assert "45 messages / 994 KB left" in second.left_out
    assert "enough frees up at 2026-07-17 12:00 UTC" in second.left_out
    total = sum(entry.bytes for entry in spend.spent(config, DOMAIN)) + second.bytes
    assert total <= FREE_TIER.tool_bytes


def test_the_large_message_is_off_by_default_on_a_metered_provider():
    assert load_failover(SENDER, NATIVE, DOMAIN).large_message_bytes == 12_000_000
    metered = load_failover(SENDER, NATIVE, DOMAIN, metered="rollernet")
    assert metered.large_message_bytes == 0 and "rollernet is metered" in metered.large_off
    asked = load_failover({**SENDER, "large_message_bytes": 1_000_000}, NATIVE, DOMAIN, metered="rollernet")
    assert asked.large_message_bytes == 1_000_000 and asked.large_off == ""


def test_a_canary_over_the_budget_is_refused_whole(tmp_path):
    config = settings(tmp_path)
    for index in range(49):
        spend.record(config, DOMAIN, 1400, "canary", "mail.rollernet.us", "old",
                     when=NOW - datetime.timedelta(days=3, minutes=index))
    lines, refusal = canary_spend({DOMAIN: SpendCheck.read(config, DOMAIN, NOW)}, {DOMAIN: 2})
    assert refusal.startswith(f"refused by the budget, nothing sent: the canary for {DOMAIN} (2 messages, 4 KB) "
                              "would go over this tool's share of rollernet's budget")
    assert "1 message / 2.43 MB left" in refusal and "enough frees up at 2026-07-14 11:12 UTC" in refusal
    assert lines == [f"2 messages, about 4 KB, of rollernet's budget for {DOMAIN}: 1 message / 2.43 MB left of "
                     "this tool's 50 messages / 2.5 MB (a quarter of 200 messages / 10 MB per 7 days); after this "
                     "run 0 messages / 2.43 MB"]
    # What counts: taken, or its fate unknown; a clean refusal does not.
    assert [canary_spent(SendOutcome(*fields)) for fields in [
        (True, "250 ok", None, 250), (False, "554 denied", "RCPT TO", 554), (False, "550 no", "DATA", 550),
        (False, "timed out", "DATA", None), (False, "ssh cut off", "send host")]] == [True, False, False, True, True]
    unmetered = SpendCheck.read(settings(tmp_path, budget=None), DOMAIN, NOW)
    assert canary_spend({DOMAIN: unmetered}, {DOMAIN: 2})[1] == ""


# --- the outage the quota covers ---------------------------------------------------------------


def log_lines(day: datetime.date, count: int, size: int, iso: bool = False) -> list[str]:
    """``count`` messages received from another server on ``day``, as Postfix logs them."""
    stamp = f"{day.isoformat()}T10:00:00.000000+00:00" if iso else day.strftime("%b %d 10:00:00")
    lines = []
    for n in range(count):
        qid = f"{day.strftime('%m%d')}{n:04X}A"
        lines += [f"{stamp} mail postfix/smtpd[100]: {qid}: client=out1.rollernet.us[192.0.2.25]",
                  f"{stamp} mail postfix/cleanup[101]: {qid}: message-id=<{qid}@example.org>",
                  f"{stamp} mail postfix/qmgr[102]: {qid}: from=<a@example.org>, size={size}, nrcpt=1 (queue active)",
                  f"{stamp} mail postfix/qmgr[102]: {qid}: from=<a@example.org>, size={size}, nrcpt=1 (queue active)",
                  f"{stamp} mail postfix/qmgr[102]: {qid}: removed"]
    # Not received from another server: a user's submission, and a bounce the primary made itself.
    lines += [f"{stamp} mail postfix/submission/smtpd[103]: SUB{day.day}: client=laptop[198.51.100.7], "
              "sasl_method=PLAIN, sasl_username=viktor",
              f"{stamp} mail postfix/qmgr[102]: SUB{day.day}: from=<viktor@example.org>, size=999999, nrcpt=1 "
              "(queue active)",
              f"{stamp} mail postfix/qmgr[102]: BNC{day.day}: from=<>, size=999999, nrcpt=1 (queue active)"]
    return lines


def read_log(tmp_path, lines: list[str], gzipped: list[str] = ()) -> object:
    log = tmp_path / "mail.log"
    log.write_text("\n".join(lines) + "\n")
    if gzipped:
        (tmp_path / "mail.log.2").write_text("\n".join(gzipped) + "\n")
        subprocess.run(["gzip", str(tmp_path / "mail.log.2")], check=True)
    result = subprocess.run(["sh", "-c", SCRIPT, "sh", str(log), "/nonexistent", "/var/log/mail.log", "32", AWK],
                            capture_output=True, text=True, timeout=30, check=True)
    return parse_volume(result.stdout.splitlines())


def test_the_log_summary_counts_mail_received_from_other_servers_per_day(tmp_path):
    today = datetime.date.today()
    days = [today - datetime.timedelta(days=back) for back in range(30, -1, -1)]
    recent = [line for day in days[20:] for line in log_lines(day, 30, 100_000)]
    older = [line for day in days[:20] for line in log_lines(day, 30, 100_000, iso=True)]
    volume = read_log(tmp_path, recent, gzipped=older)
    assert volume.state == "present" and volume.today == today
    assert volume.received[days[0]] == (30, 3_000_000) and volume.received[today] == (30, 3_000_000)
    month = volume.window(30)
    assert (month.covered, month.messages, month.bytes) == (30, 900, 90_000_000)
    assert (month.messages_per_day, month.bytes_per_day) == (30, 3_000_000)


def test_the_gate_report_says_how_long_an_outage_the_quota_covers_and_warns_under_the_threshold(tmp_path):
    today = datetime.date.today()
    lines = [line for back in range(30, -1, -1) for line in
             log_lines(today - datetime.timedelta(days=back), 30, 100_000)]
    volume = read_log(tmp_path, lines)
    # 3 MB a day against the 7.5 MB a free-tier outage may relay: 60 h (messages: 150 / 30 a day, 120 h).
    check = coverage_check(settings(), "mail", volume)
    assert check.key == "G2" and check.status == WARN
    assert check.evidence.startswith("mail: about 60 h at your last 30 days' volume (30 messages, 3 MB a day); "
                                     "about 60 h at the last 7 days' volume (30 messages, 3 MB a day); 150 messages "
                                     "/ 7.5 MB of rollernet's 200 messages / 10 MB per 7 days are left for an outage "
                                     "(a quarter kept for this tool's drills and canaries)")
    assert check.next_step.startswith("an outage longer than 60 h goes over the quota, under the 72 h wanted "
                                      "(provider.budget.min_outage_hours): Roller Network is reported to suspend")
    relaxed = coverage_check(settings(budget={"min_outage_hours": 48}), "mail", volume)
    assert relaxed.status == PASS
    assert coverage_check(settings(budget=None), "mail", volume) is None  # no quota: no row
    missing = coverage_check(settings(), "mail", parse_volume(["==today 2026-07-10", "==log missing /var/log/x"]))
    assert missing.status == WARN and "no mail log at /var/log/x" in missing.evidence
    assert "mailhost.mail_log" in missing.next_step
    failed = coverage_check(settings(), "mail", parse_volume([]))  # the fact's command failed (a stopped container)
    assert failed.status == WARN and failed.evidence.startswith("mail: the mail log summary failed there")


def test_the_fact_reads_postfixs_maillog_file_or_the_flavours_log_through_docker_exec(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dms = docker_mailserver(tmp_path, bin_dir)
    args = dict(mail_log=dms.mail_log, config_dir=dms.postfix_config_dir, default=default_log(dms), **facts_args(dms))
    # docker-mailserver leaves maillog_file unset: its rsyslog writes /var/log/mail/mail.log in the container.
    stub(bin_dir, "postconf", "exit 0")
    volume = run_fact(MailLogVolume, bin_dir, **args)
    assert volume.path == "/var/log/mail/mail.log"  # missing here, unless this machine has one
    assert calls(tmp_path)[0].startswith("docker exec mailserver sh -c ")
    # Postfix's own maillog_file (postlogd), as the sandbox's primary sets it, wins over the default.
    log = tmp_path / "postfix.log"
    log.write_text("\n".join(log_lines(datetime.date.today() - datetime.timedelta(days=1), 2, 5000)) + "\n")
    stub(bin_dir, "postconf", f'[ "$3" = -h ] && [ "$4" = maillog_file ] && echo {log}')
    volume = run_fact(MailLogVolume, bin_dir, **args)
    assert (volume.state, volume.path) == ("present", str(log))
    assert volume.window(30).messages == 2 and volume.window(30).bytes == 10_000
