"""Monitoring (seed change 4) rendered from the seed's values: the blackbox modules, the
scrape jobs, the shape check, the shipped rule file. The same files against the real
blackbox_exporter and promtool, and probes of the sandbox DNS: tests/integration/test_monitoring.py;
the push to the monitoring host: tests/cli/test_monitoring_push.py."""

from __future__ import annotations

import os
import re

import pytest
import yaml
from support.seed import seed_settings

from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.monitoring import rules as monitoring_rules
from backupmx.monitoring.checks import check_blackbox_shape, loads
from backupmx.monitoring.rules import (
    MX_JOB,
    SMTP_JOB,
    SMTP_MODULE,
    module_name,
    render_blackbox,
    render_rules,
    render_scrape,
    wanted_mx,
)
from backupmx.monitoring.settings import BLACKBOX_FILE, RULES_FILE, load_monitoring
from support.providers import PROJECT_ROOT

SHIPPED_RULES = PROJECT_ROOT / "tests" / "monitoring" / RULES_FILE
# The seed's values: the shipped rule file next to the promtool tests is rendered from these.
SEED_MONITORING = {"dir": "/srv/backupmx/monitoring", "dns_targets": ["1.1.1.1:53"],
                   "runbook_url": "https://git.example.org/infra/backupmx/docs/runbook.md"}


def test_one_dns_module_per_wanted_record_each_with_its_own_record():
    settings = seed_settings()
    monitoring = load_monitoring(SEED_MONITORING, settings)
    config = loads(render_blackbox(settings, monitoring))
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
    smtp = config["modules"][SMTP_MODULE]
    assert smtp["prober"] == "tcp" and smtp["tcp"]["query_response"][0]["expect"] == "^220[ -]"


def test_scrape_jobs_probe_every_record_on_every_dns_server_and_each_backup_host():
    settings = seed_settings()
    monitoring = load_monitoring({**SEED_MONITORING, "dns_targets": ["1.1.1.1:53", "8.8.8.8:53"],
                                      "blackbox_address": "blackbox.monitoring.svc:9115"}, settings)
    scrape = loads(render_scrape(settings, monitoring))
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    mx = jobs[MX_JOB]
    targets = [(entry["targets"][0], entry["labels"]["module"], entry["labels"]["mx_host"])
               for entry in mx["static_configs"]]
    assert len(targets) == 6 and {t[0] for t in targets} == {"1.1.1.1:53", "8.8.8.8:53"}
    assert {"replacement": "blackbox.monitoring.svc:9115", "target_label": "__address__"} in mx["relabel_configs"]
    smtp = jobs[SMTP_JOB]
    assert smtp["params"] == {"module": [SMTP_MODULE]}
    assert [entry["targets"] for entry in smtp["static_configs"]] == [["mail.rollernet.us:25"], ["mail2.rollernet.us:25"]]
    assert scrape["rule_files"] == [RULES_FILE]


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
        load_monitoring(data, seed_settings())
    assert caught.value.field == field


def test_dns_targets_default_to_the_inventory_dns_servers_or_must_be_given():
    with pytest.raises(ConfigError, match="monitoring.dns_targets"):
        load_monitoring({"dir": "/srv/m"}, seed_settings())
    settings = seed_settings(dns_servers=["192.0.2.53:53"])
    assert load_monitoring({"dir": "/srv/m"}, settings).dns_targets == ("192.0.2.53:53",)


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
    settings = seed_settings()
    config = loads(render_blackbox(settings, load_monitoring(SEED_MONITORING, settings)))
    name = module_name(wanted_mx(settings.domains[0], settings)[1])
    edit(config["modules"][name])
    problems = check_blackbox_shape(yaml.safe_dump(config))
    assert any(problem in found for found in problems), problems


def test_shape_check_wants_every_expected_module():
    text = "modules:\n  a:\n    prober: icmp\n"
    assert check_blackbox_shape(text, expected_modules=["a", "b"]) == ["module b is missing"]
    assert check_blackbox_shape("modules: []\n") == ["no `modules:` mapping"]


def test_shipped_rule_file_is_rendered_from_the_seed_values():
    """The rule file the promtool tests run against is what the product renders today.

    Re-render it with: BACKUPMX_REGENERATE=1 .venv/bin/pytest tests/unit/test_monitoring_render.py -k shipped
    """
    settings = seed_settings()
    rendered = render_rules(settings, load_monitoring(SEED_MONITORING, settings))
    if os.environ.get("BACKUPMX_REGENERATE"):
        SHIPPED_RULES.write_text(rendered)
    assert SHIPPED_RULES.read_text() == rendered


def test_rendered_error_for_a_broken_template_names_the_file(monkeypatch):
    settings = seed_settings()
    monkeypatch.setattr(monitoring_rules, "render", lambda *a, **k: "modules:\n  x:\n    prober: nope\n")
    with pytest.raises(BackupMXError, match=f"rendered {BLACKBOX_FILE} is not a valid blackbox"):
        render_blackbox(settings, load_monitoring(SEED_MONITORING, settings))


def _alert_links(rules_text: str) -> dict[str, str]:
    rules = yaml.safe_load(rules_text)["groups"][0]["rules"]
    return {rule["alert"]: rule["annotations"]["runbook_url"] for rule in rules if "alert" in rule}


def test_each_alert_links_to_its_own_section_of_the_runbook():
    settings = seed_settings()
    links = _alert_links(render_rules(settings, load_monitoring(SEED_MONITORING, settings)))
    base = SEED_MONITORING["runbook_url"]
    assert links == {"BackupMXSetDrift": f"{base}#mx-set-drift", "BackupMXProbeAbsent": f"{base}#mx-set-drift",
                     "BackupMXCanaryFailing": f"{base}#the-weekly-canary",
                     "BackupMXCanaryNotRun": f"{base}#the-weekly-canary"}


def test_without_runbook_url_alerts_link_to_the_rendered_runbook_by_an_absolute_address(tmp_path):
    settings = seed_settings()
    page = tmp_path / "runbook.md"
    monitoring = load_monitoring({**SEED_MONITORING, "runbook_url": None, "runbook": str(page)}, settings)
    assert monitoring.runbook_url == page.as_uri()
    default = load_monitoring({k: v for k, v in SEED_MONITORING.items() if k != "runbook_url"}, settings)
    assert default.runbook_url == (PROJECT_ROOT / "docs" / "runbook.md").as_uri()
    for url in _alert_links(render_rules(settings, default)).values():
        assert url.startswith("file:///") and "#" in url


@pytest.mark.parametrize("value,words", [
    ("docs/runbook.md", "is not an address an alert can open"),
    ("https://git.example.org/docs/runbook.md#mx-set-drift", "names a section"),
    ("runbook", "is not an address an alert can open"),
])
def test_a_runbook_url_an_alert_cannot_open_is_one_line(value, words):
    with pytest.raises(ConfigError) as caught:
        load_monitoring({**SEED_MONITORING, "runbook_url": value}, seed_settings())
    message = str(caught.value)
    assert message.startswith("inventory data monitoring.runbook_url: ") and words in message, message
    assert "e.g. https://" in message


def test_the_sections_the_alerts_link_to_are_headings_of_the_runbook():
    from backupmx.monitoring.docs import load_inventory, render_runbook
    from backupmx.monitoring.settings import RUNBOOK_SECTIONS

    text = render_runbook(load_inventory(str(PROJECT_ROOT / "inventory" / "production.py")))
    # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in text.splitlines() if line.startswith("## ")}
    assert set(RUNBOOK_SECTIONS.values()) <= anchors, anchors
