"""Stage 3 against docker-mailserver's changedetector (issue 21).

The changedetector polls the mounted config dir every 2 s and, on any change under
``rspamd/``, removes ``/etc/rspamd/override.d/*``, copies the mounted files in and restarts
rspamd, then reloads Postfix and Dovecot. A deploy writes into that very tree. These
tests switch the whitelist and the exemption on and off in a row while it runs, and a
validation that fails, and check what it did each time: one change handled per switch,
never a stray or half-written file copied in, Postfix never complaining about its
configuration, and the proof holding after each deploy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from backupmx.mailhost.model import load_mailhost
from backupmx.mailhost.render import render_rspamd_block
from backupmx_sandbox import seed
from backupmx_sandbox.smtp_client import build_message, send_mail
from support.dms import changedetector_log, in_container, mail_log, pristine
from support.mailhost import run_api_operation
from support.mailpath import endpoint, wait_for_delivery
from operations.mailhost import rspamd_exemption
from support.providers import output, pyinfra, sandbox_settings

SWITCH = "tests/deploys/mailhost_on.py"
# Deploy/revert cycles: 3 in `make test`, 10 in the long form (BACKUPMX_SWEEP=1), or DMS_CYCLES.
SHORT_CYCLES, SWEEP_CYCLES = 3, 10
CYCLES = int(os.environ.get("DMS_CYCLES")
             or (SWEEP_CYCLES if os.environ.get("BACKUPMX_SWEEP") == "1" else SHORT_CYCLES))
# A complaint of Postfix about its configuration, in docker-mailserver's mail.log.
POSTFIX_COMPLAINT = re.compile(r"postfix/[\w/-]+\[\d+\]: (fatal|panic|error):|postfix/[\w/-]+\[\d+\]: warning: "
                               r"(/etc/postfix/|.*unused parameter|.*unknown|.*bad)", re.IGNORECASE)
RSPAMD_DIRS = ("/etc/rspamd/override.d", "/tmp/docker-mailserver/rspamd/override.d")


def switch(present: bool):
    data = ["--data", "prove=true"] if present else ["--data", "present=false"]
    return pyinfra(SWITCH, "--limit", "mailhosts", *data, timeout=180)


def rcpt_reply(world, source: str) -> str:
    host, port = endpoint(world["proxy_listener"])
    sender = f"someone@{seed.SENDER_DOMAIN}"
    message, _ = build_message(sender, f"postmaster@{seed.DOMAIN}")
    result = send_mail(host, port, sender, f"postmaster@{seed.DOMAIN}", message, proxy_source=source,
                       helo="mail.rollernet.us")
    return next((line for line in str(result).splitlines() if line.startswith("RCPT:")), str(result))


def override_files(world) -> dict[str, dict[str, str]]:
    """Each rspamd override dir (the container's, the mounted one): file name -> sha256."""
    listing = {}
    for directory in RSPAMD_DIRS:
        found = in_container(world, "sh", "-c", 'cd "$1" && for f in * .[!.]*; do [ -f "$f" ] && '
                             'printf "%s %s\\n" "$f" "$(sha256sum <"$f" | cut -c1-16)"; done; true', "sh", directory)
        listing[directory] = dict(line.split(" ", 1) for line in found.stdout.splitlines())
    return listing


def assert_consistent(world) -> None:
    """The container's override.d holds exactly the mounted files, byte for byte, and no copy of ours."""
    live, mounted = (override_files(world)[directory] for directory in RSPAMD_DIRS)
    mounted = {name: digest for name, digest in mounted.items() if not name.startswith(".")}  # the sandbox's stamps
    assert live == mounted, (live, mounted)
    stray = in_container(world, "sh", "-c", "ls -a /etc/rspamd/override.d /tmp/docker-mailserver "
                         "/tmp/docker-mailserver/rspamd/override.d | grep -c backupmx- || true").stdout.strip()
    assert stray == "0", stray
    status = in_container(world, "supervisorctl", "status", "rspamd", "postfix", "changedetector").stdout
    assert status.count("RUNNING") == 3, status


@pytest.fixture(scope="module")
def world(dms):
    pristine(dms)
    yield dms
    pristine(dms)


@pytest.mark.timeout(max(300, 90 * CYCLES))  # a cycle (two deploys, DMS restarting rspamd twice) takes 15-30 s
def test_deploys_and_reverts_in_a_row_while_the_changedetector_runs(world):
    log_start, detector_start = len(mail_log(world)), changedetector_log(world).count("Change detected")
    for cycle in range(CYCLES):
        on = switch(True)
        assert on.returncode == 0, f"cycle {cycle} deploy: {output(on)}"  # stage 4's proof ran and held
        assert_consistent(world)
        reply = rcpt_reply(world, "198.51.100.25")
        assert reply.startswith("RCPT: 250"), (cycle, reply)
        off = switch(False)
        assert off.returncode == 0, f"cycle {cycle} revert: {output(off)}"
        assert_consistent(world)
        reply = rcpt_reply(world, "198.51.100.25")
        assert reply.startswith("RCPT: 450 4.7.25"), (cycle, reply)  # reject_unknown_client_hostname again
    complaints = [line for line in mail_log(world)[log_start:].splitlines() if POSTFIX_COMPLAINT.search(line)]
    assert complaints == []
    # One change handled per switch: nothing half-written or stray ever showed up in the tree.
    handled = changedetector_log(world).count("Change detected") - detector_start
    assert handled == 2 * CYCLES, handled
    print(f"\n{CYCLES} deploys and reverts: {handled} changes handled by the changedetector, "
          f"no Postfix complaint, the proof held after each deploy")


def test_a_failed_validation_restores_the_files_and_docker_mailserver_keeps_serving(world, monkeypatch, caplog):
    """The incident of the issue: rspamd's validation fails while the changedetector watches."""
    mailhost = load_mailhost(world["mailhost"])
    settings = Path(mailhost.rspamd_settings_host_path)
    assert not settings.exists()
    detector_before, rspamd_before = changedetector_log(world).count("Change detected"), rspamd_pid(world)
    # A broken include in the rendered rule: rspamadm configtest fails on it.
    render = render_rspamd_block
    monkeypatch.setattr("backupmx.mailhost.render.render_rspamd_block",
                        lambda cidrs: render(cidrs) + '.include "$LOCAL_CONFDIR/local.d/backupmx-missing.inc"\n')
    relay_cidrs = sandbox_settings().relay_cidrs
    ok, log = run_api_operation(world["ssh"], "sandbox-mailhost", rspamd_exemption, caplog, mailhost=mailhost,
                                relay_cidrs=relay_cidrs)
    assert not ok
    lines = [line for line in log.splitlines() if "backupmx: rspamd_exemption:" in line]
    assert len(lines) == 1 and "rspamadm configtest fails after the change" in lines[0], log
    assert "restored byte for byte" in lines[0]
    print("\n" + lines[0])
    assert not settings.exists()  # never put into the watched tree
    assert_consistent(world)
    assert changedetector_log(world).count("Change detected") == detector_before  # it had nothing to act on
    assert rspamd_pid(world) == rspamd_before  # not restarted, by us or by it
    # Still serving: the stock :25 (an internal client) takes and delivers mail, rspamd's controller answers.
    host, port = endpoint(world["smtp_listener"])
    sender = f"someone@{seed.NEUTRAL_SENDER_DOMAIN}"
    message, message_id = build_message(sender, f"internal@{seed.DOMAIN}", subject="still serving")
    result = send_mail(host, port, sender, f"internal@{seed.DOMAIN}", message)
    assert result.accepted, str(result)
    wait_for_delivery(world["maildir"], message_id)
    stat = in_container(world, "rspamc", "stat")
    assert stat.returncode == 0 and "Messages scanned" in stat.stdout, stat.stdout + stat.stderr


def rspamd_pid(world) -> str:
    status = in_container(world, "supervisorctl", "status", "rspamd").stdout
    return status.split("pid", 1)[1].split(",", 1)[0].strip() if "pid" in status else status
