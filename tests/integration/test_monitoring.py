"""Monitoring (seed change 4): rendering, validation with the real tools, a real
blackbox_exporter probing the sandbox DNS, promtool rule tests, and the push to the
monitoring host through the pyinfra CLI.

The blackbox_exporter started here listens on 127.0.0.1 only and asks only the
sandbox DNS; it is stopped by pid when the module's tests end.
"""

from __future__ import annotations

import hashlib
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.core.settings import load_settings
from backupmx.dns import check as dnscheck
from backupmx.monitoring import rules as mon
from providerkit import PROJECT_ROOT, output, pyinfra


from operations.monitoring import validate_locally

BLACKBOX = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
PROMTOOL = shutil.which("promtool")
RULE_TESTS = PROJECT_ROOT / "tests" / "monitoring" / "backupmx-alerts.test.yml"
SHIPPED_RULES = PROJECT_ROOT / "tests" / "monitoring" / mon.RULES_FILE

needs_blackbox = pytest.mark.skipif(BLACKBOX is None, reason="prometheus-blackbox-exporter is not installed")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")

# The seed's values: the shipped rule file next to the promtool tests is rendered from these.
SEED_DATA = {
    "domains": [{"name": "viktorbarzin.me", "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
    "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us", "mail2.rollernet.us"], "priority": 20},
    "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24"],
    "vault": {"addr": "https://vault.example", "secret_path": "secret/viktor"},
}
SEED_MONITORING = {"dir": "/srv/backupmx/monitoring", "dns_targets": ["1.1.1.1:53"]}


def seed_settings():
    return load_settings(SEED_DATA)


def sandbox_settings(world):
    return load_settings(runpy.run_path(str(PROJECT_ROOT / "inventory" / "sandbox.py"))["_settings"])


# ------------------------------------------------------------------ rendering


def test_one_dns_module_per_wanted_record_each_with_its_own_record():
    settings = seed_settings()
    monitoring = mon.load_monitoring(SEED_MONITORING, settings)
    config = mon.loads(mon.render_blackbox(settings, monitoring))
    dns = {name: module for name, module in config["modules"].items() if module["prober"] == "dns"}
    assert sorted(dns) == sorted([
        "backupmx_mx_viktorbarzin_me__mail_viktorbarzin_me",
        "backupmx_mx_viktorbarzin_me__mail_rollernet_us",
        "backupmx_mx_viktorbarzin_me__mail2_rollernet_us",
    ])
    rr = "viktorbarzin.me.\t300\tIN\tMX\t{} {}."
    for name, module in dns.items():
        assert module["dns"]["query_name"] == "viktorbarzin.me" and module["dns"]["query_type"] == "MX"
        [present] = module["dns"]["validate_answer_rrs"]["fail_if_none_matches_regexp"]
        [allowed] = module["dns"]["validate_answer_rrs"]["fail_if_not_matches_regexp"]
        host = "mail.viktorbarzin.me" if name.endswith("viktorbarzin_me") else (
            "mail2.rollernet.us" if "mail2" in name else "mail.rollernet.us")
        priority = 1 if host == "mail.viktorbarzin.me" else 20
        # Its own record (any TTL, any case), nothing else; the set regexp takes all three.
        assert re.search(present, rr.format(priority, host))
        assert re.search(present, rr.format(priority, host).upper())
        assert not re.search(present, rr.format(priority + 1, host))
        assert not re.search(present, rr.format(priority, "x" + host))
        assert not re.search(present, rr.format(priority, host + ".evil.test"))
        for p, h in ((1, "mail.viktorbarzin.me"), (20, "mail.rollernet.us"), (20, "mail2.rollernet.us")):
            assert re.search(allowed, rr.format(p, h))
        assert not re.search(allowed, rr.format(30, "mx.other.example"))
        assert not re.search(allowed, rr.format(10, "mail.rollernet.us"))
    smtp = config["modules"][mon.SMTP_MODULE]
    assert smtp["prober"] == "tcp" and smtp["tcp"]["query_response"][0]["expect"] == "^220[ -]"


def test_scrape_jobs_probe_every_record_on_every_dns_server_and_each_backup_host():
    settings = seed_settings()
    monitoring = mon.load_monitoring({**SEED_MONITORING, "dns_targets": ["1.1.1.1:53", "8.8.8.8:53"],
                                      "blackbox_address": "blackbox.monitoring.svc:9115"}, settings)
    scrape = mon.loads(mon.render_scrape(settings, monitoring))
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    mx = jobs[mon.MX_JOB]
    targets = [(entry["targets"][0], entry["labels"]["module"], entry["labels"]["mx_host"])
               for entry in mx["static_configs"]]
    assert len(targets) == 6 and {t[0] for t in targets} == {"1.1.1.1:53", "8.8.8.8:53"}
    assert {"replacement": "blackbox.monitoring.svc:9115", "target_label": "__address__"} in mx["relabel_configs"]
    smtp = jobs[mon.SMTP_JOB]
    assert smtp["params"] == {"module": [mon.SMTP_MODULE]}
    assert [entry["targets"] for entry in smtp["static_configs"]] == [["mail.rollernet.us:25"], ["mail2.rollernet.us:25"]]
    assert scrape["rule_files"] == [mon.RULES_FILE]


def test_sandbox_smtp_probe_targets_are_the_relays_loopback_endpoints(world):
    settings = sandbox_settings(world)
    assert mon.smtp_targets(settings) == [(relay["host"], relay["smtp"]) for relay in world["relays"]]


@pytest.mark.parametrize("data, field", [
    ({}, "monitoring.dir"),
    ({"dir": "relative/dir"}, "monitoring.dir"),
    ({"dir": "/srv/m", "dns_targets": ["1.1.1.1"]}, "monitoring.dns_targets[0]"),
    ({"dir": "/srv/m", "dns_targets": "1.1.1.1:53"}, "monitoring.dns_targets"),
    ({"dir": "/srv/m", "blackbox_check": "yes"}, "monitoring.blackbox_check"),
    ({"dir": "/srv/m", "dns_targets": ["1.1.1.1:53"], "scrape_interval": "1 minute"}, "monitoring.scrape_interval"),
    ({"dir": "/srv/m", "dns_targets": ["1.1.1.1:53"], "reload": "systemctl reload prometheus"}, "monitoring.reload"),
    ({"dir": "/srv/m", "dirr": "/x"}, "monitoring.dirr"),
])
def test_bad_monitoring_data_names_the_field(data, field):
    with pytest.raises(ConfigError) as caught:
        mon.load_monitoring(data, seed_settings())
    assert caught.value.field == field


def test_dns_targets_default_to_the_inventory_dns_servers_or_must_be_given():
    with pytest.raises(ConfigError, match="monitoring.dns_targets"):
        mon.load_monitoring({"dir": "/srv/m"}, seed_settings())
    settings = load_settings({**SEED_DATA, "dns_servers": ["192.0.2.53:53"]})
    assert mon.load_monitoring({"dir": "/srv/m"}, settings).dns_targets == ("192.0.2.53:53",)


# ------------------------------------------------------------ validation and shape


@needs_blackbox
@needs_promtool
def test_rendered_files_pass_blackbox_config_check_and_promtool(world):
    settings = sandbox_settings(world)
    files = mon.render_all(settings, mon.load_monitoring({"dir": "/srv/m"}, settings))
    passed, problems = validate_locally(files)
    assert problems == []
    assert len(passed) == 3


@needs_blackbox
def test_config_check_lets_an_unknown_prober_by_and_the_shape_check_does_not(tmp_path):
    text = "modules:\n  typo:\n    prober: dsn\n    dns:\n      query_name: viktorbarzin.me\n      query_type: MX\n"
    path = tmp_path / "blackbox.yml"
    path.write_text(text)
    check = subprocess.run([BLACKBOX, f"--config.file={path}", "--config.check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0  # blackbox_exporter 0.23 accepts it
    assert any("prober 'dsn' is not one of" in problem for problem in mon.check_blackbox_shape(text))


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m.__setitem__("prober", "tcp"), "has a `dns` section but its prober is tcp"),
    (lambda m: m["dns"].__setitem__("query_type", "A"), "the drift guard asks for MX"),
    (lambda m: m["dns"]["validate_answer_rrs"]["fail_if_none_matches_regexp"].append("x"), "several would pass"),
    (lambda m: m["dns"]["validate_answer_rrs"]["fail_if_not_matches_regexp"].__setitem__(0, "(?=x)"),
     "look-around"),
    (lambda m: m["dns"]["validate_answer_rrs"]["fail_if_not_matches_regexp"].__setitem__(0, "(unclosed"),
     "does not compile"),
])
def test_shape_check_refuses_what_would_not_guard(edit, problem):
    import yaml

    settings = seed_settings()
    config = mon.loads(mon.render_blackbox(settings, mon.load_monitoring(SEED_MONITORING, settings)))
    name = mon.module_name(mon.wanted_mx(settings.domains[0], settings)[1])
    edit(config["modules"][name])
    problems = mon.check_blackbox_shape(yaml.safe_dump(config))
    assert any(problem in found for found in problems), problems


def test_shape_check_wants_every_expected_module():
    text = "modules:\n  a:\n    prober: icmp\n"
    assert mon.check_blackbox_shape(text, expected_modules=["a", "b"]) == ["module b is missing"]
    assert mon.check_blackbox_shape("modules: []\n") == ["no `modules:` mapping"]


# ----------------------------------------------------------------------- promtool


def test_shipped_rule_file_is_rendered_from_the_seed_values():
    """The rule file the promtool tests run against is what the product renders today.

    Re-render it with: BACKUPMX_REGENERATE=1 .venv/bin/pytest tests/test_monitoring.py -k shipped
    """
    settings = seed_settings()
    rendered = mon.render_rules(settings, mon.load_monitoring(SEED_MONITORING, settings))
    if os.environ.get("BACKUPMX_REGENERATE"):
        SHIPPED_RULES.write_text(rendered)
    assert SHIPPED_RULES.read_text() == rendered


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
        (tmp_path / mon.RULES_FILE).write_text(SHIPPED_RULES.read_text().replace(old, new))
        result = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / RULE_TESTS.name)],
                                capture_output=True, text=True, check=False, timeout=60)
        assert result.returncode != 0, f"{old} -> {new} went unnoticed"


@needs_promtool
def test_sandbox_rules_are_the_seed_rules(world):
    """The sandbox's zone is the seed's: the rules the promtool tests cover are the sandbox's."""
    settings = sandbox_settings(world)
    assert mon.render_rules(settings, mon.load_monitoring({"dir": "/srv/m"}, settings)) == SHIPPED_RULES.read_text()


# ------------------------------------------------------- a real blackbox_exporter


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    settings = sandbox_settings(world)
    text = mon.render_blackbox(settings, mon.load_monitoring({"dir": "/srv/m"}, settings))
    regexps = "".join(f"          - {mon._yaml_string(mon.rr_regexp(record))}\n"
                      for record in mon.wanted_mx(settings.domains[0], settings))
    text += NAIVE_MODULE.format(domain=world["zone"], regexps=regexps)
    config = tmp_path_factory.mktemp("blackbox") / "blackbox.yml"
    config.write_text(text)
    port = _free_port()
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
    settings = sandbox_settings(world)
    return {record.host: mon.module_name(record) for record in mon.wanted_mx(settings.domains[0], settings)}


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
    metrics, _ = probe(blackbox, mx_modules(world)["mail.viktorbarzin.me"], f"127.0.0.1:{_free_port()}")
    assert metrics["probe_success"] == 0


def test_probe_latency(blackbox, world, cf):
    """A probe of the sandbox DNS through blackbox_exporter, end to end, well under its 5 s timeout."""
    Zone(cf, world).make({PRIMARY, BACKUP1, BACKUP2})
    module = mx_modules(world)["mail.rollernet.us"]
    timings = [probe(blackbox, module, world["dns"]) for _ in range(20)]
    walls = sorted(elapsed for _, elapsed in timings)
    durations = sorted(metrics["probe_duration_seconds"] for metrics, _ in timings)
    print(f"\nblackbox MX probe: wall median {walls[10] * 1000:.1f} ms, max {walls[-1] * 1000:.1f} ms; "
          f"probe_duration_seconds median {durations[10] * 1000:.1f} ms")
    assert all(metrics["probe_success"] == 1 for metrics, _ in timings)
    assert walls[10] < 0.5


def test_smtp_probe_of_the_backup_hosts(blackbox, world):
    for relay in world["relays"]:
        metrics, _ = probe(blackbox, mon.SMTP_MODULE, relay["smtp"])
        assert metrics["probe_success"] == 1, relay["host"]
    metrics, _ = probe(blackbox, mon.SMTP_MODULE, f"127.0.0.1:{_free_port()}")
    assert metrics["probe_success"] == 0


# ------------------------------------------------ the push to the monitoring host


def deploy(*args: str, dry: bool = False) -> subprocess.CompletedProcess:
    return pyinfra("deploys/monitoring.py", "--limit", "sandbox-monitoring", *args, dry=dry)


@pytest.fixture
def mon_dir(world):
    directory = Path(world["root"]) / "monitoring-test"
    shutil.rmtree(directory, ignore_errors=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def data(directory: Path, **extra) -> list[str]:
    import json

    docs = directory / "docs"
    value = {"dir": str(directory / "files"), "blackbox_check": True, "runbook": str(docs / "runbook.md"),
             "architecture": str(docs / "architecture.md"), **extra}
    return ["--data", f"monitoring={json.dumps(value)}"]


def test_dry_run_shows_the_files_and_changes_nothing(world, mon_dir):
    result = deploy(*data(mon_dir), dry=True)
    assert result.returncode == 0, output(result)
    assert f"+++ {mon_dir}/files/{mon.BLACKBOX_FILE}" in output(result)
    assert "+  backupmx_mx_viktorbarzin_me__mail2_rollernet_us:" in output(result)
    assert "validated with prometheus-blackbox-exporter --config.check, promtool check rules" in output(result)
    assert not mon_dir.exists()


def test_push_validates_and_a_second_run_changes_nothing(world, mon_dir):
    started = time.monotonic()
    result = deploy(*data(mon_dir))
    first = time.monotonic() - started
    assert result.returncode == 0, output(result)
    settings = sandbox_settings(world)
    rendered = mon.render_all(settings, mon.load_monitoring({"dir": str(mon_dir / "files")}, settings))
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
    import json

    domains = [{"name": world["zone"], "primary_mx": [{"host": world["primary_mx"]["host"],
                                                        "priority": world["primary_mx"]["priority"]}]}]
    domains += [{"name": f"bench-z{index:02d}.test", "primary_mx": [{"host": f"mail.bench-z{index:02d}.test",
                                                                      "priority": 10}]} for index in range(2, 51)]
    result = deploy(*data(mon_dir), "--data", f"domains={json.dumps(domains)}")
    assert result.returncode == 0, output(result)
    files = mon_dir / "files"
    blackbox = (files / mon.BLACKBOX_FILE).read_text()
    assert len(blackbox) + len((files / mon.RULES_FILE).read_text()) > 128 * 1024
    assert "backupmx_mx_bench_z50_test__mail2_rollernet_us:" in blackbox
    assert not list(files.glob("*.backupmx-*"))
    # The uploads (named as operations.transaction names them) are gone from the host's /tmp.
    for name in mon.FILES:
        content = (files / name).read_bytes()
        key = f"backupmx-staged {files / name} {hashlib.sha256(content).hexdigest()}"
        assert not Path(f"/tmp/pyinfra-{hashlib.sha1(key.encode()).hexdigest()}").exists()
    again = deploy(*data(mon_dir), "--data", f"domains={json.dumps(domains)}")
    assert again.returncode == 0, output(again)
    assert re.search(r"Grand total\s+3\s+-\s+-\s+3", output(again)), output(again)

def test_a_failed_validation_on_the_host_restores_the_old_files(world, mon_dir):
    files = mon_dir / "files"
    files.mkdir(parents=True)
    old = {name: f"# an operator's old {name}\n" for name in mon.FILES}
    for name, text in old.items():
        (files / name).write_text(text)
    before = {name: (files / name).stat().st_mtime_ns for name in mon.FILES}
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


def test_rendered_error_for_a_broken_template_names_the_file(monkeypatch):
    settings = seed_settings()
    monkeypatch.setattr(mon, "render_template", lambda *a, **k: "modules:\n  x:\n    prober: nope\n")
    with pytest.raises(BackupMXError, match=f"rendered {mon.BLACKBOX_FILE} is not a valid blackbox"):
        mon.render_blackbox(settings, mon.load_monitoring(SEED_MONITORING, settings))
