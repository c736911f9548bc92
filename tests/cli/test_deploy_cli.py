"""The deploy as a user runs it: the pyinfra CLI against the sandbox world."""

from __future__ import annotations

import os
import subprocess

import hvac
import pytest

from support import providers
from support.providers import report_row, secret_values


def pyinfra(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return providers.pyinfra("deploys/backupmx.py", *args, env=env, yes=False, timeout=120)


def test_dry_run_prints_the_gate_report(world):
    result = pyinfra("--dry")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "backupmx gate report: " + world["zone"] in result.stdout
    assert report_row(result.stdout, "0", "inventory data").status == "pass"
    secrets = report_row(result.stdout, "1", "secrets")
    assert secrets.status == "pass" and secrets.evidence.endswith(f"from vault {world['vault_secret_path']}")


def test_secrets_never_reach_output_even_with_vvv(world):
    result = pyinfra("--dry", "-vvv")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for value in secret_values(world):
        assert value not in output


@pytest.mark.parametrize("data,field", [
    ('relay_cidrs=["192.0.2.1/24"]', "relay_cidrs[0]"),
    ('relay_cidrs=["0.0.0.0/0"]', "relay_cidrs[0]"),
    ("relay_cidrs=[]", "relay_cidrs"),
    ('backup_mx={"provider": "rollernet", "hosts": ["mail.rollernet.us"], "priority": 1}', "backup_mx.priority"),
])
def test_bad_data_is_one_line_naming_the_field(world, data, field):
    result = pyinfra("--dry", "--data", data)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if "pyinfra error" in line]
    assert len(error_lines) == 1 and field in error_lines[0], output


def test_missing_secret_stops_with_the_vault_path(world):
    client = hvac.Client(url=world["vault_addr"], token=world["vault_token"])
    original = client.secrets.kv.v2.read_secret_version(path="viktor", mount_point="secret", raise_on_deleted_version=True)["data"]["data"]
    without = {key: value for key, value in original.items() if key != "cloudflare_api_token"}
    client.secrets.kv.v2.create_or_update_secret(path="viktor", mount_point="secret", secret=without)
    try:
        result = pyinfra("--dry")
    finally:
        client.secrets.kv.v2.create_or_update_secret(path="viktor", mount_point="secret", secret=original)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "has no key 'cloudflare_api_token'" in output
    assert "Traceback" not in output


def test_wrong_vault_token_is_refused_cleanly(world):
    env = {**os.environ, "VAULT_TOKEN": "not-the-token", "HOME": "/nonexistent"}
    result = pyinfra("--dry", env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "permission denied reading secret/viktor" in output
    assert "Traceback" not in output and "not-the-token" not in output


def _merged(*args: str, dry: bool) -> list[str]:
    """The run's output as a terminal shows it (stdout and stderr in one stream), as lines."""
    argv = providers.pyinfra_argv("deploys/backupmx.py", *args, yes=not dry, dry=dry)
    result = subprocess.run(argv, cwd=providers.PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout
    return result.stdout.rstrip("\n").splitlines()


def test_the_verdict_and_what_changed_are_the_last_lines(fresh):
    zone = fresh["zone"]
    # The review: after the diffs and pyinfra's table, what would change and the verdict.
    lines = _merged(dry=True)
    tail = lines[lines.index(f"backupmx deploy: {zone} (review: nothing was changed)"):]
    assert any(line.startswith(f"  5   DNS {zone}: would: + MX {zone} 20 ") for line in tail), tail
    assert tail[-1].startswith("  => gates allow the deploy to proceed; 2 record change(s), "), tail
    assert tail[-1].endswith("; run it without --dry to apply"), tail
    # The deploy: what it changed, after pyinfra's results table.
    lines = _merged(dry=False)
    tail = lines[lines.index(f"backupmx deploy: {zone} (what this run did)"):]
    assert lines.index("--> Results:") < lines.index(tail[0])
    assert f"  changed: Stage 5: backup MX records for {zone} (@local): + MX {zone} 20 mail.rollernet.us; " \
           f"+ MX {zone} 20 mail2.rollernet.us" in tail, tail
    assert tail[-1] == "  => deploy complete: every stage ran; a second run changes nothing", tail
