"""The docker-mailserver world (tests/support/dms.py) for the tests in this folder."""

from __future__ import annotations

import json
import os

import pytest

from support.dms import dms_root, inside, sandbox_cli
from support.settle import settle


@pytest.fixture(scope="session")
def dms_world():
    root = dms_root()
    already_up = sandbox_cli(root, "status").returncode == 0
    started = sandbox_cli(root, "up", "--primary", "docker-mailserver")
    if started.returncode != 0:
        sandbox_cli(root, "down")
        pytest.fail(f"the docker-mailserver world did not come up: {started.stderr.strip()[-2000:]}", pytrace=False)
    world = json.loads((root / "world.json").read_text())
    assert world["primary"]["flavour"] == "docker-mailserver", world["primary"]
    yield world
    if not already_up and not os.environ.get("BACKUPMX_KEEP_SANDBOX"):
        sandbox_cli(root, "down")


@pytest.fixture(scope="module")
def dms(dms_world):
    """The docker-mailserver world, seen by this module's commands; settled after the module."""
    with inside(dms_world):
        yield dms_world
        settle(dms_world)
