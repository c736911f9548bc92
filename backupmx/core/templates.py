"""The project's Jinja2 templates (the top-level ``templates/`` folder), rendered one way.

Every file the deploys push, and the shell programs they run, is a template here.
Undefined names fail (``StrictUndefined``), nothing is HTML-escaped, block tags take
their own line, and filters quote what the files need quoted: ``shquote`` for a
shell word, ``e_dq`` inside a double-quoted shell string, ``q`` for a YAML scalar.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from typing import Any

from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined

from backupmx.core.errors import BackupMXError
from backupmx.core.paths import TEMPLATES, checkout_problem


def yaml_string(value: Any) -> str:
    # A JSON string is a YAML double-quoted scalar; no HTML escaping (Jinja's tojson does that).
    return json.dumps(str(value), ensure_ascii=False)


def double_quoted(text: Any) -> str:
    """Text safe inside a double-quoted shell string."""
    return re.sub(r'([\\"$`])', r"\\\1", str(text))


@lru_cache(maxsize=1)
def _environment() -> Environment:
    problem = checkout_problem()
    if problem:
        raise BackupMXError(problem)
    # The bytecode cache (Jinja's per-user directory under the temp dir, keyed by each template's
    # source) spares every run compiling the same templates again.
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True,
                      bytecode_cache=FileSystemBytecodeCache())
    env.filters["shquote"] = shlex.quote
    env.filters["q"] = yaml_string
    env.filters["e_dq"] = double_quoted
    return env


def render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values)
