"""The whole pipeline on the real docker-mailserver (issue 21): deploy -> stage 4 -> canary -> drill ->
rollback -> the way back, a second deploy that changes nothing, and a pod restart (``recreate``)
that keeps the whitelist and the exemption live without any deploy.

One module, in order: each test starts from the state the one before left (the deploy is
live), as an operator's week goes. The world is docker-mailserver's (tests/support/dms.py): its
config dir on the sandbox mail host's disk, its Postfix, rspamd, Dovecot and changedetector
under supervisord in the container, the seed's :2525 PROXY-v2 listener from user-patches.sh,
policyd-spf and reject_unknown_client_hostname on (the seed's production).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.seed import BACKUPS, PRIMARY

from backupmx.dns import check as dnscheck
from backupmx.lifecycle.drill.mailbox import explain_unscanned
from backupmx.lifecycle.probes import Probe, queue_id, verdicts
from backupmx.mailhost.maildir import Delivered
from backupmx.mailhost.model import load_mailhost
from backupmx_sandbox import seed
from backupmx_sandbox.smtp_client import build_message, send_mail
from support.dms import in_container, pristine, recreate
from support.mailpath import endpoint, wait_for_delivery
from support.providers import admin, cloudflare_admin, output, pyinfra, report_row, report_rows
from support.scratch import run_here

LISTENER_FILES = ("postscreen_access.cidr", "user-patches.sh", "rspamd/override.d/settings.conf")


def dns_answer(world) -> set:
    return set(dnscheck.live_mx(world["zone"], [world["dns"]]))


def acc_enabled(world) -> bool:
    return admin(world, "state")["domains"][seed.DOMAIN]["enabled"]


def rcpt_reply(world, source: str, *, pregreet: bool, sender: str = f"someone@{seed.SENDER_DOMAIN}") -> str:
    """RCPT's reply to a client the PROXY-v2 header says is ``source`` (talking early if ``pregreet``)."""
    host, port = endpoint(world["proxy_listener"])
    message, _ = build_message(sender, f"postmaster@{seed.DOMAIN}", subject="rcpt only")
    result = send_mail(host, port, sender, f"postmaster@{seed.DOMAIN}", message, proxy_source=source,
                       pregreet=pregreet, helo="mail.rollernet.us")
    return next((line for line in str(result).splitlines() if line.startswith("RCPT:")), str(result))


def outside_address() -> str:
    # A fresh address each time: postscreen remembers clients that passed.
    return f"203.0.113.{random.randrange(100, 250)}"


def live_config(world) -> dict:
    """What the running container has: the listener's overrides and rspamd's settings rules."""
    dump = in_container(world, "rspamadm", "configdump", "-j", "settings").stdout
    return {"postconf -P": in_container(world, "postconf", "-P").stdout,
            "configdump": json.loads(dump[dump.find("{"):])}  # parsed: the dump's key order varies


def assert_live_for_relays(world) -> None:
    """A relay talking early is taken, past every layer; an outsider talking early is refused."""
    for relay in ("192.0.2.25", "198.51.100.25"):  # forward-confirmed, and not: both pass
        reply = rcpt_reply(world, relay, pregreet=True)
        assert reply.startswith("RCPT: 250"), (relay, reply)
    reply = rcpt_reply(world, outside_address(), pregreet=True)
    assert reply.startswith("RCPT: 550"), reply


@pytest.fixture(scope="module")
def fresh(dms):
    pristine(dms)
    admin(dms, "reset", {})
    cloudflare_admin(dms, "POST", "reset")
    yield dms
    admin(dms, "reset", {})
    cloudflare_admin(dms, "POST", "reset")


def test_before_the_deploy_relayed_mail_meets_the_primary_s_layers(fresh):
    blocked = rcpt_reply(fresh, "192.0.2.25", pregreet=False)
    assert blocked.startswith("RCPT: 550 5.7.1 Service unavailable; client [192.0.2.25] blocked using"), blocked
    refused = rcpt_reply(fresh, "198.51.100.25", pregreet=False)
    assert refused.startswith("RCPT: 450 4.7.25 Client host rejected: cannot find your hostname"), refused


def test_deploy_goes_live_on_docker_mailserver_and_a_second_run_changes_nothing(fresh):
    result = pyinfra("deploys/backupmx.py")
    text = output(result)
    assert result.returncode == 0, text
    assert "dms_smtpd_sender_restrictions" in text  # DMS's own list for reject_unknown_client_hostname
    answer = dns_answer(fresh)  # stage 5 publishes only after stage 4 proved the mail host
    assert answer == {PRIMARY} | BACKUPS
    config = Path(fresh["primary"]["config_dir"])
    missing = [name for name in LISTENER_FILES if not (config / name).exists()]
    assert missing == []
    assert not (config / ".backupmx-stage").exists()
    assert_live_for_relays(fresh)

    again = pyinfra("deploys/backupmx.py")
    text = output(again)
    assert again.returncode == 0, text
    assert "rspamd exemption already in" in text and "relay whitelist already on 2525/inet" in text
    assert "backup MX records already published" in text
    assert report_row(again.stdout, "4").status == "pass", text


def test_relayed_mail_is_delivered_unpenalised(fresh):
    host, port = endpoint(fresh["proxy_listener"])
    sender = f"someone@{seed.SENDER_DOMAIN}"  # SPF -all without the relays, DMARC p=reject
    message, message_id = build_message(sender, f"relayed@{seed.DOMAIN}", subject="relayed to docker-mailserver")
    result = send_mail(host, port, sender, f"relayed@{seed.DOMAIN}", message, proxy_source="198.51.100.25",
                       helo="mail2.rollernet.us")
    assert result.accepted, str(result)
    delivered = wait_for_delivery(fresh["maildir"], message_id)
    spamd = str(delivered["X-Spamd-Result"])
    assert "R_SPF_" not in spamd and "DMARC_" not in spamd, spamd


def test_mail_taken_while_rspamd_is_down_is_named_by_the_primary_s_log(fresh):
    """docker-mailserver's Postfix takes mail unscanned while rspamd does not listen (as in the
    seconds after a restart); the drill's log reader finds Postfix's own warning for exactly
    that message, in the container's mail.log, and makes the row a warning."""
    host, port = endpoint(fresh["proxy_listener"])
    sender = f"someone@{seed.SENDER_DOMAIN}"
    scanned, scanned_id = build_message(sender, f"relayed@{seed.DOMAIN}", subject="scanned")
    unscanned, unscanned_id = build_message(sender, f"relayed@{seed.DOMAIN}", subject="rspamd down")
    assert send_mail(host, port, sender, f"relayed@{seed.DOMAIN}", scanned, proxy_source="198.51.100.25",
                     helo="mail2.rollernet.us").accepted
    assert in_container(fresh, "supervisorctl", "stop", "rspamd").returncode == 0
    try:
        result = send_mail(host, port, sender, f"relayed@{seed.DOMAIN}", unscanned, proxy_source="198.51.100.25",
                           helo="mail2.rollernet.us")
        assert result.accepted, str(result)  # milter_default_action = accept: taken all the same
    finally:
        started = in_container(fresh, "supervisorctl", "start", "rspamd")
        wait_for_rspamd(fresh)
    assert started.returncode == 0, started.stdout + started.stderr
    copies = {mid: wait_for_delivery(fresh["maildir"], mid) for mid in (scanned_id, unscanned_id)}
    assert copies[scanned_id]["X-Spamd-Result"] and copies[unscanned_id]["X-Spamd-Result"] is None

    probes = [Probe(1, "mail2.rollernet.us", sender, mid) for mid in copies]
    mailhost = load_mailhost(fresh["mailhost"])
    for probe, message in zip(probes, copies.values()):
        probe.problems.extend(verdicts(message, seed.RELAY_CIDRS, dkim_signed=False)[1])
    drill = SimpleNamespace(probes=probes, mailhost=mailhost, host_name="sandbox-mailhost")
    found = {mid: [Delivered(message, 0, "")] for mid, message in copies.items()}
    explain_unscanned(drill, run_here, found)
    assert probes[0].problems == [] and probes[0].warnings == []
    assert probes[1].problems == [], probes[1].problems
    assert probes[1].warnings and "connect to Milter service inet:localhost:11332" in probes[1].warnings[0]
    assert queue_id(copies[unscanned_id]) in probes[1].warnings[0]


def wait_for_rspamd(world, timeout: float = 60) -> None:
    """Until rspamd's controller answers: its proxy (the milter) is bound by then too."""
    deadline = time.monotonic() + timeout
    while in_container(world, "rspamc", "-h", "127.0.0.1:11334", "stat").returncode != 0:
        assert time.monotonic() < deadline, "rspamd did not come back"
        time.sleep(0.2)


def test_canary_passes_through_both_relays(fresh):
    result = pyinfra("deploys/canary.py", timeout=120)
    text = output(result)
    assert result.returncode == 0, text
    assert "=> canary passed" in text and "(whitelisted)" in text


def test_drill_passes_with_the_container_taken_down_and_recreated(fresh):
    result = pyinfra("deploys/failover_test.py", timeout=240)
    text = output(result)
    assert result.returncode == 0, text
    assert "=> drill passed" in text, text
    assert "dms-service stop" in text and "dms-service start" in text
    # A relay that delivers in the seconds after the restart, before rspamd listens, gets
    # its message taken unscanned (docker-mailserver's milter_default_action = accept): the
    # row then says so from Postfix's own log, a warning. Otherwise the spam message is
    # tagged, filed into .Junk by docker-mailserver's sieve, and found there.
    messages = [row for row in report_rows(text) if row.stage == "7" and row.check != "mailbox verdicts"]
    assert len(messages) == 5, text
    for row in messages:
        if row.status == "warn" and "not scanned:" in row.evidence:
            assert "without its milter (warning: " in row.evidence, row
        elif row.check.startswith("spam message"):
            assert row.status == "pass" and "tagged (X-Spam: Yes)" in row.evidence, row
        else:
            assert row.status == "pass", row
    assert_live_for_relays(fresh)


def test_a_pod_restart_keeps_it_live_without_a_deploy(fresh):
    before = live_config(fresh)
    took = recreate(fresh)
    print(f"\nrecreate: {took:.1f} s until docker-mailserver is up")
    after = live_config(fresh)
    assert after == before  # user-patches.sh and override.d rebuilt the same state
    assert_live_for_relays(fresh)
    review = pyinfra("deploys/backupmx.py", dry=True)
    assert review.returncode == 0 and report_row(review.stdout, "3").status == "pass", output(review)


def test_rollback_then_the_way_back(fresh):
    rolled = pyinfra("deploys/rollback.py", "--limit", "controller")
    assert rolled.returncode == 0, output(rolled)
    answer, enabled = dns_answer(fresh), acc_enabled(fresh)
    assert answer == {PRIMARY} and enabled is False
    assert_live_for_relays(fresh)  # the mail host's files are left: inert without the records

    back = pyinfra("deploys/backupmx.py")
    assert back.returncode == 0, output(back)
    answer, enabled = dns_answer(fresh), acc_enabled(fresh)
    assert answer == {PRIMARY} | BACKUPS and enabled is True


def test_rollback_reverting_the_mail_host_then_the_way_back(fresh):
    config = Path(fresh["primary"]["config_dir"])
    rolled = pyinfra("deploys/rollback.py", "--data", "revert_mailhost=true")
    assert rolled.returncode == 0, output(rolled)
    assert "=> rollback complete" in output(rolled)
    assert not (config / "postscreen_access.cidr").exists() and not (config / "rspamd/override.d/settings.conf").exists()
    live = live_config(fresh)
    assert "postscreen_access" not in live["postconf -P"] and "backupmx_relay_exempt" not in live["configdump"]
    refused = rcpt_reply(fresh, "198.51.100.25", pregreet=False)
    assert not refused.startswith("RCPT: 250"), refused
    recreate(fresh)  # and still so after a restart: user-patches.sh lost its block too
    restarted = live_config(fresh)["postconf -P"]
    assert restarted == live["postconf -P"]

    back = pyinfra("deploys/backupmx.py")
    assert back.returncode == 0, output(back)
    answer = dns_answer(fresh)
    assert answer == {PRIMARY} | BACKUPS
    assert_live_for_relays(fresh)


def test_drift_of_the_whitelist_by_hand_is_found_and_the_deploy_puts_it_back(fresh):
    table = Path(fresh["primary"]["config_dir"], "postscreen_access.cidr")
    if not table.exists():  # run alone: go live first
        assert pyinfra("deploys/backupmx.py").returncode == 0
    table.write_text(table.read_text().replace("198.51.100.0/24\tpermit\n", ""))  # someone's hand edit
    found = pyinfra("deploys/drift.py")
    text = output(found)
    assert found.returncode == 1 and "198.51.100.0/24" in text and "postscreen_access.cidr" in text, text
    back = pyinfra("deploys/backupmx.py")
    assert back.returncode == 0, output(back)
    clean = pyinfra("deploys/drift.py")
    assert clean.returncode == 0 and "no drift" in output(clean), output(clean)
