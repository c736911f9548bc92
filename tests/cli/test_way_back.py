"""Going live again after a rollback (issue 16, part 2), Roller Network's fake ACC.

rollback -> --dry deploy (the planned enable, nothing changed) -> deploy -> live,
with the ACC's state and the authoritative DNS checked at each step; and a domain
disabled by anyone else (no matching change-log entry) still stops the deploy at
G1 with the old message, nothing written. The self-hosted relay's way back:
tests/cli/test_selfhosted_pipeline.py.
"""

from __future__ import annotations

import pytest
from support.seed import BACKUPS, PRIMARY

from backupmx.dns import check as dnscheck
from backupmx_sandbox.seed import DOMAIN
from support.mailhost import restore, snapshot
from support.providers import acc_writes, admin, cloudflare_admin, cloudflare_writes, output, pyinfra, report_row

OLD_G1 = "the domain is disabled (a rollback disables it)"


def dns_answer(world) -> set:
    return set(dnscheck.live_mx(world["zone"], [world["dns"]]))


def acc_enabled(world) -> bool:
    return admin(world, "state")["domains"][DOMAIN]["enabled"]



@pytest.fixture
def live(world):
    """The state after a real go-live (the deploy logged its records), mail host put back after."""
    mail = snapshot(world)
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    result = pyinfra("deploys/backupmx.py")
    assert result.returncode == 0, output(result)
    assert dns_answer(world) == {PRIMARY} | BACKUPS and acc_enabled(world)
    yield world
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    restore(world, mail)


def test_rollback_then_deploy_enables_the_domain_again_and_goes_live(live):
    rolled = pyinfra("deploys/rollback.py", "--limit", "controller")
    assert rolled.returncode == 0, output(rolled)
    assert dns_answer(live) == {PRIMARY} and acc_enabled(live) is False

    # Review: G1 is the planned enable, not a failure; nothing changes.
    cloudflare_admin(live, "DELETE", "requests")
    acc_writes_before = len(acc_writes(live))
    dry = pyinfra("deploys/backupmx.py", dry=True)
    text = output(dry)
    assert dry.returncode == 0, text
    g1 = report_row(dry.stdout, "G1")
    assert g1.status == "change", text
    assert "will enable viktorbarzin.me again before stage 5: disabled by this tool's rollback" in g1.evidence
    assert OLD_G1 not in text
    assert f"G1: enable {DOMAIN} again at rollernet" in text
    assert cloudflare_writes(live) == [] and len(acc_writes(live)) == acc_writes_before
    assert dns_answer(live) == {PRIMARY} and acc_enabled(live) is False

    # Go live: enabled at the provider, then the records.
    live_run = pyinfra("deploys/backupmx.py")
    text = output(live_run)
    assert live_run.returncode == 0, text
    assert report_row(live_run.stdout, "G1").status == "change", text
    assert f"{DOMAIN} enabled again (api mail/domain_set" in text
    assert acc_enabled(live) is True
    assert dns_answer(live) == {PRIMARY} | BACKUPS
    # In pyinfra's log (stderr), in the order things ran (the run's last lines, on stdout, sum them up).
    enable_at = live_run.stderr.index(f"{DOMAIN} enabled again")
    assert enable_at < live_run.stderr.index("Stage 5: backup MX records"), text

    # And once live, the next run is a plain pass: the enable is in the change log.
    writes = len(acc_writes(live))
    again = pyinfra("deploys/backupmx.py")
    assert again.returncode == 0, output(again)
    assert report_row(again.stdout, "G1").status == "pass", output(again)
    assert len(acc_writes(live)) == writes


def test_after_the_way_back_a_hand_disable_is_still_refused(live):
    # rollback -> deploy (enable logged) -> disabled by hand in the console: not ours.
    assert pyinfra("deploys/rollback.py", "--limit", "controller").returncode == 0
    assert pyinfra("deploys/backupmx.py").returncode == 0 and acc_enabled(live)
    admin(live, "state", {"enabled": False})
    cloudflare_admin(live, "DELETE", "requests")
    refused = pyinfra("deploys/backupmx.py")
    text = output(refused)
    assert refused.returncode != 0, text
    g1 = report_row(refused.stdout, "G1")
    assert g1.status == "FAIL" and OLD_G1 in g1.evidence, text
    assert f"in the ACC enable {DOMAIN}" in text
    assert cloudflare_writes(live) == [] and acc_enabled(live) is False


def test_a_rollback_that_left_the_domain_enabled_then_a_hand_disable_is_refused(live):
    # disable_domain=false: the log's last entries are the record deletions, not a disable.
    rolled = pyinfra("deploys/rollback.py", "--limit", "controller", "--data", "disable_domain=false")
    assert rolled.returncode == 0, output(rolled)
    assert acc_enabled(live) is True and dns_answer(live) == {PRIMARY}
    admin(live, "state", {"enabled": False})
    cloudflare_admin(live, "DELETE", "requests")
    refused = pyinfra("deploys/backupmx.py")
    text = output(refused)
    assert refused.returncode != 0, text
    assert report_row(refused.stdout, "G1").status == "FAIL" and OLD_G1 in text
    assert cloudflare_writes(live) == [] and dns_answer(live) == {PRIMARY} and acc_enabled(live) is False
