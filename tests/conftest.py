"""Shared fixtures: one sandbox world for the whole test session.

If a world is already up (``backupmx-sandbox up`` by hand), the suite uses it and
leaves it running; otherwise it brings one up and takes it down at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backupmx.sandbox.world import Sandbox, load_world

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    return Sandbox()


@pytest.fixture(scope="session")
def world(sandbox: Sandbox):
    from backupmx.sandbox import cli

    already_up = all(cli.status(sandbox).values())
    try:
        data = cli.up(sandbox)
    except Exception:
        cli.down(sandbox)  # leave nothing half-started behind
        raise
    assert data == load_world()
    yield data
    if not already_up and not os.environ.get("BACKUPMX_KEEP_SANDBOX"):
        cli.down(sandbox)


def pytest_configure(config):
    config.addinivalue_line("markers", "lifecycle: takes the sandbox world down; runs last")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("lifecycle") is not None)
