"""The canary's result as Prometheus metrics, in node_exporter's textfile-collector format: pure.

One series per domain and backup MX host (labels ``domain``, ``mx_host``):

- ``backupmx_canary_success`` 1 when the last canary was delivered cleanly, else 0;
- ``backupmx_canary_duration_seconds`` from hand-off to the backup until it was in
  the mailbox (absent when it was not delivered);
- ``backupmx_canary_last_run_timestamp_seconds`` when the canary last ran;
- ``backupmx_canary_last_success_timestamp_seconds`` when it last passed: carried
  over from the previous file when this run failed, so the alert can say since when;
- ``backupmx_canary_failed_hop`` 1 with the hop that failed (label ``hop``), only
  for a failing host.

The alerts on them (``BackupMXCanaryFailing``, ``BackupMXCanaryNotRun``) are in
templates/backupmx-alerts.rules.yml.j2.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SUCCESS = "backupmx_canary_success"
DURATION = "backupmx_canary_duration_seconds"
LAST_RUN = "backupmx_canary_last_run_timestamp_seconds"
LAST_SUCCESS = "backupmx_canary_last_success_timestamp_seconds"
FAILED_HOP = "backupmx_canary_failed_hop"
FAILING_ALERT = "BackupMXCanaryFailing"
NOT_RUN_ALERT = "BackupMXCanaryNotRun"
# Weekly by default (docs/canary.md); a day of slack before "has not run" fires.
NOT_RUN_AFTER_SECONDS = 8 * 86400
METRICS_FILE_NAME = "backupmx_canary.prom"

HELP = {
    SUCCESS: "1 if the last canary through this backup MX host reached the mailbox cleanly, else 0.",
    DURATION: "Seconds from hand-off to the backup MX host until the canary was in the mailbox.",
    LAST_RUN: "Unix time the canary last ran for this backup MX host.",
    LAST_SUCCESS: "Unix time the canary last passed for this backup MX host.",
    FAILED_HOP: "1 for the hop where the last canary failed (refused by the relay, stuck in the relay's queue, ...).",
}

_SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)\s*$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class CanaryResult:
    domain: str
    mx_host: str
    ok: bool
    seconds: float | None = None  # hand-off to delivery, when delivered
    hop: str | None = None  # the failing hop's name, when not ok


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(result: CanaryResult, **extra: str) -> str:
    pairs = {"domain": result.domain, "mx_host": result.mx_host, **extra}
    return ",".join(f'{key}="{_escape(value)}"' for key, value in pairs.items())


def last_successes(previous: str | None) -> dict[tuple[str, str], float]:
    """(domain, mx_host) -> last success time, from a metrics file this module wrote."""
    found: dict[tuple[str, str], float] = {}
    for line in (previous or "").splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or match["name"] != LAST_SUCCESS:
            continue
        labels = {key: _unescape(value) for key, value in _LABEL.findall(match["labels"])}
        try:
            found[(labels.get("domain", ""), labels.get("mx_host", ""))] = float(match["value"])
        except ValueError:
            continue
    return found


def render_metrics(results: Iterable[CanaryResult], now: float, previous: str | None = None) -> str:
    """The textfile-collector file for this run; ``previous`` (the file it replaces) keeps last successes."""
    results = list(results)
    earlier = last_successes(previous)
    samples: dict[str, list[str]] = {name: [] for name in HELP}
    for result in results:
        labels = _labels(result)
        samples[SUCCESS].append(f"{SUCCESS}{{{labels}}} {1 if result.ok else 0}")
        if result.seconds is not None:
            samples[DURATION].append(f"{DURATION}{{{labels}}} {result.seconds:.3f}")
        samples[LAST_RUN].append(f"{LAST_RUN}{{{labels}}} {now:.0f}")
        success = now if result.ok else earlier.get((result.domain, result.mx_host))
        if success is not None:
            samples[LAST_SUCCESS].append(f"{LAST_SUCCESS}{{{labels}}} {success:.0f}")
        if not result.ok:
            samples[FAILED_HOP].append(f"{FAILED_HOP}{{{_labels(result, hop=result.hop or 'unknown')}}} 1")
    lines = []
    for name, help_text in HELP.items():
        if not samples[name]:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples[name]]
    return "\n".join(lines) + "\n"
