"""One monitoring host's ``monitoring`` inventory data, validated (docs/monitoring.md).\n"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backupmx.core.errors import ConfigError
from backupmx.core.paths import PROJECT_ROOT
from backupmx.core.settings import Settings
from backupmx.core.validate import command, host_port, known_keys

# The files stage 6 writes to the monitoring host's directory.
BLACKBOX_FILE = "blackbox-backupmx.yml"
RULES_FILE = "backupmx-alerts.rules.yml"
SCRAPE_FILE = "prometheus-backupmx.yml"
FILES = (BLACKBOX_FILE, RULES_FILE, SCRAPE_FILE)
DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")
_ABS_PATH = re.compile(r"^/[^\s'\"\\$`]*$")
MONITORING_KEYS = ("dir", "blackbox_check", "blackbox_bin", "promtool_check", "promtool_bin", "dns_targets",
                   "blackbox_address", "scrape_interval", "smtp_scrape_interval", "runbook_url", "reload",
                   "runbook", "architecture", "severity")


# The runbook's section (its heading's anchor, as GitHub and most forges make it) each alert links to.
RUNBOOK_SECTIONS = {"drift": "mx-set-drift", "canary": "the-weekly-canary"}
# The rendered runbook when the inventory names none (monitoring.runbook), relative to the project.
DEFAULT_RUNBOOK = "docs/runbook.md"
_URL = re.compile(r"^(https?|file)://[^\s\"#]+$")


def _runbook_url(value: Any, runbook: Any) -> str:
    """``monitoring.runbook_url``: an address an alert can open, without a section (each alert adds
    its own). Default: the rendered runbook on this machine, as a file:// URL."""
    if value is None:
        page = runbook if isinstance(runbook, str) and runbook.strip() else DEFAULT_RUNBOOK
        return (PROJECT_ROOT / page).resolve().as_uri()
    if not isinstance(value, str) or not _URL.match(value):
        fix = ("give the runbook's own address without a #section (each alert adds its section), e.g. "
               "https://git.example.org/infra/backupmx/src/branch/main/docs/runbook.md; left out, alerts link to "
               "the rendered runbook on this machine (file://)")
        if isinstance(value, str) and "#" in value:
            raise ConfigError("monitoring.runbook_url", f"{value!r} names a section", fix)
        raise ConfigError("monitoring.runbook_url", f"{value!r} is not an address an alert can open "
                          "(http://, https:// or file://)", fix)
    return value


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
    # The rendered runbook's address, without a section: each alert adds its own (``runbook_link``).
    runbook_url: str = ""
    severity: str = "critical"
    # Commands run after the files validate (e.g. a reload of blackbox_exporter).
    reload: tuple[tuple[str, ...], ...] = ()
    # Local paths (on the control machine) the runbook and the architecture page are rendered to.
    runbook: str | None = None
    architecture: str | None = None

    def path(self, name: str) -> str:
        return f"{self.dir.rstrip('/')}/{name}"

    def runbook_link(self, section: str) -> str:
        """The alerts' ``runbook_url``: the runbook's address and the section of ``section`` (``RUNBOOK_SECTIONS``)."""
        return f"{self.runbook_url}#{RUNBOOK_SECTIONS[section]}"

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
        if not isinstance(value, str) or not DURATION.match(value):
            raise ConfigError(f"monitoring.{key}", f"{value!r} is not a Prometheus duration", "e.g. 60s or 5m")
        intervals[key] = value
    runbook_url = _runbook_url(data.get("runbook_url"), data.get("runbook"))
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
