"""Shared fixtures: one sandbox world for the whole test session (per worker).

If a world is already up (``backupmx-sandbox up`` by hand), the suite uses it and
leaves it running; otherwise it brings one up and takes it down at the end
(``BACKUPMX_KEEP_SANDBOX=1`` leaves it up).

``make test`` runs the suite in parallel pytest-xdist workers (``-n``, ``--dist
loadfile``: a module's tests stay on one worker, so its module fixtures deploy once),
each with a world of its own: worker ``gw0``'s is ``.sandbox-gw0`` beside ``.sandbox``
(``$BACKUPMX_SANDBOX_DIR-gw0`` when that is set; ``world.world_dir``), set as
``BACKUPMX_SANDBOX_DIR`` in the worker before anything reads it, so every process it
starts (the pyinfra CLI through ``inventory/sandbox.py``) sees the same world. The
worlds' ports never collide (``backupmx_sandbox.ports``). Modules are handed out
heaviest first (``tests/module_seconds.json``). A plain ``pytest`` runs serially
against ``.sandbox``.

The tests by kind: tests/unit (pure, no world; tests/unit/conftest.py keeps it so),
tests/integration (the sandbox's daemons), tests/cli (the pyinfra CLI end to end).
Shared helpers live in tests/support (one module per concern, listed in its
``__init__``), imported as ``support`` (pyproject's ``pythonpath``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest
import trustme
from backupmx_sandbox import cli
from backupmx_sandbox.world import Sandbox, load_world, sandbox_root, world_dir
from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state
from support.providers import admin, cloudflare_admin
from support.settle import settle
from support.summaries import summaries_in
from xdist.scheduler import LoadFileScheduling

MODULE_SECONDS = Path(__file__).with_name("module_seconds.json")

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


@pytest.fixture(autouse=True)
def no_pyinfra_run_left_in_progress():
    """pyinfra's ``ctx_state.use(...)`` (and its siblings) put the previous context back only when
    the block ends without an exception: a test whose API run raised inside one (an operation
    that failed on purpose) leaves its State as "the run in progress" for every later test in the
    same process, and ``backupmx.core.context.in_a_run()`` then answers yes outside any run. In a
    parallel run any module may come after any other: nothing of one test's run outlives it."""
    yield
    for manager in (ctx_state, ctx_host, ctx_inventory, ctx_config):
        if manager.isset():
            manager.reset()


@pytest.fixture(autouse=True, scope="module")
def settled_world():
    """After each module that used the world, no mail of its tests is still on its way (support.settle)."""
    yield
    if "world" in _live:
        settle(_live["world"])


def pytest_addoption(parser):
    parser.addoption("--record-module-seconds", metavar="PATH", default=None,
                     help="write each module's total seconds (setup + call + teardown) to PATH as JSON "
                          "(e.g. tests/module_seconds.json, the order workers get modules in)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        # This worker's own world, before anything reads BACKUPMX_SANDBOX_DIR; every process
        # the worker starts inherits it.
        os.environ["BACKUPMX_SANDBOX_DIR"] = str(world_dir(worker))
    config.addinivalue_line("markers", "lifecycle: brings a world of its own up and down (not the session's)")
    config.addinivalue_line("markers", "sweep: the long form of a sweep (KILLS, the whole fault matrix); "
                                       "`-m sweep` or BACKUPMX_SWEEP=1 runs it")


def sweeping(config) -> bool:
    """The long form of the sweeps: ``BACKUPMX_SWEEP=1``, or a ``-m`` expression that names ``sweep``."""
    return os.environ.get("BACKUPMX_SWEEP") == "1" or "sweep" in (config.getoption("markexpr") or "")


def pytest_collection_modifyitems(config, items):
    """The long form's extra cases are skipped unless sweeping. In a parallel run, modules go
    out heaviest first (the rest keep their order): the longest module starts at once instead
    of last; ``--dist loadfile --no-loadscope-reorder`` keeps that order."""
    if not sweeping(config):
        skip = pytest.mark.skip(reason="long form only: BACKUPMX_SWEEP=1 (docs/reliability.md)")
        for item in items:
            if item.get_closest_marker("sweep"):
                item.add_marker(skip)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    try:
        seconds = json.loads(MODULE_SECONDS.read_text())
    except (OSError, ValueError):
        seconds = {}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], 0.0))


# The docker-mailserver modules share two workers, two to a worker: each worker that runs
# one brings up a world with a docker-mailserver container of its own (tests/cli/dms), the
# suite's costliest world to start and to keep running. Paired by their seconds (about
# 200 each), so neither pair is the suite's longest job.
DMS_PAIRS = {
    "tests/cli/dms/test_dms_pipeline.py": "docker-mailserver: pipeline, config dir",
    "tests/cli/dms/test_dms_config_dir.py": "docker-mailserver: pipeline, config dir",
    "tests/cli/dms/test_dms_layers.py": "docker-mailserver: layers, changedetector",
    "tests/cli/dms/test_dms_changedetector.py": "docker-mailserver: layers, changedetector",
}


class PairedDmsScheduling(LoadFileScheduling):
    """``--dist loadfile``, but the docker-mailserver modules go out in pairs (``DMS_PAIRS``)."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return DMS_PAIRS.get(module, module)


def pytest_xdist_make_scheduler(config, log):
    return PairedDmsScheduling(config, log) if config.getoption("dist") == "loadfile" else None


_module_seconds: defaultdict[str, float] = defaultdict(float)


_summaries: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    """Every phase's duration, by module (in a parallel run the controller hears every worker's);
    the tables in its captured output (support.summaries), shown at the end."""
    _module_seconds[report.nodeid.split("::", 1)[0]] += report.duration
    for name, content in report.sections:
        if not name.startswith("Captured stdout"):
            continue
        _summaries.extend(summaries_in(content))


def pytest_terminal_summary(terminalreporter):
    for title, text in _summaries:
        terminalreporter.write_sep("-", title)
        terminalreporter.write_line(text)


def pytest_sessionfinish(session):
    path = session.config.getoption("--record-module-seconds")
    if path and not os.environ.get("PYTEST_XDIST_WORKER"):
        measured = {module: round(total, 1) for module, total in
                    sorted(_module_seconds.items(), key=lambda item: -item[1])}
        Path(path).write_text(json.dumps(measured, indent=1) + "\n")


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
        shown = str(report.longrepr)
        for value in values:
            shown = shown.replace(value, "<SEEDED SECRET>")
        report.longrepr = shown + "\n(the failure report held a seeded secret value, shown as <SEEDED SECRET>)"
    # Sections accumulate over setup, call and teardown: flag the call (or the phase that failed).
    if leaked and (report.when == "call" or report.failed):
        report.outcome = "failed"
        if not isinstance(report.longrepr, str) or "seeded secret value" not in report.longrepr:
            report.longrepr = "a seeded secret value was in this test's captured output (shown as <SEEDED SECRET>)"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test CA of its own (not the sandbox's), for TLS servers on loopback (support.http_servers)."""
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
