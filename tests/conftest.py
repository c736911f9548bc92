"""Shared fixtures: one sandbox world for the whole test session.

If a world is already up (``backupmx-sandbox up`` by hand), the suite uses it and
leaves it running; otherwise it brings one up and takes it down at the end.

The tests by kind: tests/unit (pure, no world; tests/unit/conftest.py keeps it so),
tests/integration (the sandbox's daemons), tests/cli (the pyinfra CLI end to end).
Shared helpers live next to this file (providerkit, mailhostkit, mailpath, seedkit,
scratchkit, httpkit), importable by name (pyproject's ``pythonpath``).
"""

from __future__ import annotations

import json
import os

import pytest
import trustme

from backupmx_sandbox import cli
from backupmx_sandbox.world import Sandbox, load_world, sandbox_root
from providerkit import admin, cloudflare_admin
from settlekit import settle

# The session's world once a test asked for it (the settling after each module needs it).
_live: dict[str, dict] = {}


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    return Sandbox()


@pytest.fixture(scope="session")
def world(sandbox: Sandbox):
    already_up = all(cli.status(sandbox).values())
    try:
        data = cli.up(sandbox)
    except Exception:
        cli.down(sandbox)  # leave nothing half-started behind
        raise
    assert data == load_world()
    _live["world"] = data
    yield data
    _live.clear()
    if not already_up and not os.environ.get("BACKUPMX_KEEP_SANDBOX"):
        cli.down(sandbox)


@pytest.fixture(autouse=True, scope="module")
def settled_world():
    """After each module that used the world, no mail of its tests is still on its way (settlekit)."""
    yield
    if "world" in _live:
        settle(_live["world"])


def pytest_configure(config):
    config.addinivalue_line("markers", "lifecycle: takes the sandbox world down; runs last")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("lifecycle") is not None)


# --- secret hygiene, suite-wide (docs/reliability.md) ---------------------------------

_secrets_by_root: dict[str, list[str]] = {}


def _seeded_secrets() -> list[str]:
    """The generated secret values (``<sandbox root>/secrets.json``) of every world this session
    has seen: the current one (``BACKUPMX_SANDBOX_DIR``) read once, and each earlier one kept."""
    root = sandbox_root()
    if str(root) not in _secrets_by_root:
        try:
            values = json.loads((root / "secrets.json").read_text())
        except (OSError, ValueError):
            return [value for found in _secrets_by_root.values() for value in found]  # no world there yet
        _secrets_by_root[str(root)] = [value for value in values.values() if isinstance(value, str) and len(value) >= 8]
    return [value for found in _secrets_by_root.values() for value in found]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fail any test whose captured output or failure report holds a seeded secret value."""
    outcome = yield
    report = outcome.get_result()
    values = _seeded_secrets()
    if not values:
        return
    leaked = False
    sections = []
    for name, content in report.sections:
        for value in values:
            if value in content:
                leaked = True
                content = content.replace(value, "<SEEDED SECRET>")
        sections.append((name, content))
    report.sections = sections  # the terminal report must not show it either
    if report.longrepr is not None and any(value in str(report.longrepr) for value in values):
        leaked = True
        report.longrepr = "the failure report held a seeded secret value (not shown)"
    # Sections accumulate over setup, call and teardown: flag the call (or the phase that failed).
    if leaked and (report.when == "call" or report.failed):
        report.outcome = "failed"
        if not isinstance(report.longrepr, str) or "seeded secret" not in report.longrepr:
            report.longrepr = "a seeded secret value was in this test's captured output (shown as <SEEDED SECRET>)"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test CA of its own (not the sandbox's), for TLS servers on loopback (httpkit)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_bundle(ca, tmp_path_factory) -> str:
    """``ca``'s certificate as a PEM file, to trust it."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def sdk(world):
    """The official Cloudflare SDK pointed at the fake (no retries: a test sees every answer)."""
    from cloudflare import Cloudflare  # on first use: tests/unit never pays for importing the SDK

    return Cloudflare(api_token=world["cloudflare_token"], base_url=world["cloudflare_api_base"], max_retries=0)


@pytest.fixture
def cf(fresh, sdk):
    """The SDK client, with both fakes at their seed before and after the test."""
    return sdk


@pytest.fixture
def zone_id(world) -> str:
    return world["cloudflare_zone_id"]


@pytest.fixture
def acc(world):
    """The fake Roller Network ACC at its seed before and after the test."""
    admin(world, "reset", {})
    yield world
    admin(world, "reset", {})


@pytest.fixture
def fresh(world):
    """Both fakes (Cloudflare, Roller Network ACC) at their seed before and after the test."""
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    yield world
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
