"""One module reaches into pyinfra and the process (backupmx/core/pyinfra_glue.py); one keeps
per-run state (backupmx/core/context.py).

A pyinfra upgrade is then one file's work, and per-run caches spread over modules cannot
drift apart (each with its own idea of when a value made while preparing may be used at
execution).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("backupmx", "operations", "facts", "deploys")
GLUE = PROJECT_ROOT / "backupmx" / "core" / "pyinfra_glue.py"
HOLDER = PROJECT_ROOT / "backupmx" / "core" / "context.py"
# pyinfra's context, its run stage and its CLI.
PYINFRA_INTERNALS = re.compile(r"\b(ctx_state|is_executing|current_stage|should_check_for_changes|pyinfra_cli)\b")
INTERNAL_MODULES = ("pyinfra.context", "pyinfra.api.state", "pyinfra.api.util", "pyinfra_cli")
# The process and private attributes: (object, attribute) read or called in code (not in a
# script string sent to a host).
PROCESS = {("sys", "argv"), ("os", "_exit"), ("signal", "signal"), ("atexit", "register")}
PRIVATE_ATTRIBUTES = {"connector", "_host"}
PER_RUN_CACHE = re.compile(r"\bWeakKeyDictionary\b")


def _sources(*leave_out: Path) -> list[Path]:
    return sorted(path for folder in SCANNED for path in (PROJECT_ROOT / folder).rglob("*.py")
                  if path not in leave_out)


def _internal_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith(INTERNAL_MODULES)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(INTERNAL_MODULES):
                found.append(node.module)
            elif node.module == "pyinfra":
                found += [f"pyinfra.{alias.name}" for alias in node.names if alias.name in ("context", "state")]
    return found


def _process_uses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in PROCESS:
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif node.attr in PRIVATE_ATTRIBUTES:
            found.append((node.lineno, f".{node.attr}"))
    return found


def test_the_scan_sees_the_project():
    names = {path.relative_to(PROJECT_ROOT).as_posix() for path in _sources()}
    assert {"backupmx/lifecycle/deploy/run.py", "operations/mailhost.py", "deploys/backupmx.py"} <= names
    assert GLUE.exists() and HOLDER.exists()


def test_nothing_but_the_glue_reaches_into_pyinfra_or_the_process():
    offences = []
    for path in _sources(GLUE):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(PROJECT_ROOT).as_posix()
        tree = ast.parse(text, name)
        for number, line in enumerate(text.splitlines(), 1):
            offences += [f"{name}:{number}: {match.group(1)}" for match in PYINFRA_INTERNALS.finditer(line)]
        offences += [f"{name}: imports {module}" for module in _internal_imports(tree)]
        offences += [f"{name}:{number}: {use}" for number, use in _process_uses(tree)]
    assert not offences, ("use backupmx.core.pyinfra_glue (executing, at_exit, dry_run, exit_now, "
                          "flagging_signals, ssh_connected...) instead:\n  " + "\n  ".join(offences))


def test_nothing_but_the_holder_keeps_per_run_caches():
    offences = [f"{path.relative_to(PROJECT_ROOT)}: {PER_RUN_CACHE.pattern}" for path in _sources(HOLDER)
                if PER_RUN_CACHE.search(path.read_text(encoding="utf-8"))]
    assert not offences, "use backupmx.core.context (run_value, once_per_run, remember/recall):\n  " + \
        "\n  ".join(offences)


def test_the_scan_catches_a_planted_use():
    planted = ast.parse("import sys\nfrom pyinfra.api.state import StateStage\nsys.argv[1:]\nhost.connector.client\n")
    assert _internal_imports(planted) == ["pyinfra.api.state"]
    assert _process_uses(planted) == [(3, "sys.argv"), (4, ".connector")]
