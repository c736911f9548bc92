"""Provider selfhosted through the whole pipeline (issue #10, the wiring).

The pyinfra CLI against the sandbox world with ``--data provider=selfhosted`` (the
relay host of ``world.json["selfhosted"]``), like tests/cli/test_deploy_cli.py. The
``SelfHostedProvider`` against a fake relay Postfix: tests/unit/test_selfhosted_provider.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from backupmx.core.relayhost import load_relayhost
from backupmx.dns import check as dnscheck
from support.mailhost import managed_paths, primary_refuses, restore, snapshot, start_postfix_if_down
from support.providers import (
    PROJECT_ROOT,
    ReportRow,
    acc_requests,
    admin,
    clear_cloudflare_requests,
    cloudflare_admin,
    cloudflare_writes,
    output,
    pyinfra,
    report_row,
    report_rows,
)

# No test depends on another having run: a test that takes the deployed state away
# (the zone reset, the rollback) deploys again after itself (``redeploy_after``), and
# the module fixture puts the mail host, the relay host's Postfix configuration and
# the zone back as it found them.

SELFHOSTED = ["--data", "provider=selfhosted"]


def cli(deploy: str, *args: str, yes: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return pyinfra(deploy, *args, yes=yes, timeout=timeout)


def relay_dir(world) -> Path:
    return Path(load_relayhost(world["selfhosted"]["relayhost"]).postfix_config_dir)


def relay_files(world) -> dict[str, bytes]:
    """The relay Postfix's configuration directory, file by file (what the relay stage may change)."""
    root = relay_dir(world)
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and not path.is_symlink()}


def restore_relay(world, files: dict[str, bytes]) -> None:
    root = relay_dir(world)
    now = relay_files(world)
    if now == files:
        return
    for name in set(now) - set(files):
        (root / name).unlink()
    for name, content in files.items():
        if now.get(name) != content:
            (root / name).write_bytes(content)
    subprocess.run(["postfix", "-c", str(root), "reload"], capture_output=True, timeout=60, check=False)


def postconf(world, name: str) -> list[str]:
    result = subprocess.run(["postconf", "-c", str(relay_dir(world)), "-h", name], capture_output=True,
                            text=True, timeout=30, check=True)
    return [part for part in result.stdout.replace(",", " ").split() if part]


def mx_set(world) -> set[tuple[int, str]]:
    return set(dnscheck.mx_per_server(world["zone"], [world["dns"]])[world["dns"]])


def size_row(text: str) -> ReportRow:
    [row] = [row for row in report_rows(text) if row.check == "relay takes the primary's largest message"]
    return row


def report_of(text: str) -> str:
    start = text.index("backupmx gate report")
    return text[start:text.index("=>", start)]


@pytest.fixture(scope="module")
def relay_world(world):
    if "selfhosted" not in world:
        pytest.skip("the sandbox world has no relay host (world.json has no `selfhosted`)")

    mail = snapshot(world)
    relay = relay_files(world)
    yield world
    restore(world, mail)
    restore_relay(world, relay)
    cloudflare_admin(world, "POST", "reset")


@pytest.fixture(scope="module")
def deployed(relay_world):
    """The whole pipeline once with provider selfhosted (from the zone's seed)."""
    cloudflare_admin(relay_world, "POST", "reset")
    started = time.monotonic()
    result = cli("deploys/backupmx.py", *SELFHOSTED)
    return {"result": result, "seconds": time.monotonic() - started}


@pytest.fixture
def redeploy_after(deployed):
    """For a test that takes the deployed state away: the pipeline again after it."""
    yield
    result = cli("deploys/backupmx.py", *SELFHOSTED)
    assert result.returncode == 0, output(result)


def relay_mx(world) -> tuple[int, str]:
    return world["backup_priority"], world["selfhosted"]["host"]


def test_dry_run_shows_the_relay_rows_and_changes_nothing(relay_world):
    clear_cloudflare_requests(relay_world)
    before = (snapshot(relay_world), relay_files(relay_world), mx_set(relay_world))
    result = cli("deploys/backupmx.py", "--dry", *SELFHOSTED, yes=False)
    text = output(result)
    assert result.returncode == 0, text
    report = report_of(text)
    assert "provider selfhosted: relay host(s) sandbox-relay" in report
    host = relay_world["selfhosted"]["host"]
    assert f"STARTTLS {host}" in report
    sizes = size_row(text)
    assert sizes.status == "pass" and sizes.evidence.startswith("sandbox-relay: message_size_limit"), sizes
    rows = report_rows(text)
    for gate in ("G1", "G2", "G4"):  # checks of the relay host itself
        assert any(row.stage == gate and "sandbox-relay:" in row.evidence for row in rows), report
    assert "Relay stage: configure the store-and-forward relay" in text
    if postconf(relay_world, "relay_domains") != [relay_world["zone"]]:  # a relay still to configure: its diff
        assert f"+relay_domains = {relay_world['zone']}" in text
        assert not [row for row in rows if row.stage == "G1" and row.status == "FAIL"], \
            "a relay not configured yet is a change, not a failure"
    assert (snapshot(relay_world), relay_files(relay_world), mx_set(relay_world)) == before
    assert cloudflare_writes(relay_world) == []


def test_a_relay_smaller_than_the_primary_is_refused_before_any_change(relay_world):
    """Gate G2 of this provider: a relay message_size_limit below the primary's answers 552 to mail
    the primary would take (a bounce during an outage)."""
    clear_cloudflare_requests(relay_world)
    before = (snapshot(relay_world), relay_files(relay_world), mx_set(relay_world))
    small = {**relay_world["selfhosted"]["relayhost"], "message_size_limit": 1000000}
    result = cli("deploys/backupmx.py", *SELFHOSTED, "--data", "relayhost=" + json.dumps(small))
    text = output(result)
    assert result.returncode != 0, text
    row = size_row(text)
    assert row.status == "FAIL" and row.evidence.startswith("sandbox-relay: message_size_limit 1000000 bytes < primary "), row
    assert "set relayhost.message_size_limit = " in text
    assert (snapshot(relay_world), relay_files(relay_world), mx_set(relay_world)) == before
    assert cloudflare_writes(relay_world) == []


def test_full_deploy_configures_the_relay_whitelists_it_and_points_mx_at_it(relay_world, deployed):
    result = deployed["result"]
    text = output(result)
    assert result.returncode == 0, text
    zone = relay_world["zone"]
    assert zone in postconf(relay_world, "relay_domains")

    cidr_table = managed_paths(relay_world)["cidr"].read_text()
    for address in relay_world["selfhosted"]["relay_cidrs"]:
        assert address in cidr_table
    assert relay_mx(relay_world) in mx_set(relay_world)
    primary = relay_world["primary_mx"]
    assert (primary["priority"], primary["host"]) in mx_set(relay_world)
    print(f"\nfirst selfhosted deploy through the CLI: {deployed['seconds']:.1f}s")


def test_second_run_changes_nothing(relay_world, deployed):
    before = (snapshot(relay_world), relay_files(relay_world), mx_set(relay_world))
    result = cli("deploys/backupmx.py", *SELFHOSTED)
    text = output(result)
    assert result.returncode == 0, text
    rows = [row for row in report_rows(text) if row.status in ("change", "FAIL")]
    assert rows == [], rows
    assert (snapshot(relay_world), relay_files(relay_world), mx_set(relay_world)) == before


def ssh_commands(debug_text: str, host_name: str, operation: str | None = None) -> int:
    """SSH commands (round trips) pyinfra's ``--debug`` log shows on ``host_name``; ``operation``: only
    while that operation executes (from its ``--> Starting operation`` line to the next one)."""
    count, inside = 0, operation is None
    for line in debug_text.splitlines():
        if line.startswith("--> Starting operation: "):
            inside = operation is None or line[len("--> Starting operation: "):].strip() == operation
        elif inside and f"Running command on {host_name}:" in line:
            count += 1
    return count


def test_relay_config_under_yes_reuses_the_plan_it_prepared(relay_world, deployed):
    """With -y the operation bodies run only at execution: relay_config takes the plan
    assess_relayhost made while preparing (as the mail host's stage 3 does) instead of
    reading the relay's Postfix and files again: no SSH round trip of its own."""
    result = cli("deploys/backupmx.py", *SELFHOSTED, "--debug")
    text = output(result)
    assert result.returncode == 0, "the -y no-op run failed (its --debug log is not shown)"
    relay = "sandbox-relay"  # inventory/sandbox.py's relay host
    assert ssh_commands(text, relay, "Relay stage: configure the store-and-forward relay") == 0
    print(f"\nSSH round trips to the relay, -y no-op run: {ssh_commands(text, relay)}")


def test_hold_on_status_off_on_the_relay(relay_world, deployed):
    try:
        result = cli("deploys/maintenance.py", "--data", "hold=on", *SELFHOSTED)
        assert result.returncode == 0, output(result)
        assert "smtp" in postconf(relay_world, "defer_transports")
        status = cli("deploys/maintenance.py", "--data", "hold=status", *SELFHOSTED)
        assert status.returncode == 0 and "Accept-and-Hold is ON" in output(status), output(status)
    finally:
        result = cli("deploys/maintenance.py", "--data", "hold=off", *SELFHOSTED)
    assert result.returncode == 0, output(result)
    assert postconf(relay_world, "defer_transports") == []


def test_failover_drill_passes_against_the_relay(relay_world, deployed, sandbox):
    result = cli("deploys/failover_test.py", *SELFHOSTED, timeout=180)
    text = output(result)
    try:
        assert result.returncode == 0, text
        assert "=> drill passed: " in text
        assert f"via {relay_world['selfhosted']['host']}" in text
    finally:
        start_postfix_if_down(relay_world, sandbox)


def test_canary_passes_through_the_relay(relay_world, deployed):
    """The weekly canary (docs/canary.md, tests/cli/test_canary.py) through the relay host."""
    started = time.monotonic()
    result = cli("deploys/canary.py", *SELFHOSTED, timeout=120)
    wall = time.monotonic() - started
    text = output(result)
    assert result.returncode == 0, text
    [row] = [row for row in report_rows(text) if row.stage == "canary"]
    assert row.check == f"{relay_world['zone']} via {relay_world['selfhosted']['host']}", text
    assert row.status == "pass" and row.evidence.startswith("delivered in "), row
    assert "no SPF/DMARC symbol; DKIM R_DKIM_ALLOW" in row.evidence and "(whitelisted)" in row.evidence, row
    print(f"\ncanary through the self-hosted relay: {wall:.1f} s wall; {row.evidence.split(':', 1)[0]}")


def test_canary_refused_by_the_primary_is_named_from_the_relays_mail_log(relay_world, deployed):
    """The primary answers 554 to the canary's RCPT: the relay bounces it at once, and its mail log
    (the self-hosted provider's bounce listing) gives the canary the primary's reply."""
    recipient = f"backupmx-canary@{relay_world['zone']}"
    with primary_refuses(relay_world, recipient) as reply:
        result = cli("deploys/canary.py", *SELFHOSTED, timeout=120)
    text = output(result)
    assert result.returncode != 0, text
    [row] = [row for row in report_rows(text) if row.stage == "canary"]
    assert row.status == "FAIL", text
    assert row.evidence.startswith("refused by the primary: the relay bounced it on the primary's reply: host "), row
    assert reply in row.evidence and "(in reply to RCPT TO command)" in row.evidence, row
    print(f"\nrow: {row.evidence}")


def test_stage_5_refuses_when_the_relay_is_not_proven(relay_world, redeploy_after):
    cloudflare_admin(relay_world, "POST", "reset")  # the zone wants the relay's MX record again
    result = cli("deploys/backupmx.py", *SELFHOSTED, "--limit", "controller", "--limit", "mailhosts")
    text = output(result)
    assert result.returncode != 0, text
    assert "not part of this run (--limit)" in text
    assert "refused: relay not proven configured and live on relay host(s) sandbox-relay" in text
    assert cloudflare_writes(relay_world) == []
    assert relay_mx(relay_world) not in mx_set(relay_world)


def test_rollback_takes_the_mx_out_then_disables_the_domain_on_the_relay(relay_world, redeploy_after):
    zone = relay_world["zone"]
    assert relay_mx(relay_world) in mx_set(relay_world) and zone in postconf(relay_world, "relay_domains")
    result = cli("deploys/rollback.py", *SELFHOSTED)
    text = output(result)
    assert result.returncode == 0, text
    assert relay_mx(relay_world) not in mx_set(relay_world)
    assert zone not in postconf(relay_world, "relay_domains")
    disabled = report_row(result.stdout, "3")
    assert disabled.status == "change" and disabled.evidence.startswith("disabled ("), text
    again = cli("deploys/rollback.py", *SELFHOSTED)  # harmless the second time
    assert again.returncode == 0, output(again)
    assert report_row(again.stdout, "3").evidence.startswith("already disabled ("), output(again)
    route = f"{zone}=smtp:"
    assert route in " ".join(postconf(relay_world, "transport_maps"))  # the queue still drains

    # The way back: --dry plans it and changes nothing, the deploy makes the relay whole.
    files = relay_files(relay_world)
    dry = pyinfra("deploys/backupmx.py", *SELFHOSTED, dry=True)
    assert dry.returncode == 0, output(dry)
    g1 = report_row(dry.stdout, "G1", "relay listening")
    assert g1.status == "change" and f"enables {zone} again" in g1.evidence, output(dry)
    assert relay_files(relay_world) == files and relay_mx(relay_world) not in mx_set(relay_world)
    back = cli("deploys/backupmx.py", *SELFHOSTED)
    assert back.returncode == 0, output(back)
    assert zone in postconf(relay_world, "relay_domains")
    assert route not in " ".join(postconf(relay_world, "transport_maps"))
    assert "transport_maps" not in (relay_dir(relay_world) / "main.cf").read_text()
    assert relay_mx(relay_world) in mx_set(relay_world)


def test_selfhosted_without_a_relay_group_is_one_line(relay_world, tmp_path):
    inventory = tmp_path / "no_relay.py"
    inventory.write_text(
        "import runpy\n"
        f"_ns = runpy.run_path({str(PROJECT_ROOT / 'inventory' / 'sandbox.py')!r})\n"
        "mailhosts = _ns['mailhosts']\ncontroller = _ns['controller']\n")
    admin(relay_world, "reset", {})
    result = pyinfra("deploys/backupmx.py", *SELFHOSTED, dry=True, inventory=inventory, timeout=120)
    text = output(result)
    assert result.returncode != 0
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1 and "inventory data relay:" in errors[0], text
    assert acc_requests(relay_world) == []
