"""The last lines of deploys/backupmx.py: the verdict and what changed, after every diff and
pyinfra's own table (a --dry review, a blocked run, an executed run, a failure, Ctrl-C)."""

from __future__ import annotations

from backupmx.core.plan_log import DOCUMENT, FileDiff
from backupmx.core.pyinfra_glue import OperationEnd, RunEnd
from backupmx.core.report import CHANGE, FAIL, PASS, TODO, Report
from backupmx.lifecycle.deploy.summary import summary_lines
from backupmx.lifecycle.plan.document import PlanData

TITLE = "backupmx deploy: example.org"


def report(*rows) -> Report:
    result = Report("backupmx gate report: example.org")
    for row in rows:
        result.add(*row)
    return result


PLANNED = report(("0", "inventory data", PASS, "1 domain(s)"),
                 ("3", "mail host: whitelist + exemption", CHANGE, "mail: postscreen_whitelist: create /p.cidr"),
                 ("4", "verify live on every mail host", TODO, "mail: proven at execution"),
                 ("5", "DNS example.org", CHANGE, "+ MX example.org 20 mx1.example.net"))
FILES = (FileDiff("mail", "/p.cidr", None, "x\n", "postscreen_whitelist"),
         FileDiff("mon", "/m/rules.yml", "a\n", "b\n", "monitoring_files"),
         FileDiff("mon", "/d/runbook.md", None, "# r\n", "local_file", DOCUMENT))


def plan_of(rep: Report, files=()) -> PlanData:
    return PlanData(rep.title, tuple(rep.checks), rep.blocked, (), tuple(files))


def test_a_review_ends_with_what_would_change_and_the_verdict():
    lines = summary_lines(TITLE, PLANNED, plan_of(PLANNED, FILES), RunEnd(executed=False), printed=True)
    assert lines[0] == "" and lines[1] == f"{TITLE} (review: nothing was changed)"
    assert lines[2:-1] == [
        "  3   mail host: whitelist + exemption: would: mail: postscreen_whitelist: create /p.cidr",
        "  5   DNS example.org: would: + MX example.org 20 mx1.example.net",
        "  6   monitoring on mon: would: change /m/rules.yml; create /d/runbook.md",
    ]
    assert lines[-1] == ("  => gates allow the deploy to proceed; 0 record change(s), 3 file change(s); "
                         "run it without --dry to apply")


def test_a_blocked_run_ends_with_the_failed_rows_and_blocked():
    blocked = report(("0", "inventory data", PASS, "1 domain(s)"),
                     ("G2", "overage answers 4xx (defer)", FAIL, "unverified"))
    lines = summary_lines(TITLE, blocked, plan_of(blocked), RunEnd(executed=False), printed=True)
    assert lines[1:] == [f"{TITLE} (nothing was changed)", "  G2  overage answers 4xx (defer): unverified",
                         "  => BLOCKED: nothing will be changed: stage G2 (overage answers 4xx (defer)) failed"]


def test_an_executed_run_lists_what_changed_and_ends_complete():
    end = RunEnd(executed=True, operations=(
        OperationEnd("Stage 3: postscreen whitelist on the PROXY-v2 listener", changed=("mail",)),
        OperationEnd("Stage 4: prove the whitelist and exemption are live", changed=("mail",)),
        OperationEnd("Stages 3-4 finished on every mail host"),
        OperationEnd("Stage 5: backup MX records for example.org", changed=("@local",)),
        OperationEnd("Stage 6: render the runbook /d/runbook.md")))
    lines = summary_lines(TITLE, PLANNED, plan_of(PLANNED), end, printed=True,
                          applied={"example.org": ["+ MX example.org 20 mx1.example.net"]})
    assert lines[1:] == [
        f"{TITLE} (what this run did)",
        "  changed: Stage 3: postscreen whitelist on the PROXY-v2 listener (mail)",
        "  proven:  Stage 4: prove the whitelist and exemption are live (mail)",
        "  changed: Stage 5: backup MX records for example.org (@local): + MX example.org 20 mx1.example.net",
        "  => deploy complete: every stage ran; a second run changes nothing",
    ]


def test_a_failed_operation_makes_the_last_line_incomplete_naming_it():
    end = RunEnd(executed=True, failed_hosts=frozenset({"mail"}), operations=(
        OperationEnd("Stage 3: postscreen whitelist on the PROXY-v2 listener", failed=("mail",)),
        OperationEnd("Stage 4: prove the whitelist and exemption are live", not_run=("mail",)),
        OperationEnd("Stage 5: backup MX records for example.org", failed=("@local",))))
    lines = summary_lines(TITLE, PLANNED, plan_of(PLANNED), end, printed=True)
    assert "  not run: Stage 4: prove the whitelist and exemption are live (mail)" in lines
    assert lines[-1].startswith("  => DEPLOY INCOMPLETE: Stage 3: postscreen whitelist on the PROXY-v2 listener "
                                "failed on mail;")


def test_nothing_changed_and_stopped_early_and_interrupted():
    end = RunEnd(executed=True, operations=(OperationEnd("Stage 5: backup MX records for example.org"),))
    assert summary_lines(TITLE, PLANNED, plan_of(PLANNED), end, printed=True)[-1] == (
        "  => nothing to change: everything is as the inventory wants it")
    assert summary_lines(TITLE, PLANNED, plan_of(PLANNED), RunEnd(executed=False), printed=False)[-1].startswith(
        "  => STOPPED before the gate report")
    assert summary_lines(TITLE, PLANNED, plan_of(PLANNED), RunEnd(executed=True, interrupted=True),
                         printed=True)[-1].startswith("  => DEPLOY INTERRUPTED")


def test_the_monitoring_deploy_ends_with_its_files_and_the_verdict():
    from backupmx.lifecycle.deploy.summary import files_summary_lines

    title = "backupmx monitoring: example.org"
    lines = files_summary_lines(title, RunEnd(executed=False), FILES[1:])
    assert lines[1:] == [f"{title} (review: nothing was changed)", "  would: change /m/rules.yml on mon",
                         "  would: create /d/runbook.md on mon", "  => 2 file change(s); run it without --dry to apply"]
    assert files_summary_lines(title, RunEnd(executed=False), ())[-1] == (
        "  => nothing to change: every file is as rendered")
    end = RunEnd(executed=True, operations=(OperationEnd("Stage 6: render the runbook /d/runbook.md",
                                                         changed=("mon",)),))
    assert files_summary_lines(title, end, ())[-2:] == [
        "  changed: Stage 6: render the runbook /d/runbook.md (mon)",
        "  => deploy complete: every file is in place; a second run changes nothing"]
