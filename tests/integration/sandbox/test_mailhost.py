"""The sandbox mail host: sshd reachable by pyinfra, postscreen on a PROXY-v2
listener, rspamd as milter, catch-all Maildir delivery.

These tests run against the session ``world`` (tests/conftest.py).

postscreen keeps a PASS cache for a day, per address: a client address that once
waited for the greeting skips the pregreet test afterwards. So every SMTP test
claims a fresh random address from 198.18.0.0/15 or 2001:db8:ffff::/48 (outside
every relay CIDR and outside seed.OUTSIDE_NETWORK, which other tests use).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.facts.files import File
from pyinfra.facts.server import Command

from backupmx_sandbox import hostfiles, mailhost, seed
from backupmx_sandbox.smtp_client import SMTPConnection, build_message, send_mail
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import Sandbox
from support.mailpath import delivered as _delivered
from support.mailpath import endpoint as _endpoint
from support.mailpath import fresh_ipv4 as _fresh_ipv4
from support.mailpath import fresh_ipv6 as _fresh_ipv6
from support.mailpath import wait_for_delivery as _wait_for_delivery

# Not seed.SENDER_DOMAIN: its SPF -all and DMARC reject push the score of outside
# mail to ~13, past the primary's reject threshold (11, docker-mailserver's); these
# tests are about the path, not the verdict. The neutral domain has only a mail
# server (the primary's reject_unknown_sender_domain asks for one).
SENDER = f"mailhost-test@{seed.NEUTRAL_SENDER_DOMAIN}"
RECIPIENT = f"someone-{os.getpid()}@{seed.DOMAIN}"


@pytest.fixture(scope="module")
def mh_world(world):
    return world


# --- pyinfra over SSH -------------------------------------------------------------


def test_pyinfra_reads_facts_on_the_mail_host_over_ssh(mh_world):
    ssh = mh_world["ssh"]
    host_data = {
        "ssh_port": ssh["port"],
        "ssh_user": ssh["user"],
        "ssh_key": ssh["key"],
        "ssh_known_hosts_file": ssh["known_hosts"],
        # Only the pinned sandbox host key is accepted: proves known_hosts is right.
        "ssh_strict_host_key_checking": "yes",
    }
    state = State(inventory=Inventory(([(ssh["host"], host_data)], {})), config=Config())
    connect_all(state)
    host = state.inventory.get_host(ssh["host"])
    try:
        assert host.connected
        config_dir = mh_world["postfix_config_dir"]
        main_cf = host.get_fact(File, path=f"{config_dir}/main.cf")
        assert main_cf and main_cf["user"] == "root"
        proxy_setting = f"{mh_world['postfix_proxy_service']}/inet/postscreen_upstream_proxy_protocol"
        assert host.get_fact(Command, command=f"postconf -c {config_dir} -P {proxy_setting}") == (
            f"{proxy_setting} = haproxy"
        )
        assert host.get_fact(Command, command=f"postconf -c {config_dir} -h virtual_mailbox_domains") == seed.DOMAIN
    finally:
        disconnect_all(state)


# --- postscreen on the PROXY-v2 listener -------------------------------------------


@pytest.mark.parametrize("fresh_address", [_fresh_ipv4, _fresh_ipv6], ids=["ipv4", "ipv6"])
def test_proxy_listener_delivers_through_rspamd_to_the_maildir(mh_world, fresh_address):
    source = fresh_address()
    message, message_id = build_message(SENDER, RECIPIENT, subject=f"proxy {source}")
    host, port = _endpoint(mh_world["proxy_listener"])

    result = send_mail(host, port, SENDER, RECIPIENT, message, proxy_source=source)

    assert result.accepted, str(result)
    delivered = _wait_for_delivery(mh_world["maildir"], message_id)
    assert source in delivered["Received"], "smtpd saw the PROXY header's address"
    assert "X-Spamd-Result" in delivered, "rspamd scanned it as milter"
    assert "Authentication-Results" in delivered


@pytest.mark.parametrize("fresh_address", [_fresh_ipv4, _fresh_ipv6], ids=["ipv4", "ipv6"])
def test_pregreet_is_rejected_without_a_whitelist(mh_world, fresh_address):
    """The default the product changes: a client talking before the greeting gets RCPT 550."""
    message, message_id = build_message(SENDER, RECIPIENT, subject="pregreet")
    host, port = _endpoint(mh_world["proxy_listener"])

    result = send_mail(host, port, SENDER, RECIPIENT, message, proxy_source=fresh_address(), pregreet=True)

    assert not result.reply("greeting").complete, "postscreen's 220- line dangles after a pregreet"
    assert result.code("RCPT") == 550 and "5.5.1" in result.reply("RCPT").text, str(result)
    assert not result.accepted
    # Nothing can arrive later: no DATA was taken (it is DATA that queues a message).
    assert result.code("DATA") != 354 and "MESSAGE" not in result.codes(), str(result)
    assert not _delivered(mh_world["maildir"], message_id)


def test_plain_listener_speaks_smtp_without_a_proxy_header(mh_world):
    message, message_id = build_message(SENDER, RECIPIENT, subject="plain listener")
    host, port = _endpoint(mh_world["smtp_listener"])

    result = send_mail(host, port, SENDER, RECIPIENT, message)

    assert result.accepted, str(result)
    assert "[127.0.0.1]" in _wait_for_delivery(mh_world["maildir"], message_id)["Received"]


# --- rspamd -----------------------------------------------------------------------


def test_rspamadm_and_rspamc_reach_the_sandbox_rspamd(mh_world):
    configtest = subprocess.run(
        ["rspamadm", *mh_world["rspamd_var_args"], "configtest"], capture_output=True, text=True, timeout=60
    )
    assert configtest.returncode == 0 and "syntax OK" in configtest.stdout, configtest.stdout + configtest.stderr
    stat = subprocess.run(
        ["rspamc", "-h", mh_world["rspamd_controller"], "stat"], capture_output=True, text=True, timeout=30
    )
    assert stat.returncode == 0 and "Messages scanned" in stat.stdout, stat.stdout + stat.stderr
    local_dir = Path(mh_world["rspamd_local_dir"])
    assert (local_dir / "local.d").is_dir() and (local_dir / "override.d").is_dir()


# --- up and down ------------------------------------------------------------------


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _file_state(path: Path):
    return (path.stat().st_mtime_ns, path.read_bytes()) if path.exists() else None


def test_up_again_changes_nothing_and_never_touches_etc_postfix(mh_world):
    sandbox = Sandbox()
    supervisor = Supervisor(sandbox)
    system_main_cf = Path("/etc/postfix/main.cf")
    before_system = _file_state(system_main_cf)
    config_dirs = [Path(mh_world["postfix_config_dir"]), Path(mh_world["rspamd_local_dir"])]
    before = [_tree_digest(directory) for directory in config_dirs]
    pids = {name: supervisor.pid(name) for name in mailhost.SERVICE_NAMES}

    for service in mailhost.services(sandbox):
        supervisor.start(service)

    assert [_tree_digest(directory) for directory in config_dirs] == before
    assert {name: supervisor.pid(name) for name in mailhost.SERVICE_NAMES} == pids
    assert _file_state(system_main_cf) == before_system
    if system_main_cf.exists():
        assert str(sandbox.root) not in system_main_cf.read_text()


def test_postfix_check_is_clean_and_reload_works(mh_world):
    """No permission or config warnings; `postfix reload` (what the product runs) keeps it serving."""
    config_dir = mh_world["postfix_config_dir"]
    assert mailhost.postfix_check(config_dir) == ""
    reload = subprocess.run(["postfix", "-c", config_dir, "reload"], capture_output=True, text=True, timeout=30)
    assert reload.returncode == 0, reload.stderr
    host, port = _endpoint(mh_world["smtp_listener"])
    with SMTPConnection.connect(host, port) as session:
        assert session.read_reply().code == 220


def _postfix_processes(config_dir: str) -> list[int]:
    """Pids of live processes started from ``config_dir`` (Postfix exports MAIL_CONFIG to all)."""
    needle = f"MAIL_CONFIG={config_dir}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_stopping_postfix_leaves_no_process_and_no_port(mh_world):
    """Even with an SMTP session open (a live smtpd), stop takes every Postfix process along."""
    sandbox = Sandbox()
    supervisor = Supervisor(sandbox)
    config_dir = mh_world["postfix_config_dir"]
    ports = [_endpoint(mh_world[key])[1] for key in ("proxy_listener", "smtp_listener")]
    postfix = next(s for s in mailhost.services(sandbox) if s.name == "postfix")
    session = SMTPConnection.connect(*_endpoint(mh_world["smtp_listener"]))
    try:
        assert session.read_reply().code == 220
        assert len(_postfix_processes(config_dir)) >= 4  # master, qmgr, pickup, postlogd, smtpd ...

        assert supervisor.stop("postfix")

        assert _postfix_processes(config_dir) == []
        assert not any(hostfiles.listening(port) for port in ports)
    finally:
        session.close()
        supervisor.start(postfix)
    assert all(hostfiles.listening(port) for port in ports)
