"""Only backupmx/core/context.py touches pyinfra's context and keeps per-run state.

Per-run caches spread over modules drift apart (each with its own idea of when a
value made while preparing may be used at execution); one holder keeps one rule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("backupmx", "operations", "facts", "deploys")
HOLDER = PROJECT_ROOT / "backupmx" / "core" / "context.py"
# pyinfra's context and its run stage, and per-run caches of one's own.
FORBIDDEN = re.compile(r"\b(ctx_state|WeakKeyDictionary|is_executing|current_stage|should_check_for_changes)\b")


def _sources() -> list[Path]:
    return sorted(path for folder in SCANNED for path in (PROJECT_ROOT / folder).rglob("*.py") if path != HOLDER)


def _context_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("pyinfra.context")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("pyinfra.context"):
                found.append(node.module)
            elif node.module == "pyinfra":
                found += [f"pyinfra.{alias.name}" for alias in node.names if alias.name in ("context", "state")]
    return found


def test_the_scan_sees_the_project():
    names = {path.relative_to(PROJECT_ROOT).as_posix() for path in _sources()}
    assert {"backupmx/lifecycle/deploy/run.py", "operations/mailhost.py", "deploys/backupmx.py"} <= names
    assert HOLDER.exists()


def test_nothing_but_the_holder_touches_pyinfras_context_or_keeps_per_run_caches():
    offences = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(PROJECT_ROOT).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            for match in FORBIDDEN.finditer(line):
                offences.append(f"{name}:{number}: {match.group(1)}")
        offences += [f"{name}: imports {module}" for module in _context_imports(ast.parse(text, name))]
    assert not offences, ("use backupmx.core.context (run_value, once_per_run, remember/recall, executing, "
                          "at_exit...) instead:\n  " + "\n  ".join(offences))
