"""tests/unit is pure: no sandbox world, no daemon, no Postfix, rspamd, sshd or
Prometheus tool. `make test-unit` runs this folder alone, without apt and without a
world, in seconds; these guards keep it honest when the whole suite runs with a world up.

* A unit test that asks for a world fixture fails at setup, naming the fixture.
* The world file is out of reach: ``BACKUPMX_SANDBOX_DIR`` points at an empty
  directory, so reading it (inventory/sandbox.py, ``support.providers.sandbox_data``) fails
  with "no sandbox world", in this process and in any it starts.
* The daemons' tools on ``PATH`` are shadowed by stand-ins that fail, naming the tool;
  a test's own stand-ins (earlier on ``PATH``) still win.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

WORLD_FIXTURES = ("world", "sandbox", "fresh", "sdk", "cf", "zone_id", "acc")
DAEMON_TOOLS = ("postfix", "postconf", "postmap", "postqueue", "postsuper", "sendmail", "rspamd", "rspamadm",
                "rspamc", "sshd", "haproxy", "bao", "promtool", "prometheus-blackbox-exporter", "blackbox_exporter",
                "swaks")


def _refused(name: str):
    @pytest.fixture(name=name)
    def fixture():
        pytest.fail(f"tests/unit is pure: {name!r} needs the sandbox world; move this test to "
                    f"tests/integration (or tests/cli if it runs the pyinfra CLI)", pytrace=False)

    return fixture


for _name in WORLD_FIXTURES:
    globals()[f"refused_{_name}"] = _refused(_name)


@pytest.fixture(scope="session")
def shadowed_tools(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("unit-shadowed-tools")
    for tool in DAEMON_TOOLS:
        path = directory / tool
        path.write_text(f"#!/bin/sh\necho 'tests/unit is pure: it ran {tool}; move this test to tests/integration' >&2\n"
                        "exit 97\n")
        path.chmod(0o755)
    return directory


@pytest.fixture(autouse=True)
def no_world_no_tools(monkeypatch, tmp_path_factory, shadowed_tools):
    monkeypatch.setenv("BACKUPMX_SANDBOX_DIR", str(tmp_path_factory.getbasetemp() / "no-sandbox-world"))
    monkeypatch.setenv("PATH", f"{shadowed_tools}{os.pathsep}{os.environ['PATH']}")
