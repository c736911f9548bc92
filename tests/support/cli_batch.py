"""Many short runs of the pyinfra CLI, its imports paid once: one helper process imports
pyinfra's CLI (and the libraries it and the deploys load: gevent, paramiko, jinja2,
requests, hvac, dnspython), then forks one child per run, which sets ``sys.argv`` and calls
the CLI's ``main()`` exactly as the ``pyinfra`` script does, its stdout and stderr in
files of its own. The project's own code (``backupmx``, the inventory, the deploy file) is
loaded in each child afresh, as in a run of its own. About 0.2 s of CPU a run instead of
0.65 s: ``tests/cli/test_bad_input.py`` makes 50 runs that each stop at stage 0.

Only for runs that end by themselves (nothing here sends them a signal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def run_batch(argvs: list[list[str]], parallel: int = 4, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``pyinfra *argv`` for each of ``argvs``, ``parallel`` at a time, from the project root."""
    with tempfile.TemporaryDirectory(prefix="clibatch-") as directory:
        spec = Path(directory) / "spec.json"
        spec.write_text(json.dumps({"argvs": argvs, "parallel": parallel, "directory": directory}))
        helper = subprocess.run([sys.executable, __file__, str(spec)], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if helper.returncode != 0:
            raise RuntimeError(f"the CLI batch helper failed ({helper.returncode}): {helper.stderr[-2000:]}")
        codes = json.loads((Path(directory) / "codes.json").read_text())
        return [subprocess.CompletedProcess([PYINFRA, *argv], codes[index],
                                            (Path(directory) / f"{index}.out").read_text(errors="replace"),
                                            (Path(directory) / f"{index}.err").read_text(errors="replace"))
                for index, argv in enumerate(argvs)]


def _child(argv: list[str], out: str, err: str) -> None:
    """In the forked child: the ``pyinfra`` script's own lines, with stdout/stderr to files."""
    import re

    from pyinfra_cli.main import main

    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    code = 1
    try:
        sys.argv = [PYINFRA, *argv]
        sys.argv[0] = re.sub(r"(-script\.pyw|\.exe)?$", "", sys.argv[0])
        code = main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 0)


def _helper(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    directory, argvs, parallel = spec["directory"], spec["argvs"], spec["parallel"]
    # What every run imports before it reaches the project's code: once, here. pyinfra's CLI first:
    # importing it patches the standard library for gevent, as in a run of its own.
    import pyinfra_cli.main  # noqa: F401, I001
    from gevent import monkey

    import dns.resolver  # noqa: F401
    import hvac  # noqa: F401
    import jinja2  # noqa: F401
    import paramiko  # noqa: F401
    import requests  # noqa: F401

    # The unpatched fork and waitpid: the helper starts no gevent hub, so each child starts clean.
    fork, waitpid = monkey.get_original("os", "fork"), monkey.get_original("os", "waitpid")
    codes: dict[int, int] = {}
    running: dict[int, int] = {}
    pending = list(range(len(argvs)))

    def reap() -> None:
        pid, status = waitpid(-1, 0)
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)

    while pending or running:
        while pending and len(running) < parallel:
            index = pending.pop(0)
            pid = fork()
            if pid == 0:
                _child(argvs[index], f"{directory}/{index}.out", f"{directory}/{index}.err")
            running[pid] = index
        reap()
    Path(directory, "codes.json").write_text(json.dumps([codes[index] for index in range(len(argvs))]))


if __name__ == "__main__":
    _helper(sys.argv[1])
