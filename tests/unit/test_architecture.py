"""The code's shape, enforced: layers, no cycles, no hidden imports, private names stay home.

docs/architecture.md ("Code map") draws the layers; pyproject.toml's
[tool.importlinter] states them as contracts. These tests fail on a new violation.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The tests' shared helpers: one package, tests/support, imported as ``support`` (pyproject's pythonpath);
# every module of it is covered because the package is (test_the_test_helpers_have_one_home keeps it so).
TEST_SUPPORT = "support"
PROJECT_PACKAGES = ("backupmx", "backupmx_sandbox", "operations", "facts", "bench", TEST_SUPPORT)
# Runtime code: what a deploy runs. The sandbox, tests and bench are not in it.
RUNTIME = ("backupmx", "operations", "facts", "deploys", "inventory")
CHECKED = RUNTIME + ("sandbox", "bench", "tests")


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (PROJECT_ROOT / folder).rglob("*.py")
                  if ".venv" not in path.parts)


def is_project_module(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in PROJECT_PACKAGES


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_the_import_contracts_hold():
    """Layers, runtime/sandbox separation and acyclic packages (import-linter)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.parametrize("module,planted", [
    ("backupmx/mailhost/model.py", "import backupmx.dns.plan"),  # two independent floors
    ("backupmx/core/errors.py", "import backupmx.postfix.shell"),  # a floor importing one above it
    ("backupmx/postfix/shell.py", "import backupmx_sandbox.world"),  # the runtime importing the sandbox
    ("facts/mailhost.py", "import backupmx.providers.acc"),  # a fact reaching past the host models
])
def test_the_contracts_catch_a_planted_import(tmp_path, module, planted):
    """Each contract breaks when its rule is broken: a copy of the tree with one import planted fails."""
    for folder in ("backupmx", "operations", "facts"):
        shutil.copytree(PROJECT_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT_ROOT / "sandbox" / "backupmx_sandbox", tmp_path / "backupmx_sandbox",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{planted}  # planted\n")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:] + result.stderr[-1000:]


@pytest.mark.parametrize("folder", RUNTIME)
def test_no_import_inside_a_function(folder):
    """An import inside a function hides a dependency (or dodges a cycle): every import is at the top."""
    found = []
    for path in python_files(folder):
        tree = parse(path)
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level:
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert found == []


def test_no_private_name_crosses_a_module():
    """`from x import _y` and `x._y` for a project module x: a private name stays in its module."""
    found = []
    for path in python_files(*CHECKED):
        tree = parse(path)
        module_aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and is_project_module(node.module):
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
                    else:
                        module_aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if is_project_module(alias.name):
                        module_aliases.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert found == []


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# The entry points, outside import-linter's packages: the deploy files may use the runtime (never
# facts directly: an operation reads them), the inventories are data (the sandbox's reads its world),
# pyinfra's config file starts the run's settings; nothing imports any of them.
ENTRY_POINTS = {
    "deploys": ("backupmx", "operations"),
    "inventory": (),
    "config.py": ("backupmx.core",),
}


def test_deploys_and_inventories_stand_above_everything():
    found = []
    for folder, allowed in ENTRY_POINTS.items():
        paths = [PROJECT_ROOT / folder] if folder.endswith(".py") else python_files(folder)
        for path in paths:
            for name, line in project_imports(path):
                if path == PROJECT_ROOT / "inventory" / "sandbox.py" and name == "backupmx_sandbox.world":
                    continue
                if not any(name == prefix or name.startswith(prefix + ".") for prefix in allowed):
                    found.append(f"{path.relative_to(PROJECT_ROOT)}:{line} imports {name}")
    for path in python_files(*CHECKED):
        for name, line in project_imports(path):
            if name.split(".")[0] in ("deploys", "inventory", "config"):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{line} imports the entry point {name}")
    assert found == []


def project_imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of each import of this project's code (and of the entry points) in ``path``."""
    found = []
    for node in ast.walk(parse(path)):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found += [(name, node.lineno) for name in names
                  if name.split(".")[0] in PROJECT_PACKAGES + ("deploys", "inventory", "config")]
    return found


def test_only_the_sandbox_inventory_tests_and_bench_import_the_sandbox():
    found = []
    for path in python_files("deploys", "inventory", "backupmx", "operations", "facts"):
        if path == PROJECT_ROOT / "inventory" / "sandbox.py":
            continue
        for node in ast.walk(parse(path)):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "backupmx_sandbox" for name in names):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert found == []


def test_the_test_helpers_have_one_home():
    """No module but conftest.py sits at the top of tests/: a shared helper is a module of tests/support
    (so the checks here cover it), and its ``__init__`` docstring says what each module holds, one line each."""
    tests = PROJECT_ROOT / "tests"
    strays = [str(path.relative_to(PROJECT_ROOT)) for path in tests.glob("*.py") if path.name != "conftest.py"]
    assert strays == [], "shared test helpers belong in tests/support"
    package = tests / TEST_SUPPORT
    modules = sorted(path.stem for path in package.glob("*.py") if path.stem != "__init__")
    listed = [line.split()[0] for line in (ast.get_docstring(parse(package / "__init__.py")) or "").splitlines()[2:]
              if line.strip()]
    assert listed == modules, "tests/support/__init__.py lists each module on a line of its own, sorted"


def test_every_project_import_names_something_that_exists():
    """``from m import x`` of this project's code resolves, in every file a run or the suite loads.

    Deploy files are executed by pyinfra, not imported, so a renamed function they (or the
    operations they load) import would otherwise only show when a deploy runs.
    """
    missing = []
    for path in python_files(*CHECKED, "deploys") + [PROJECT_ROOT / "config.py"]:
        for node in ast.walk(parse(path)):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and is_project_module(node.module)):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name == "*" or hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    missing.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert missing == []
