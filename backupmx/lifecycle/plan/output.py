"""Where the ``--dry`` plan documents go (``--data plan_markdown=PATH plan_json=PATH``), gathered and written.

The run's data (the gate report, the record plan per domain, the file changes the
operations noted while preparing) is gathered once, when the pyinfra run ends,
whatever host's pass came last; the text is ``backupmx.lifecycle.plan.document``'s.
Written only by a ``--dry`` review (docs/ci.md); a real run ignores the keys.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from backupmx.core.errors import ConfigError
from backupmx.core.files import write_atomically
from backupmx.core.plan_log import file_changes
from backupmx.core.report import Report
from backupmx.dns.stage import Assessment
from backupmx.lifecycle.plan.document import PlanData, domain_changes, to_json, to_markdown

MARKDOWN_KEY, JSON_KEY, FULL_DOCS_KEY = "plan_markdown", "plan_json", "full_docs_diff"


@dataclass(frozen=True)
class PlanOutputs:
    markdown: Path | None = None
    json: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.markdown or self.json)


def plan_outputs(data: Mapping) -> PlanOutputs:
    """The paths the user named, checked before anything is contacted: a file in an existing directory."""
    paths = {}
    for key in (MARKDOWN_KEY, JSON_KEY):
        value = data.get(key)
        if value in (None, "", False):
            continue
        if not isinstance(value, str):
            raise ConfigError(key, f"{value!r} is not a path", f"e.g. --data {key}=plan.md")
        path = Path(value).expanduser().absolute()
        if path.is_dir():
            raise ConfigError(key, f"{value} is a directory", f"name a file in it, e.g. {path / 'plan'}")
        if not path.parent.is_dir():
            raise ConfigError(key, f"directory {path.parent} does not exist", "create it or name another path")
        if not os.access(path.parent, os.W_OK):
            raise ConfigError(key, f"directory {path.parent} is not writable", "name a path you can write")
        paths[key] = path
    return PlanOutputs(paths.get(MARKDOWN_KEY), paths.get(JSON_KEY))


def plan_data(report: Report, dns: dict[str, Assessment], domain_names: list[str],
              secrets: tuple[str, ...]) -> PlanData:
    """The run's plan as ``PlanData``: the report's rows, each domain read, every file change noted."""
    domains = tuple(domain_changes(name, dns[name].plan, dns[name].refusal) for name in domain_names if name in dns)
    return PlanData(report.title, tuple(report.checks), report.blocked, domains, tuple(file_changes()), secrets)


def write_plan(outputs: PlanOutputs, data: PlanData) -> None:
    """Write the documents atomically; a failure is one line on stderr (the run's outcome stands)."""
    for path, render in ((outputs.markdown, to_markdown), (outputs.json, to_json)):
        if path is None:
            continue
        try:
            write_atomically(path, render(data))
        except OSError as error:
            print(f"backupmx: cannot write the plan to {path}: {error.strerror or error}; "
                  f"name a writable path", file=sys.stderr)
