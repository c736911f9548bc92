"""The self-hosted relay against real daemons: the sandbox relay's Postfix, HAProxy, the mail host.

The relay is configured through the pyinfra CLI (``tests/deploys/relay_config.py``)
as a user would, then exercised over SMTP on loopback. Its postscreen sees the
real client address (no PROXY in front of a relay): every session that must meet
the pregreet test comes from a fresh 127/8 address, past postscreen's PASS cache.

The module starts from the relay's fresh-install configuration and leaves the
relay as it found it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from backupmx_sandbox import relayhost as sandbox_relay
from backupmx_sandbox.relayhost import haproxy_service, relay_paths, relay_ports
from backupmx_sandbox.seed import DOMAIN, NEUTRAL_SENDER_DOMAIN
from backupmx_sandbox.smtp_client import build_message, send_mail
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import Sandbox
from support.mailhost import file_contents, put_back_files, run_api_operation, staged_copies
from support.mailpath import endpoint, wait_for_delivery
from support.postfix_reload import reload_and_wait
from support.providers import output, pyinfra

from backupmx.core.relayhost import RelayHost, load_relayhost
from backupmx.postfix.postqueue import parse_postqueue_json
from backupmx.providers import relayhost as relay_render
from backupmx.providers.relayhost import OFF, main_settings, trusted_by_mynetworks, wanted_files
from operations.relayhost import relay_config, verify_relay

# A domain with a mail server (the primary's reject_unknown_sender_domain asks) and no
# SPF or DMARC record: the mail host's rspamd has nothing to reject for.
SENDER = f"sender-{os.getpid()}@{NEUTRAL_SENDER_DOMAIN}"


# --- helpers --------------------------------------------------------------------


def fresh_source() -> str:
    """A loopback address no test used yet (127.100-249.x.y; the relay itself is 127.0.0.66)."""
    return f"127.{random.randrange(100, 250)}.{random.randrange(0, 255)}.{random.randrange(1, 254)}"


def settings(world) -> RelayHost:
    return load_relayhost(world["selfhosted"]["relayhost"])


def managed(world) -> dict[str, Path]:
    return {path: Path(path) for path in settings(world).managed_paths()}


def snapshot(world) -> dict[str, bytes | None]:
    return file_contents(managed(world))


def put_back(world, state: dict[str, bytes | None]) -> None:
    if put_back_files(managed(world), state):
        reload_relay(world)


def reload_relay(world) -> None:
    reload_and_wait(settings(world).postfix_config_dir, Path(world["selfhosted"]["log"]))


def leftovers(world) -> list[Path]:
    return staged_copies(managed(world))


def write_inventory(world, directory: Path) -> Path:
    ssh = world["selfhosted"]["ssh"]
    host = {"ssh_hostname": ssh["host"], "ssh_port": ssh["port"], "ssh_user": ssh["user"], "ssh_key": ssh["key"],
            "ssh_known_hosts_file": ssh["known_hosts"], "ssh_strict_host_key_checking": "yes",
            "relayhost": world["selfhosted"]["relayhost"], "relay_domains": [DOMAIN]}
    path = directory / "relay_inventory.py"
    path.write_text(f"import json\nrelay = [('sandbox-relay', json.loads({json.dumps(json.dumps(host))}))]\n")
    return path


def deploy(inventory: Path, *args: str, dry: bool = False) -> subprocess.CompletedProcess:
    return pyinfra("tests/deploys/relay_config.py", *args, dry=dry, inventory=inventory)


def relay_smtp(world) -> tuple[str, int]:
    return endpoint(world["selfhosted"]["smtp"])


def queue_ids(world) -> dict[str, str]:
    """{queue_id: queue_name} of the relay's queue (postqueue -j)."""
    result = subprocess.run(settings(world).postqueue("-j"), capture_output=True, text=True, timeout=30, check=True)
    messages, bad = parse_postqueue_json(result.stdout)
    assert not bad
    return {message["queue_id"]: message["queue_name"] for message in messages}


def queue_id_of(world, message_id: str) -> str | None:
    """The relay's queue id of ``message_id``, from its log (cleanup logs message-id=)."""
    log = Path(world["selfhosted"]["log"]).read_text(errors="replace")
    for line in reversed(log.splitlines()):
        if f"message-id={message_id}" in line:
            return line.split(": ")[1].strip()
    return None


def haproxy(action: str) -> None:
    sandbox = Sandbox()
    supervisor = Supervisor(sandbox)
    if action == "stop":
        supervisor.stop("haproxy")
    else:
        supervisor.start(haproxy_service(relay_paths(sandbox), relay_ports(sandbox)))


# --- fixtures ---------------------------------------------------------------------


def make_fresh(world) -> None:
    """The relay's fresh-install configuration (what `backupmx-sandbox up` writes), reloaded."""
    r = settings(world)
    main, master = (Path(r.main_cf_path).read_text(), Path(r.master_cf_path).read_text())
    pristine = wanted_files(r, [DOMAIN], main, master, present=False)
    put_back(world, {path: None if text is None else text.encode() for path, text in pristine.items()})


@pytest.fixture(scope="module")
def relay_world(world, tmp_path_factory):
    """The relay at its fresh-install configuration for the module; as found afterwards.

    The sandbox world is shared: a pipeline run elsewhere may configure the relay
    meanwhile, so tests that need the fresh state make it again themselves.
    """
    found = snapshot(world)
    make_fresh(world)
    world = dict(world, relay_inventory=write_inventory(world, tmp_path_factory.mktemp("relay")))
    yield world
    if Supervisor(Sandbox()).pid("haproxy") is None:
        haproxy("start")
    put_back(world, found)


@pytest.fixture(scope="module")
def configured(relay_world):
    result = deploy(relay_world["relay_inventory"])
    assert result.returncode == 0, output(result)
    return relay_world


# --- tests ----------------------------------------------------------------------------


def test_dry_run_shows_the_diff_and_changes_nothing(relay_world):
    make_fresh(relay_world)
    before = snapshot(relay_world)
    result = deploy(relay_world["relay_inventory"], dry=True)
    text = output(result)
    assert result.returncode == 0, text
    assert f"+relay_domains = {DOMAIN}" in text and "+maximal_queue_lifetime = 30d" in text
    assert "+  -o soft_bounce=yes" in text and f"-{settings(relay_world).listen_service} inet n - n - - smtpd" in text
    assert "+++ " + settings(relay_world).tls_policy_path in text
    assert snapshot(relay_world) == before


def test_configure_proves_itself_and_second_run_changes_nothing(configured):
    before = snapshot(configured)
    assert b"# BEGIN backupmx relay-main" in before[settings(configured).main_cf_path]
    result = deploy(configured["relay_inventory"])
    text = output(result)
    assert result.returncode == 0, text
    assert "relay_config: change" not in text and "No changes" in text
    assert "relay: proven live:" in text and "pregreet defers" in text
    assert snapshot(configured) == before
    dry = deploy(configured["relay_inventory"], dry=True)
    assert "+++ " not in output(dry) and "relay_config: change" not in output(dry)


def gate_rows(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        if "gate row " in line:
            key, _, rest = line.split("gate row ", 1)[1].partition(" ")
            rows[key] = rest
    return rows


def test_assessment_rows_before_and_after(relay_world):
    """G1/G2 say "will change" on a fresh relay and pass with evidence once configured; G4 compares addresses."""
    inventory = relay_world["relay_inventory"]
    make_fresh(relay_world)
    fresh = gate_rows(output(deploy(inventory, "--data", "relay_assess=true", "--data",
                                    'relay_cidrs=["127.0.0.66/32"]', dry=True)))
    assert fresh["G1"].startswith("change:") and "relay_config will change" in fresh["G1"], fresh
    assert fresh["G2"].startswith("todo:") and "queue 30d" in fresh["G2"], fresh
    assert fresh["G4"].startswith("pass:") and "127.0.0.66/32" in fresh["G4"], fresh
    result = deploy(inventory, "--data", "relay_assess=true", "--data", 'relay_cidrs=["192.0.2.0/24"]')
    rows = gate_rows(output(result))
    assert rows["G4"].startswith("FAIL:") and "whitelists 192.0.2.0/24" in rows["G4"], rows
    after = gate_rows(output(deploy(inventory, "--data", "relay_assess=true", dry=True)))
    assert after["G1"].startswith("pass:") and "RCPT 250" in after["G1"] and "Relay access denied" in after["G1"], after
    assert after["G2"].startswith("pass:") and "450 4.5.1" in after["G2"] and "30d" in after["G2"], after


def test_catch_all_accepts_any_recipient(configured):
    rcpt = f"nobody-{random.getrandbits(40):x}@{DOMAIN}"
    message, _ = build_message(SENDER, rcpt, subject="catch-all")
    result = send_mail(*relay_smtp(configured), SENDER, rcpt, message, source=fresh_source())
    assert result.code("RCPT") == 250 and result.accepted, str(result)


def test_not_an_open_relay_loopback_included(configured):
    message, _ = build_message(SENDER, "victim@example.com", subject="open relay?")
    for source in (fresh_source(), "127.0.0.1"):
        result = send_mail(*relay_smtp(configured), SENDER, "victim@example.com", message, source=source)
        assert result.code("RCPT") == 554, str(result)
        assert "Relay access denied" in result.reply("RCPT").text
        assert not result.accepted


def test_pregreeting_client_gets_4xx_never_5xx(configured):
    rcpt = f"pregreet-{random.getrandbits(40):x}@{DOMAIN}"
    message, _ = build_message(SENDER, rcpt, subject="pregreet")
    result = send_mail(*relay_smtp(configured), SENDER, rcpt, message, pregreet=True, source=fresh_source())
    print(result)
    assert result.code("RCPT") == 450, str(result)
    assert all(code < 500 for step, code in result.codes().items()), str(result)
    assert not result.accepted


def test_denylisted_client_gets_4xx_never_5xx(configured, tmp_path):
    """A reputation verdict other than pregreet: the same `enforce` reply a DNSBL hit gets.

    The sandbox cannot serve a DNSBL to postscreen (dnsblog uses the system
    resolver on port 53), so a denylist entry stands in for a listed client.
    """
    r = settings(configured)
    before = snapshot(configured)
    source = fresh_source()
    table = tmp_path / "deny.cidr"
    table.write_text(f"{source}/32 reject\n")
    table.chmod(0o644)
    tmp_path.chmod(0o755)
    subprocess.run(r.postconf("-P", f"{r.listen_service}/inet/postscreen_access_list=cidr:{table}"), check=True,
                   capture_output=True, timeout=30)
    try:
        reload_relay(configured)
        rcpt = f"listed-{random.getrandbits(40):x}@{DOMAIN}"
        message, _ = build_message(SENDER, rcpt, subject="denylisted")
        result = send_mail(*relay_smtp(configured), SENDER, rcpt, message, source=source)
        print(result)
        assert result.code("RCPT") == 450, str(result)
        assert all(code < 500 for code in result.codes().values()), str(result)
        assert f"DENYLISTED [{source}]" in Path(configured["selfhosted"]["log"]).read_text(errors="replace")
    finally:
        put_back(configured, before)


def test_queue_survives_a_relay_restart_and_drains_to_the_primary(configured):
    rcpt = f"drain-{random.getrandbits(40):x}@{DOMAIN}"
    message, message_id = build_message(SENDER, rcpt, subject="store and forward")
    haproxy("stop")  # the primary's public port is down
    try:
        result = send_mail(*relay_smtp(configured), SENDER, rcpt, message, source=fresh_source())
        assert result.accepted, str(result)
        deadline = time.monotonic() + 30
        while (queue_id := queue_id_of(configured, message_id)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert queue_id, "the relay did not log the message"
        # The first delivery attempt fails (connection refused): the message waits in the queue.
        deadline = time.monotonic() + 30
        while queue_ids(configured).get(queue_id) != "deferred" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert queue_ids(configured).get(queue_id) == "deferred", queue_ids(configured)
        stop, start = configured["selfhosted"]["failover"]["stop_command"], configured["selfhosted"]["failover"]["start_command"]
        subprocess.run(stop, check=True, capture_output=True, timeout=60)
        assert Supervisor(Sandbox()).pid("relay-postfix") is None
        assert queue_id in queue_ids(configured)  # on disk while Postfix is down
        subprocess.run(start, check=True, capture_output=True, timeout=60)
        # A restarted Postfix may retry it at once ("active"); with the primary still down it
        # goes back to "deferred": kept, never bounced.
        deadline = time.monotonic() + 30
        while queue_ids(configured).get(queue_id) != "deferred" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert queue_ids(configured).get(queue_id) == "deferred", queue_ids(configured)
    finally:
        haproxy("start")
    subprocess.run(settings(configured).postqueue("-f"), check=True, capture_output=True, timeout=30)
    delivered = wait_for_delivery(configured["maildir"], message_id, timeout=60)
    received = [str(value) for value in delivered.get_all("Received")]
    # Newest first: the mail host took it from the relay, which took it from the sender.
    assert f"from {sandbox_relay.HOSTNAME}" in received[0] and f"[{sandbox_relay.RELAY_ADDRESS}]" in received[0], received
    assert f"by {sandbox_relay.HOSTNAME}" in received[1], received
    # The mail host stores the message before the relay's smtp client has its 250 and qmgr
    # removes the queue file: the queue empties moments after the delivery, not with it.
    deadline = time.monotonic() + 30
    while queue_id in queue_ids(configured) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue_id not in queue_ids(configured), queue_ids(configured)
    # postscreen on the mail host saw the relay's address through HAProxy's PROXY v2 header,
    # and the relay verified the primary's certificate.
    mail_log = Path(configured["mailhost"]["postfix_config_dir"]).parent / "log" / "postfix.log"
    assert f"CONNECT from [{sandbox_relay.RELAY_ADDRESS}]" in mail_log.read_text()
    relay_log = Path(configured["selfhosted"]["log"]).read_text(errors="replace")
    assert f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{settings(configured).primary_port}" in relay_log
    assert f"{queue_id}: to=<{rcpt}>" in relay_log and "status=sent" in relay_log


def test_broken_value_fails_postfix_check_and_restores_byte_for_byte(configured, monkeypatch, caplog):
    before = snapshot(configured)
    master_pid = (Path(configured["selfhosted"]["postfix_config_dir"]).parent / "postfix-queue" / "pid" / "master.pid")
    log_before = Path(configured["selfhosted"]["log"]).read_text(errors="replace").count("refreshing the Postfix")
    wanted = main_settings
    monkeypatch.setattr(relay_render, "main_settings", lambda relay, domains: {**wanted(relay, domains),
                                                                     "relay_domains": f"{DOMAIN}, {{broken"})
    ok, log = run_api_operation(configured["selfhosted"]["ssh"], "sandbox-relay", relay_config, caplog,
                                relay=settings(configured), domains=[DOMAIN])
    failed = not ok
    lines = [line for line in log.splitlines() if "backupmx: relay_config" in line]
    print(lines)
    assert failed and len(lines) == 1, log
    assert "postfix check warns after the change" in lines[0] and "{broken" in lines[0]
    assert "restored byte for byte" in lines[0]
    assert snapshot(configured) == before
    assert leftovers(configured) == []
    log_after = Path(configured["selfhosted"]["log"]).read_text(errors="replace").count("refreshing the Postfix")
    assert log_after == log_before, "Postfix was reloaded"
    assert master_pid.exists()


def test_undo_gives_back_the_fresh_install(configured):
    r = settings(configured)
    result = deploy(configured["relay_inventory"], "--data", "relay_present=false")
    assert result.returncode == 0, output(result)
    files = snapshot(configured)
    for path in (r.main_cf_path, r.master_cf_path):
        assert b"# BEGIN backupmx" not in files[path] and OFF.encode() not in files[path]
    assert files[r.tls_policy_path] is None
    listener = subprocess.run(r.postconf("-M", f"{r.listen_service}/inet"), capture_output=True, text=True,
                              timeout=30, check=True).stdout.split()
    assert listener[-1] == "smtpd"  # smtpd on the port again, as installed


def test_expected_errors_are_one_line_naming_the_field(relay_world, tmp_path):
    before = snapshot(relay_world)
    bad = json.dumps({**relay_world["selfhosted"]["relayhost"], "primary_tls": "may"})
    result = deploy(relay_world["relay_inventory"], "--data", f"relayhost={bad}", dry=True)
    errors = [line for line in output(result).splitlines() if "error" in line.lower()]
    assert result.returncode != 0 and len(errors) == 1, output(result)
    assert "inventory data relayhost.primary_tls: 'may' is not a TLS level" in errors[0]
    assert "Traceback" not in output(result)
    wrong_dir = json.dumps({**relay_world["selfhosted"]["relayhost"], "postfix_config_dir": "/nonexistent/postfix"})
    result = deploy(relay_world["relay_inventory"], "--data", f"relayhost={wrong_dir}", dry=True)
    errors = [line for line in output(result).splitlines() if "error" in line.lower()]
    assert result.returncode != 0 and len(errors) == 1, output(result)
    assert "Postfix on sandbox-relay" in errors[0] and "relayhost.postfix_config_dir" in errors[0]
    assert snapshot(relay_world) == before


def test_relay_is_not_in_the_primary_mynetworks(relay_world):
    mynetworks = subprocess.run(["postconf", "-c", relay_world["mailhost"]["postfix_config_dir"], "-h", "mynetworks"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert trusted_by_mynetworks(relay_world["selfhosted"]["addresses"], mynetworks) == [], mynetworks


def test_verify_relay_fails_on_a_fresh_relay_and_records_why(relay_world, caplog):
    """Without relay_config the proof fails (loopback may relay, no postscreen) and says so once."""
    make_fresh(relay_world)
    recorded = []
    ok, _ = run_api_operation(relay_world["selfhosted"]["ssh"], "sandbox-relay", verify_relay, caplog,
                              relay=settings(relay_world), domains=[DOMAIN],
                              record=lambda *args: recorded.append(args), timeout=1.0)
    failed = not ok
    assert failed and len(recorded) == 1 and recorded[0][:2] == ("sandbox-relay", False), recorded
    evidence = recorded[0][2]
    assert evidence.startswith("NOT live:") and "mynetworks: want '(empty)'" in evidence, evidence
    assert "the listener does not run postscreen" in evidence, evidence
