"""Monitoring of the backup MX (seed change 4), rendered from the model: pure, no I/O.

Three files, pushed to the inventory's ``monitoring`` hosts by ``operations.monitoring``:

- ``blackbox-backupmx.yml`` — blackbox_exporter modules: the MX-set drift guard
  (DNS) and an informational SMTP banner probe (TCP:25) of the backup hosts;
- ``backupmx-alerts.rules.yml`` — the Prometheus alert on MX-set drift (for 15m,
  naming the runbook), an alert when the drift guard is not scraped at all, and a
  recording rule of the backup hosts' weekly SMTP availability (no paging);
- ``prometheus-backupmx.yml`` — the scrape jobs that run those probes, as a
  Prometheus configuration file of its own (``promtool check config`` checks it
  and, through ``rule_files``, the rules).

Why one DNS module per wanted MX record. blackbox_exporter validates each answer RR
on its own: ``fail_if_none_matches_regexp`` passes as soon as *any* RR matches
*any* of its regexps, so one regexp per host cannot see a host that is missing;
``fail_if_not_matches_regexp`` says every RR matches, not that every host is
there; RE2 has no look-ahead to count. So each wanted record gets a module of
its own that fails when that record is absent (``fail_if_none_matches_regexp``
with the one record) or when the answer holds anything that is not a wanted
record (``fail_if_not_matches_regexp`` with all of them). The alert adds the
answer count (``probe_dns_answer_rrs``), which is what catches a duplicate
preference or an extra record the regexps would let by.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.core.paths import TEMPLATES
from backupmx.core.settings import Domain, Settings
from backupmx.core.validate import command, host_port, known_keys

BLACKBOX_FILE = "blackbox-backupmx.yml"
RULES_FILE = "backupmx-alerts.rules.yml"
SCRAPE_FILE = "prometheus-backupmx.yml"
FILES = (BLACKBOX_FILE, RULES_FILE, SCRAPE_FILE)

MX_JOB = "backupmx-mx"
SMTP_JOB = "backupmx-relay-smtp"
SMTP_MODULE = "backupmx_smtp_banner"
DRIFT_ALERT = "BackupMXSetDrift"
ABSENT_ALERT = "BackupMXProbeAbsent"
SMTP_RECORD = "backupmx:relay_smtp_up:avg7d"
RUNBOOK_NAME = "backup-mx"
ALERT_FOR = "15m"

# What blackbox_exporter 0.23 can probe with, and the section each needs. Its
# --config.check accepts any prober name (the name is looked up only when a
# probe runs), so the shape check below refuses unknown ones itself.
PROBERS = {"http": "http", "tcp": "tcp", "dns": "dns", "icmp": "icmp", "grpc": "grpc"}

_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")
_ABS_PATH = re.compile(r"^/[^\s'\"\\$`]*$")
MONITORING_KEYS = ("dir", "blackbox_check", "blackbox_bin", "promtool_check", "promtool_bin", "dns_targets",
                   "blackbox_address", "scrape_interval", "smtp_scrape_interval", "runbook_url", "reload",
                   "runbook", "architecture", "severity")


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Monitoring:
    """The ``monitoring`` inventory data of one monitoring host (docs/monitoring.md)."""

    dir: str
    blackbox_check: bool = True
    blackbox_bin: str = "prometheus-blackbox-exporter"
    promtool_check: bool = True
    promtool_bin: str = "promtool"
    # DNS servers the MX probe asks ("host:port"); default: the inventory's dns_servers.
    dns_targets: tuple[str, ...] = ()
    # Where Prometheus reaches blackbox_exporter (the scrape jobs' __address__).
    blackbox_address: str = "127.0.0.1:9115"
    scrape_interval: str = "60s"
    smtp_scrape_interval: str = "5m"
    runbook_url: str = "docs/runbook.md#mx-set-drift"
    severity: str = "critical"
    # Commands run after the files validate (e.g. a reload of blackbox_exporter).
    reload: tuple[tuple[str, ...], ...] = ()
    # Local paths (on the control machine) the runbook and the architecture page are rendered to.
    runbook: str | None = None
    architecture: str | None = None

    def path(self, name: str) -> str:
        return f"{self.dir.rstrip('/')}/{name}"

    def validations(self) -> list[tuple[str, tuple[str, ...]]]:
        """(what, argv) run on the monitoring host after the files are in place, before any reload."""
        checks = []
        if self.blackbox_check:
            checks.append((f"{self.blackbox_bin} --config.check",
                           (self.blackbox_bin, f"--config.file={self.path(BLACKBOX_FILE)}", "--config.check")))
        if self.promtool_check:
            checks.append(("promtool check rules", (self.promtool_bin, "check", "rules", self.path(RULES_FILE))))
            checks.append(("promtool check config", (self.promtool_bin, "check", "config", self.path(SCRAPE_FILE))))
        return checks


def load_monitoring(data: Any, settings: Settings) -> Monitoring:
    """Validate one host's ``monitoring`` data; bad data stops the run naming the field."""
    if not isinstance(data, Mapping):
        raise ConfigError("monitoring", f"must be a mapping, got {type(data).__name__}",
                          "e.g. {\"dir\": \"/srv/backupmx/monitoring\"} (docs/monitoring.md)")
    known_keys(data, "monitoring", MONITORING_KEYS)
    directory = data.get("dir")
    if not isinstance(directory, str) or not _ABS_PATH.match(directory) or directory.rstrip("/") == "":
        raise ConfigError("monitoring.dir", f"{directory!r} is not an absolute directory path",
                          "e.g. /srv/backupmx/monitoring")
    flags = {}
    for key in ("blackbox_check", "promtool_check"):
        value = data.get(key, True)
        if not isinstance(value, bool):
            raise ConfigError(f"monitoring.{key}", f"{value!r} is not true or false")
        flags[key] = value
    programs = {}
    for key, default in (("blackbox_bin", "prometheus-blackbox-exporter"), ("promtool_bin", "promtool")):
        value = data.get(key, default)
        if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_./-]+$", value):
            raise ConfigError(f"monitoring.{key}", f"{value!r} is not a program name or path")
        programs[key] = value
    targets = data.get("dns_targets")
    if targets is None:
        targets = list(settings.dns_servers)
        if not targets:
            raise ConfigError("monitoring.dns_targets", "missing, and the inventory has no dns_servers",
                              "list the DNS servers the MX probe asks, e.g. [\"1.1.1.1:53\"] or the zone's NS")
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
        raise ConfigError("monitoring.dns_targets", f"{targets!r} is not a list of host:port")
    for index, target in enumerate(targets):
        host_port(target, f"monitoring.dns_targets[{index}]", fix="e.g. 1.1.1.1:53")
    address = data.get("blackbox_address", "127.0.0.1:9115")
    host_port(address, "monitoring.blackbox_address", fix="e.g. 127.0.0.1:9115")
    intervals = {}
    for key, default in (("scrape_interval", "60s"), ("smtp_scrape_interval", "5m")):
        value = data.get(key, default)
        if not isinstance(value, str) or not _DURATION.match(value):
            raise ConfigError(f"monitoring.{key}", f"{value!r} is not a Prometheus duration", "e.g. 60s or 5m")
        intervals[key] = value
    runbook_url = data.get("runbook_url", "docs/runbook.md#mx-set-drift")
    if not isinstance(runbook_url, str) or not runbook_url.strip() or '"' in runbook_url:
        raise ConfigError("monitoring.runbook_url", f"{runbook_url!r} is not a URL or path")
    severity = data.get("severity", "critical")
    if not isinstance(severity, str) or not re.match(r"^[a-z]+$", severity):
        raise ConfigError("monitoring.severity", f"{severity!r} is not a severity label value", "e.g. critical")
    reload = data.get("reload") or []
    if isinstance(reload, (str, bytes)) or not isinstance(reload, (list, tuple)):
        raise ConfigError("monitoring.reload", "must be a list of commands, each a list of arguments")
    commands = [command(argv, f"monitoring.reload[{index}]") for index, argv in enumerate(reload)]
    local = {}
    for key in ("runbook", "architecture"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"monitoring.{key}", f"{value!r} is not a file path")
        local[key] = value
    return Monitoring(dir=directory.rstrip("/"), dns_targets=tuple(targets), blackbox_address=address,
                      runbook_url=runbook_url, severity=severity, reload=tuple(commands), **flags, **programs,
                      **intervals, **local)


# ---------------------------------------------------------------------- model


@dataclass(frozen=True)
class MXRecord:
    domain: str
    priority: int
    host: str
    role: str  # "primary" or "backup"


def wanted_mx(domain: Domain, settings: Settings) -> list[MXRecord]:
    """The apex MX set the drift guard expects: every primary, then every backup."""
    records = [MXRecord(domain.name, mx.priority, mx.host, "primary") for mx in domain.primary_mx]
    records += [MXRecord(domain.name, settings.backup_mx.priority, host, "backup") for host in settings.backup_mx.hosts]
    return records


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def module_name(record: MXRecord) -> str:
    return f"backupmx_mx_{slug(record.domain)}__{slug(record.host)}"


def _name_re(name: str) -> str:
    # Host names hold only [a-z0-9.-]: the dot is the one character to escape,
    # in a form RE2 (blackbox) and Python's re read alike.
    return name.replace(".", r"\.")


def rr_regexp(record: MXRecord) -> str:
    """Matches blackbox's text of exactly this MX record (miekg/dns ``RR.String()``), any TTL."""
    return rf"(?i)^{_name_re(record.domain)}\.\s+\d+\s+IN\s+MX\s+{record.priority}\s+{_name_re(record.host)}\.$"


def set_regexp(records: Sequence[MXRecord]) -> str:
    """Matches any one of the wanted records of a domain, nothing else."""
    domain = records[0].domain
    choices = "|".join(rf"{record.priority}\s+{_name_re(record.host)}" for record in records)
    return rf"(?i)^{_name_re(domain)}\.\s+\d+\s+IN\s+MX\s+({choices})\.$"


@dataclass(frozen=True)
class DNSModule:
    name: str
    record: MXRecord
    present: str  # the regexp of its own record
    allowed: str  # the regexp of every wanted record of the domain
    expected: int  # how many records the answer must hold


def dns_modules(settings: Settings) -> list[DNSModule]:
    modules = []
    for domain in settings.domains:
        records = wanted_mx(domain, settings)
        allowed = set_regexp(records)
        modules += [DNSModule(module_name(record), record, rr_regexp(record), allowed, len(records))
                    for record in records]
    return modules


def smtp_targets(settings: Settings) -> list[tuple[str, str]]:
    """(backup host, host:port the TCP probe connects to): its override (sandbox) or host:smtp_port."""
    targets = []
    for host in settings.backup_mx.hosts:
        address, port = settings.backup_mx.smtp_endpoint(host)
        address = f"[{address}]" if ":" in address else address
        targets.append((host, f"{address}:{port}"))
    return targets


# ------------------------------------------------------------------- rendering


def yaml_string(value: Any) -> str:
    # A JSON string is a YAML double-quoted scalar; no HTML escaping (Jinja's tojson does that).
    return json.dumps(str(value), ensure_ascii=False)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["q"] = yaml_string
    return env


def render_template(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values)


def _context(settings: Settings, monitoring: Monitoring) -> dict[str, Any]:
    modules = dns_modules(settings)
    domains = []
    for domain in settings.domains:
        records = wanted_mx(domain, settings)
        domains.append({
            "name": domain.name,
            "records": records,
            "expected": len(records),
            "modules": [module for module in modules if module.record.domain == domain.name],
            "set_text": ", ".join(f"{record.priority} {record.host}" for record in records),
        })
    return {
        "settings": settings,
        "monitoring": monitoring,
        "modules": modules,
        "domains": domains,
        "smtp_targets": smtp_targets(settings),
        "mx_job": MX_JOB,
        "smtp_job": SMTP_JOB,
        "smtp_module": SMTP_MODULE,
        "drift_alert": DRIFT_ALERT,
        "absent_alert": ABSENT_ALERT,
        "smtp_record": SMTP_RECORD,
        "runbook_name": RUNBOOK_NAME,
        "alert_for": ALERT_FOR,
        "rules_file": RULES_FILE,
        "blackbox_file": BLACKBOX_FILE,
    }


def render_blackbox(settings: Settings, monitoring: Monitoring) -> str:
    text = render_template("blackbox.yml.j2", **_context(settings, monitoring))
    problems = check_blackbox_shape(text, expected_modules=[m.name for m in dns_modules(settings)] + [SMTP_MODULE])
    if problems:  # a template bug: never push what would not work
        raise BackupMXError(f"rendered {BLACKBOX_FILE} is not a valid blackbox configuration: {problems[0]}")
    return text


def render_rules(settings: Settings, monitoring: Monitoring) -> str:
    text = render_template("backupmx-alerts.rules.yml.j2", **_context(settings, monitoring))
    problems = check_rules_shape(text)
    if problems:
        raise BackupMXError(f"rendered {RULES_FILE} is not a valid rule file: {problems[0]}")
    return text


def render_scrape(settings: Settings, monitoring: Monitoring) -> str:
    return render_template("prometheus-backupmx.yml.j2", **_context(settings, monitoring))


def render_all(settings: Settings, monitoring: Monitoring) -> dict[str, str]:
    """File name -> content of every file pushed to the monitoring host."""
    return {
        BLACKBOX_FILE: render_blackbox(settings, monitoring),
        RULES_FILE: render_rules(settings, monitoring),
        SCRAPE_FILE: render_scrape(settings, monitoring),
    }


# ----------------------------------------------------------------- shape checks


def _compiles(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return f"{pattern!r} is not a string"
    try:
        re.compile(pattern)
    except re.error as error:
        return f"{pattern!r} does not compile ({error})"
    if "(?=" in pattern or "(?!" in pattern or "(?<" in pattern or re.search(r"\\[1-9]", pattern):
        return f"{pattern!r} uses look-around or a back-reference, which RE2 (blackbox) lacks"
    return None


def check_blackbox_shape(text: str, expected_modules: Iterable[str] = ()) -> list[str]:
    """What is wrong with a blackbox configuration that ``--config.check`` would let by.

    ``--config.check`` refuses unknown keys, but accepts any prober name and any
    module without the section its prober reads. This refuses those, a DNS module
    that does not ask for MX by name, regexps that do not compile or need
    features RE2 lacks, and modules missing from ``expected_modules``.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return [f"not YAML: {error}"]
    if not isinstance(data, dict) or not isinstance(data.get("modules"), dict) or not data["modules"]:
        return ["no `modules:` mapping"]
    problems = []
    modules = data["modules"]
    for name in expected_modules:
        if name not in modules:
            problems.append(f"module {name} is missing")
    for name, module in modules.items():
        where = f"module {name}"
        if not isinstance(module, dict):
            problems.append(f"{where} is not a mapping")
            continue
        prober = module.get("prober")
        if prober not in PROBERS:
            problems.append(f"{where}: prober {prober!r} is not one of {', '.join(PROBERS)} "
                            "(blackbox_exporter --config.check does not catch this)")
            continue
        timeout = module.get("timeout")
        if timeout is not None and not _DURATION.match(str(timeout)):
            problems.append(f"{where}: timeout {timeout!r} is not a duration")
        for other in set(PROBERS.values()) - {PROBERS[prober]}:
            if other in module:
                problems.append(f"{where}: has a `{other}` section but its prober is {prober}")
        if prober == "dns":
            dns = module.get("dns")
            if not isinstance(dns, dict):
                problems.append(f"{where}: dns prober without a `dns:` section")
                continue
            if not dns.get("query_name"):
                problems.append(f"{where}: no query_name")
            if dns.get("query_type") != "MX":
                problems.append(f"{where}: query_type {dns.get('query_type')!r}, the drift guard asks for MX")
            for section in ("validate_answer_rrs", "validate_authority_rrs", "validate_additional_rrs"):
                for key, patterns in (dns.get(section) or {}).items():
                    for pattern in patterns or []:
                        problem = _compiles(pattern)
                        if problem:
                            problems.append(f"{where}: {section}.{key}: {problem}")
            answer = dns.get("validate_answer_rrs") or {}
            if not answer.get("fail_if_none_matches_regexp") or len(answer["fail_if_none_matches_regexp"]) != 1:
                # With more than one, any single match passes: a missing host goes unseen.
                problems.append(f"{where}: needs exactly one fail_if_none_matches_regexp (its own record); "
                                "several would pass while a host is missing")
        if prober == "tcp":
            tcp = module.get("tcp")
            if not isinstance(tcp, dict):
                problems.append(f"{where}: tcp prober without a `tcp:` section")
                continue
            for index, step in enumerate(tcp.get("query_response") or []):
                if "expect" in step:
                    problem = _compiles(step["expect"])
                    if problem:
                        problems.append(f"{where}: query_response[{index}].expect: {problem}")
    return problems


def check_rules_shape(text: str) -> list[str]:
    """A light structural check of a rule file (``promtool check rules`` is the real one)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return [f"not YAML: {error}"]
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        return ["no `groups:` list"]
    problems = []
    for group in data["groups"]:
        for rule in group.get("rules", []):
            if "alert" in rule:
                if not rule.get("expr"):
                    problems.append(f"alert {rule['alert']} has no expr")
                if "runbook_url" not in (rule.get("annotations") or {}):
                    problems.append(f"alert {rule['alert']} names no runbook_url")
            elif "record" not in rule:
                problems.append(f"rule {rule!r} is neither alert nor record")
    return problems


def loads(text: str) -> Any:
    """YAML text as data (for callers that compare rendered files)."""
    return yaml.safe_load(text)

