"""Docs carry no figure the code can change without a test noticing: the defaults they state
are checked against the code here, and measured figures (timings, sizes, line counts) are
left to docs/performance.md, the benchmark's report with its date and method."""

from __future__ import annotations

import re

import pytest

from backupmx.core.settings import load_settings
from backupmx.monitoring.settings import load_monitoring
from support.providers import PROJECT_ROOT

# Rendered from the inventory and checked by `python -m backupmx.monitoring.docs --check`,
# and the benchmark's own report.
NOT_PROSE = {"runbook.md", "architecture.md", "performance.md"}
MEASURED = re.compile(
    r"≈ ?\d"                                                       # ≈ 2.5 s
    r"|\babout \d+(?:\.\d+)? ?(?:ms|s|seconds|minutes|min|kB)\b"   # about 2 minutes
    r"|\b\d+(?:\.\d+)?[-–]\d+(?:\.\d+)? ?(?:ms|s|seconds)\b"       # 5.7-9.5 s
    r"|\b\d+(?:\.\d+)? ?(?:kB|ms)\b"                               # 39 kB, 10 ms
    r"|(?<![+\-])\b\d+ lines\b"                                    # 273 lines (not a diff's +N -0 lines)
    r"|\btook \d")
MINIMAL = {
    "domains": [{"name": "example.org", "primary_mx": [{"host": "mail.example.org", "priority": 1}]}],
    "backup_mx": {"provider": "rollernet", "hosts": ["mx1.example.net", "mx2.example.net"], "priority": 20},
    "relay_cidrs": ["192.0.2.0/24"],
    "vault": {"addr": "https://vault.example.org", "secret_path": "secret/backupmx"},
}


def prose(path) -> list[tuple[int, str]]:
    """The lines of a Markdown file outside its code blocks (those are sample output)."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def table_rows(path, first_column: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header starts with ``| first_column |``, by their first cell."""
    rows, inside = {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| {first_column} |"):
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            for key in re.findall(r"`([^`]+)`", cells[0]):
                rows[key] = cells
        elif inside and not line.startswith("|"):
            inside = False
    return rows


DOCS = [PROJECT_ROOT / "README.md"] + sorted(path for path in (PROJECT_ROOT / "docs").glob("*.md")
                                             if path.name not in NOT_PROSE)


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_no_measured_figure_in_the_prose(path):
    found = [f"{path.name}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}"
             for number, line in prose(path) for match in MEASURED.finditer(line)]
    assert not found, "a figure the code can change without a test noticing: drop it (or measure it in " \
                      "docs/performance.md):\n" + "\n".join(found)


def test_the_defaults_of_the_configuration_page_are_the_codes():
    settings = load_settings(MINIMAL)
    code = {
        "backup_mx.smtp_port": str(settings.backup_mx.smtp_port),
        "vault.token_env": settings.vault.token_env,
        "cloudflare.api_base": settings.cloudflare.api_base,
        "cloudflare.record_quota": str(settings.cloudflare.record_quota),
        "cloudflare.read_timeout": f"{settings.cloudflare.read_timeout:g}",
        "dns_wait_seconds": str(settings.dns_wait_seconds),
    }
    stated = {}
    for key, cells in table_rows(PROJECT_ROOT / "docs" / "configuration.md", "key").items():
        found = re.search(r"\bdefault `?(https?://[^`\s;]+|[0-9][0-9.]*|[A-Za-z_]+)`?", cells[-1])
        if found and (found.group(1)[0].isdigit() or "`" in cells[-1][found.start():found.end()]):
            stated[key] = found.group(1)
    assert stated == code


def test_the_defaults_of_the_monitoring_keys_are_the_codes():
    monitoring = load_monitoring({"dir": "/srv/m", "dns_targets": ["1.1.1.1:53"]}, load_settings(MINIMAL))
    rows = table_rows(PROJECT_ROOT / "docs" / "monitoring.md", "key")
    checked = 0
    for key, cells in rows.items():
        if key in ("dir", "dns_targets", "runbook_url", "reload", "runbook", "architecture"):
            continue  # required, or a default in words
        keys = re.findall(r"`([^`]+)`", cells[0])
        values = re.findall(r"`([^`]+)`", cells[-1])
        value = getattr(monitoring, key)
        stated = values[keys.index(key)]
        assert stated == (str(value).lower() if isinstance(value, bool) else str(value)), key
        checked += 1
    assert checked >= 7
