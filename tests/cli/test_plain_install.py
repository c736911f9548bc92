"""Installing it the plain way: a ``pip install --no-deps .`` (a copy in site-packages, not the
checkout in place) and the checkout's deploys run from that virtualenv. The deploys, the
inventories and the templates live in the checkout, so the copy refuses at start, in one
line saying how to install; the sandbox's copy the same (its world belongs to the checkout).

The virtualenv borrows the project's dependencies from the running one (a path in a .pth
file, which adds the directory without running its own .pth files: the project's editable
install stays out). Nothing of the checkout is built in place: the package's sources are
copied first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from support.providers import PROJECT_ROOT

CONSOLE_SCRIPT = """#!{python}
import sys
from {module} import main
sys.exit(main())
"""


def run(*argv, cwd=PROJECT_ROOT, timeout=180) -> subprocess.CompletedProcess:
    # Without the test worker's own world: the copy must find none by itself.
    env = {name: value for name, value in os.environ.items() if name != "BACKUPMX_SANDBOX_DIR"}
    return subprocess.run([str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False, env=env)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A virtualenv with backupmx and backupmx-sandbox installed from copies of their sources."""
    root = tmp_path_factory.mktemp("plain")
    venv = root / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    site = Path(run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    (site / "backupmx-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sources = root / "src"
    for name in ("pyproject.toml", "README.md"):
        (sources / "backupmx").mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, sources / "backupmx" / name)
    shutil.copytree(PROJECT_ROOT / "backupmx", sources / "backupmx" / "backupmx",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT_ROOT / "sandbox", sources / "sandbox",
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "vendor"))
    installed = run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", sources / "backupmx", sources / "sandbox")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # pyinfra's console script, as pip writes it (the borrowed dependencies bring none).
    (venv / "bin" / "pyinfra").write_text(CONSOLE_SCRIPT.format(python=venv / "bin" / "python",
                                                                module="pyinfra_cli.main"))
    (venv / "bin" / "pyinfra").chmod(0o755)
    return venv


def one_error_line(result: subprocess.CompletedProcess, prefix: str = "--> pyinfra error: ") -> str:
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text and "TemplateNotFound" not in text, text
    errors = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, text
    return errors[0]


@pytest.mark.parametrize("inventory,deploy", [
    ("inventory/sandbox.py", "deploys/backupmx.py"),
    ("inventory/production.py", "deploys/rollback.py"),
])
def test_the_checkouts_deploys_refuse_a_copy_in_one_line(plain, inventory, deploy):
    copy = run(plain / "bin" / "python", "-c", "import backupmx; print(backupmx.__file__)", cwd="/")
    assert copy.stdout.startswith(str(plain)), copy.stdout + copy.stderr  # the copy, not the checkout
    result = run(plain / "bin" / "pyinfra", inventory, deploy, "--dry")
    line = one_error_line(result)
    assert line.endswith("install it in place: pip install --no-deps -e . from the checkout (make setup does)"), line
    assert "Connecting to hosts" not in result.stdout + result.stderr


def test_the_library_says_the_same_before_rendering_a_template(plain):
    code = ("from backupmx.core.errors import BackupMXError\n"
            "from backupmx.core.templates import render\n"
            "try:\n    render('blackbox.yml.j2')\n"
            "except BackupMXError as error:\n    print(error)\n")
    result = run(plain / "bin" / "python", "-c", code, cwd="/")
    assert "install it in place: pip install --no-deps -e ." in result.stdout, result.stdout + result.stderr


def test_the_sandboxs_copy_refuses_in_one_line(plain):
    result = run(plain / "bin" / "backupmx-sandbox", "status")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"backupmx-sandbox is installed as a copy, in {next(plain.glob('lib/python*/site-packages'))}"
        "/backupmx_sandbox, and its world belongs to the checkout: install it in place (pip install --no-deps -e "
        "./sandbox from the checkout; make setup does), or set BACKUPMX_SANDBOX_DIR"], result.stderr
