"""Monitoring pushed to the sandbox monitoring host through the pyinfra CLI
(deploys/monitoring.py: validated on the host, restored on failure, a second run
changes nothing), and the docs CLI that renders the runbook and architecture pages."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupmx.monitoring.rules import render_all
from backupmx.monitoring.settings import BLACKBOX_FILE, FILES, RULES_FILE, load_monitoring
from support.providers import PROJECT_ROOT, output, pyinfra, sandbox_settings


def deploy(*args: str, dry: bool = False) -> subprocess.CompletedProcess:
    return pyinfra("deploys/monitoring.py", "--limit", "sandbox-monitoring", *args, dry=dry)


@pytest.fixture
def mon_dir(world):
    directory = Path(world["root"]) / "monitoring-test"
    shutil.rmtree(directory, ignore_errors=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def data(directory: Path, **extra) -> list[str]:
    docs = directory / "docs"
    value = {"dir": str(directory / "files"), "blackbox_check": True, "runbook": str(docs / "runbook.md"),
             "architecture": str(docs / "architecture.md"), **extra}
    return ["--data", f"monitoring={json.dumps(value)}"]


def test_dry_run_shows_the_files_and_changes_nothing(world, mon_dir):
    result = deploy(*data(mon_dir), dry=True)
    assert result.returncode == 0, output(result)
    assert f"+++ {mon_dir}/files/{BLACKBOX_FILE}" in output(result)
    assert "+  backupmx_mx_viktorbarzin_me__mail2_rollernet_us:" in output(result)
    assert "validated with prometheus-blackbox-exporter --config.check, promtool check rules" in output(result)
    assert not mon_dir.exists()


def test_push_validates_and_a_second_run_changes_nothing(world, mon_dir):
    started = time.monotonic()
    result = deploy(*data(mon_dir))
    first = time.monotonic() - started
    assert result.returncode == 0, output(result)
    settings = sandbox_settings()
    # As deployed: the alerts link to the runbook rendered for this monitoring host.
    rendered = render_all(settings, load_monitoring({"dir": str(mon_dir / "files"),
                                                     "runbook": str(mon_dir / "docs" / "runbook.md")}, settings))
    for name, text in rendered.items():
        assert (mon_dir / "files" / name).read_text() == text
    assert "# Runbook: backup MX for viktorbarzin.me" in (mon_dir / "docs" / "runbook.md").read_text()
    assert "```mermaid" in (mon_dir / "docs" / "architecture.md").read_text()
    started = time.monotonic()
    again = deploy(*data(mon_dir))
    second = time.monotonic() - started
    assert again.returncode == 0, output(again)
    # Hosts 3, Success -, Error -, No Change 3.
    assert re.search(r"Grand total\s+3\s+-\s+-\s+3", output(again)), output(again)
    print(f"\nmonitoring deploy: first run {first:.2f} s, no-op run {second:.2f} s")


def test_push_with_fifty_domains_goes_beyond_one_ssh_argument(world, mon_dir):
    """50 domains make files larger than Linux's 128 KiB per-argument limit (MAX_ARG_STRLEN):
    the transaction uploads them first instead of carrying them inside the command."""
    domains = [{"name": world["zone"], "primary_mx": [{"host": world["primary_mx"]["host"],
                                                        "priority": world["primary_mx"]["priority"]}]}]
    domains += [{"name": f"bench-z{index:02d}.test", "primary_mx": [{"host": f"mail.bench-z{index:02d}.test",
                                                                      "priority": 10}]} for index in range(2, 51)]
    result = deploy(*data(mon_dir), "--data", f"domains={json.dumps(domains)}")
    assert result.returncode == 0, output(result)
    files = mon_dir / "files"
    blackbox = (files / BLACKBOX_FILE).read_text()
    assert len(blackbox) + len((files / RULES_FILE).read_text()) > 128 * 1024
    assert "backupmx_mx_bench_z50_test__mail2_rollernet_us:" in blackbox
    assert not list(files.glob("*.backupmx-*"))
    # The uploads (named as backupmx.postfix.apply names them) are gone from the host's /tmp.
    for name in FILES:
        content = (files / name).read_bytes()
        key = f"backupmx-staged {files / name} {hashlib.sha256(content).hexdigest()}"
        assert not Path(f"/tmp/pyinfra-{hashlib.sha1(key.encode()).hexdigest()}").exists()
    again = deploy(*data(mon_dir), "--data", f"domains={json.dumps(domains)}")
    assert again.returncode == 0, output(again)
    assert re.search(r"Grand total\s+3\s+-\s+-\s+3", output(again)), output(again)


def test_a_failed_validation_on_the_host_restores_the_old_files(world, mon_dir):
    files = mon_dir / "files"
    files.mkdir(parents=True)
    old = {name: f"# an operator's old {name}\n" for name in FILES}
    for name, text in old.items():
        (files / name).write_text(text)
    before = {name: (files / name).stat().st_mtime_ns for name in FILES}
    # A validator that fails, standing in for a blackbox_exporter that rejects the file.
    result = deploy(*data(mon_dir, blackbox_bin="/bin/false"))
    assert result.returncode != 0
    assert "/bin/false --config.check failed" in output(result)
    assert "previous files restored byte for byte" in output(result)
    for name, text in old.items():
        assert (files / name).read_text() == text
        assert (files / name).stat().st_mtime_ns == before[name]
    assert not list(files.glob("*.backupmx-*"))


def test_bad_monitoring_data_stops_before_anything_is_contacted(world, mon_dir):
    result = deploy(*data(mon_dir, dns_targets=["not a target"]), dry=True)
    assert result.returncode != 0
    assert "inventory data monitoring.dns_targets[0]: 'not a target' is not host:port" in output(result)
    assert "Traceback" not in output(result)


def test_docs_cli_check_tells_whether_the_pages_are_current(tmp_path):
    runbook, architecture = tmp_path / "runbook.md", tmp_path / "architecture.md"
    args = ["inventory/sandbox.py", "--runbook", str(runbook), "--architecture", str(architecture)]
    run = [sys.executable, "-m", "backupmx.monitoring.docs"]
    stale = subprocess.run(run + args + ["--check"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "NOT current" in stale.stdout
    written = subprocess.run(run + args, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert written.returncode == 0, written.stderr
    current = subprocess.run(run + args + ["--check"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert current.returncode == 0 and current.stdout.count(": current") == 2
