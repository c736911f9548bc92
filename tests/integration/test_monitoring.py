"""Monitoring (seed change 4) against the real tools: the rendered files through
blackbox_exporter's config check and promtool, promtool's rule tests, and a real
blackbox_exporter probing the sandbox DNS. Rendering alone: tests/unit/test_monitoring_render.py;
the push to the monitoring host: tests/cli/test_monitoring_push.py.

The blackbox_exporter started here listens on 127.0.0.1 only and asks only the
sandbox DNS; it is stopped by pid when the module's tests end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import requests

from backupmx.dns import check as dnscheck
from backupmx.monitoring.checks import check_blackbox_shape
from backupmx.monitoring.rules import (
    SMTP_MODULE,
    module_name,
    render_all,
    render_blackbox,
    render_rules,
    rr_regexp,
    smtp_targets,
    wanted_mx,
)
from backupmx.core.templates import yaml_string
from backupmx.monitoring.settings import RULES_FILE, load_monitoring
from operations.monitoring import validate_locally
from backupmx_sandbox.world import Sandbox
from support.providers import PROJECT_ROOT, dead_port, sandbox_settings

BLACKBOX = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
PROMTOOL = shutil.which("promtool")
RULE_TESTS = PROJECT_ROOT / "tests" / "monitoring" / "backupmx-alerts.test.yml"
SHIPPED_RULES = PROJECT_ROOT / "tests" / "monitoring" / RULES_FILE

needs_blackbox = pytest.mark.skipif(BLACKBOX is None, reason="prometheus-blackbox-exporter is not installed")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


# ------------------------------------------------------------------ the sandbox's values


def test_sandbox_smtp_probe_targets_are_the_relays_loopback_endpoints(world):
    settings = sandbox_settings()
    assert smtp_targets(settings) == [(relay["host"], relay["smtp"]) for relay in world["relays"]]


# ------------------------------------------------------------ validation and shape


@needs_blackbox
@needs_promtool
def test_rendered_files_pass_blackbox_config_check_and_promtool(world, tmp_path):
    settings = sandbox_settings()
    files = render_all(settings, load_monitoring({"dir": "/srv/m"}, settings))
    passed, problems = validate_locally(files, cache_dir=tmp_path)  # an empty cache: the validators run
    assert problems == []
    assert len(passed) == 3


@needs_blackbox
def test_config_check_lets_an_unknown_prober_by_and_the_shape_check_does_not(tmp_path):
    text = "modules:\n  typo:\n    prober: dsn\n    dns:\n      query_name: viktorbarzin.me\n      query_type: MX\n"
    path = tmp_path / "blackbox.yml"
    path.write_text(text)
    check = subprocess.run([BLACKBOX, f"--config.file={path}", "--config.check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0  # blackbox_exporter 0.23 accepts it
    assert any("prober 'dsn' is not one of" in problem for problem in check_blackbox_shape(text))


# ----------------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    result = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_rule_tests_catch_a_broken_rule(tmp_path):
    """The unit tests are not vacuous: a rule that fires too early, or counts wrong, fails them."""
    for old, new in (("for: 15m", "for: 5m"), ("!= 3)", "!= 2)"), ("== 0)", "== 2)")):
        shutil.copy(RULE_TESTS, tmp_path)
        (tmp_path / RULES_FILE).write_text(SHIPPED_RULES.read_text().replace(old, new))
        result = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / RULE_TESTS.name)],
                                capture_output=True, text=True, check=False, timeout=60)
        assert result.returncode != 0, f"{old} -> {new} went unnoticed"


@needs_promtool
def test_sandbox_rules_are_the_seed_rules(world):
    """The sandbox's zone is the seed's: the rules the promtool tests cover are the sandbox's."""
    settings = sandbox_settings()
    shipped = {"dir": "/srv/m", "runbook_url": "https://git.example.org/infra/backupmx/docs/runbook.md"}
    assert render_rules(settings, load_monitoring(shipped, settings)) == SHIPPED_RULES.read_text()


# ------------------------------------------------------- a real blackbox_exporter


# One module with one regexp per host: the obvious guard, which cannot see a missing host.
NAIVE_MODULE = """
  naive_one_regexp_per_host:
    prober: dns
    timeout: 5s
    dns:
      query_name: "{domain}"
      query_type: MX
      preferred_ip_protocol: ip4
      validate_answer_rrs:
        fail_if_none_matches_regexp:
{regexps}
"""


@pytest.fixture(scope="module")
def blackbox(world, tmp_path_factory):
    if BLACKBOX is None:
        pytest.skip("prometheus-blackbox-exporter is not installed")
    settings = sandbox_settings()
    text = render_blackbox(settings, load_monitoring({"dir": "/srv/m"}, settings))
    regexps = "".join(f"          - {yaml_string(rr_regexp(record))}\n"
                      for record in wanted_mx(settings.domains[0], settings))
    text += NAIVE_MODULE.format(domain=world["zone"], regexps=regexps)
    config = tmp_path_factory.mktemp("blackbox") / "blackbox.yml"
    config.write_text(text)
    port = Sandbox().port("tests.blackbox")  # this world's own: nothing else listens there
    log = open(config.with_suffix(".log"), "w")  # noqa: SIM115 (open for the process's lifetime)
    process = subprocess.Popen([BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if requests.get(f"{base}/-/healthy", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"blackbox_exporter did not start: {config.with_suffix('.log').read_text()}")
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def probe(base: str, module: str, target: str) -> tuple[dict[str, float], float]:
    started = time.monotonic()
    response = requests.get(f"{base}/probe", params={"module": module, "target": target}, timeout=15)
    elapsed = time.monotonic() - started
    response.raise_for_status()
    metrics = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            metrics[name] = float(value)
    return metrics, elapsed


PRIMARY = (1, "mail.viktorbarzin.me")
BACKUP1 = (20, "mail.rollernet.us")
BACKUP2 = (20, "mail2.rollernet.us")


class Zone:
    """The sandbox zone's apex MX set, set through the official SDK and checked in DNS."""

    def __init__(self, cf, world):
        self.cf, self.world = cf, world
        self.zone_id = next(iter(cf.zones.list(name=world["zone"]))).id

    def records(self):
        return list(self.cf.dns.records.list(zone_id=self.zone_id, type="MX", name={"exact": self.world["zone"]}))

    def make(self, wanted: set[tuple[int, str]]) -> None:
        """Bring the apex MX set to ``wanted`` and wait until the sandbox DNS answers it."""
        for _attempt in range(3):
            have = {(record.priority, record.content): record for record in self.records()}
            for key, record in have.items():
                if key not in wanted:
                    self.cf.dns.records.delete(dns_record_id=record.id, zone_id=self.zone_id)
            for priority, host in wanted - set(have):
                self.cf.dns.records.create(zone_id=self.zone_id, type="MX", name=self.world["zone"],
                                           content=host, priority=priority, ttl=1)
            if set(dnscheck.live_mx(self.world["zone"], [self.world["dns"]])) == wanted:
                return
            time.sleep(0.2)  # another test reset the fake meanwhile: once more
        raise AssertionError(f"could not make the apex MX set {wanted}")

    def answers(self) -> set:
        return set(dnscheck.live_mx(self.world["zone"], [self.world["dns"]]))


def probe_all(base, world, modules) -> dict[str, dict[str, float]]:
    return {module: probe(base, module, world["dns"])[0] for module in modules}


def mx_modules(world):
    settings = sandbox_settings()
    return {record.host: module_name(record) for record in wanted_mx(settings.domains[0], settings)}


def test_probe_passes_with_the_full_mx_set_and_fails_without_a_backup(blackbox, world, cf):
    zone, modules = Zone(cf, world), mx_modules(world)
    zone.make({PRIMARY, BACKUP1, BACKUP2})
    results = probe_all(blackbox, world, modules.values())
    assert zone.answers() == {PRIMARY, BACKUP1, BACKUP2}
    for module, metrics in results.items():
        assert metrics["probe_success"] == 1, module
        assert metrics["probe_dns_answer_rrs"] == 3, module

    zone.make({PRIMARY, BACKUP2})  # mail.rollernet.us deleted through the Cloudflare API
    results = probe_all(blackbox, world, modules.values())
    assert zone.answers() == {PRIMARY, BACKUP2}
    assert results[modules["mail.rollernet.us"]]["probe_success"] == 0
    assert results[modules["mail.viktorbarzin.me"]]["probe_success"] == 1
    assert results[modules["mail2.rollernet.us"]]["probe_success"] == 1
    assert {metrics["probe_dns_answer_rrs"] for metrics in results.values()} == {2}
    # The obvious single module (one regexp per host) still passes: it cannot see a missing host.
    assert probe(blackbox, "naive_one_regexp_per_host", world["dns"])[0]["probe_success"] == 1


def test_probe_fails_without_the_primary(blackbox, world, cf):
    zone, modules = Zone(cf, world), mx_modules(world)
    zone.make({BACKUP1, BACKUP2})  # the primary deleted through the Cloudflare API
    results = probe_all(blackbox, world, modules.values())
    assert zone.answers() == {BACKUP1, BACKUP2}
    assert results[modules["mail.viktorbarzin.me"]]["probe_success"] == 0
    assert results[modules["mail.rollernet.us"]]["probe_success"] == 1
    assert {metrics["probe_dns_answer_rrs"] for metrics in results.values()} == {2}
    assert probe(blackbox, "naive_one_regexp_per_host", world["dns"])[0]["probe_success"] == 1


def test_probe_fails_on_a_foreign_record_or_a_changed_preference(blackbox, world, cf):
    zone, modules = Zone(cf, world), mx_modules(world)
    zone.make({PRIMARY, BACKUP1, BACKUP2, (30, "mx.other.example")})
    results = probe_all(blackbox, world, modules.values())
    assert all(metrics["probe_success"] == 0 for metrics in results.values())
    assert {metrics["probe_dns_answer_rrs"] for metrics in results.values()} == {4}

    zone.make({PRIMARY, (10, "mail.rollernet.us"), BACKUP2})  # a backup at the wrong preference
    results = probe_all(blackbox, world, modules.values())
    assert all(metrics["probe_success"] == 0 for metrics in results.values())


def test_probe_fails_when_the_dns_server_does_not_answer(blackbox, world):
    metrics, _ = probe(blackbox, mx_modules(world)["mail.viktorbarzin.me"], f"127.0.0.1:{dead_port()}")
    assert metrics["probe_success"] == 0


def test_probe_latency(blackbox, world, cf):
    """20 probes of the sandbox DNS through blackbox_exporter, end to end, all succeed (their times are printed)."""
    Zone(cf, world).make({PRIMARY, BACKUP1, BACKUP2})
    module = mx_modules(world)["mail.rollernet.us"]
    timings = [probe(blackbox, module, world["dns"]) for _ in range(20)]
    walls = sorted(elapsed for _, elapsed in timings)
    durations = sorted(metrics["probe_duration_seconds"] for metrics, _ in timings)
    print(f"\nblackbox MX probe: wall median {walls[10] * 1000:.1f} ms, max {walls[-1] * 1000:.1f} ms; "
          f"probe_duration_seconds median {durations[10] * 1000:.1f} ms")
    assert all(metrics["probe_success"] == 1 for metrics, _ in timings)


def test_smtp_probe_of_the_backup_hosts(blackbox, world):
    for relay in world["relays"]:
        metrics, _ = probe(blackbox, SMTP_MODULE, relay["smtp"])
        assert metrics["probe_success"] == 1, relay["host"]
    metrics, _ = probe(blackbox, SMTP_MODULE, f"127.0.0.1:{dead_port()}")
    assert metrics["probe_success"] == 0


@needs_promtool
def test_files_that_passed_pass_again_without_the_validators_until_a_file_or_a_validator_changes(tmp_path):
    """A no-op run renders the same files: their passes are remembered, keyed by the files and the binaries."""
    log = tmp_path / "ran.log"
    promtool = tmp_path / "promtool"
    promtool.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\nexec {shutil.which('promtool')} \"$@\"\n")
    promtool.chmod(0o755)
    settings = sandbox_settings()
    files = render_all(settings, load_monitoring({"dir": "/srv/m"}, settings))
    cache = tmp_path / "cache"

    def runs() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    first = validate_locally(files, promtool_bin=str(promtool), cache_dir=cache)
    assert first[1] == [] and runs() == 2
    assert validate_locally(files, promtool_bin=str(promtool), cache_dir=cache) == first and runs() == 2
    changed = {**files, RULES_FILE: files[RULES_FILE] + "\n"}
    assert validate_locally(changed, promtool_bin=str(promtool), cache_dir=cache)[1] == [] and runs() == 4
    os.utime(promtool, ns=(1, 1))  # another promtool: checked again
    assert validate_locally(files, promtool_bin=str(promtool), cache_dir=cache) == first and runs() == 6
    broken = {**files, RULES_FILE: "groups: [{name: x, rules: [{alert: A, expr: 'up =='}]}]\n"}
    for _ in range(2):  # a failure is never remembered
        assert validate_locally(broken, promtool_bin=str(promtool), cache_dir=cache)[1] != []
    assert runs() == 10
