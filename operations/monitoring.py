"""Operations of the monitoring stage (seed changes 4 and 5): push the rendered files, render the docs.

- ``monitoring_files``: the blackbox modules, the alert rules and the scrape jobs
  into ``monitoring.dir`` on a host of the ``monitoring`` group, as one transaction
  (``backupmx.postfix.transaction.transaction_script``, the mail host stage's): every file
  written next to its target and renamed in, then validated in place
  (``blackbox_exporter --config.check``, ``promtool check rules``, ``promtool check
  config``), the previous files put back byte for byte if any check fails, the
  reload commands run only after all pass.
- ``local_file``: a file on the control machine (the rendered runbook and
  architecture page), written atomically, with a diff under ``--dry``.

Both show a unified diff while preparing (the ``--dry`` review) and change nothing
when the files already hold what was rendered.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gevent
from pyinfra import host
from pyinfra.api import (
    DeployError,
    FunctionCommand,
    OperationError,
    operation,
)

from backupmx.core.context import deploy_error, run_value
from backupmx.core.errors import BackupMXError
from backupmx.core.files import write_atomically
from backupmx.core.plan_log import DOCUMENT, note_file_change
from backupmx.core.pyinfra_glue import executing, executing_after_preparing, inventory_host
from backupmx.core.review import fail, show
from backupmx.core.settings import Settings
from backupmx.lifecycle.plan.output import FULL_DOCS_KEY, MARKDOWN_KEY
from backupmx.monitoring import docs
from backupmx.monitoring.checks import check_blackbox_shape
from backupmx.monitoring.rules import render_all
from backupmx.monitoring.settings import BLACKBOX_FILE, RULES_FILE, SCRAPE_FILE, Monitoring, load_monitoring
from backupmx.postfix.apply import transaction_commands
from backupmx.postfix.shell import one_line
from backupmx.postfix.transaction import FileChange, Transaction, unified_diff
from facts.mailhost import MailhostFiles

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def is_monitoring_host(target) -> bool:
    """A host of the inventory's ``monitoring`` group, or any host with ``monitoring`` data."""
    return "monitoring" in (target.groups or []) or target.data.get("monitoring") is not None


def monitoring_settings(target, settings: Settings) -> Monitoring:
    """Stage 0 for one monitoring host: its ``monitoring`` data validated, or one ``DeployError`` line."""
    try:
        return load_monitoring(target.data.get("monitoring"), settings)
    except BackupMXError as error:
        raise deploy_error(error, target.name) from None


def monitoring_paths(monitoring: Monitoring, files: dict[str, str]) -> tuple[str, ...]:
    return tuple(monitoring.path(name) for name in files)


def start_reading_files(monitoring: Monitoring, files: dict[str, str]) -> None:
    """Start reading the current host's monitoring files now, on its own connection, while the
    rest of the run is prepared: stage 6 takes the answer when its turn comes (``plan_monitoring_files``)
    instead of reading only then, at execution, after stage 5."""
    target = inventory_host(host.name)
    if target is None:
        return
    paths = monitoring_paths(monitoring, files)
    reads = run_value("monitoring reads", dict)
    reads[(host.name, paths)] = gevent.spawn(target.get_fact, MailhostFiles, paths=paths)


def plan_monitoring_files(monitoring: Monitoring, files: dict[str, str]) -> tuple[list[FileChange], str | None]:
    """The file changes on the current host, or a problem that stops the operation.

    The files read while preparing (``start_reading_files``) count unless execution comes after
    a preparing pass (a prompt may have waited): safe either way, the transaction refuses
    if a file no longer holds what the plan saw.
    """
    paths = dict(zip(monitoring_paths(monitoring, files), files.values()))
    started = run_value("monitoring reads", dict).pop((host.name, tuple(paths)), None)
    if started is not None and not executing_after_preparing():
        current = started.get()
    else:
        current = host.get_fact(MailhostFiles, paths=tuple(paths))
    changes = []
    for path, text in paths.items():
        entry = current.get(path)
        if entry is None or entry["error"]:
            return [], f"cannot read {path} on {host.name}: {entry['error'] if entry else 'no answer'}"
        if entry["content"] != text:
            changes.append(FileChange(path, entry["content"], text))
    return changes, None


@operation()
def monitoring_files(monitoring: Monitoring, files: dict[str, str]):
    """
    Put the rendered monitoring files into ``monitoring.dir`` on the host, validated.

    + monitoring: the host's ``backupmx.monitoring.Monitoring`` (``load_monitoring``)
    + files: file name -> content (``backupmx.monitoring.render_all``)

    One transaction: each file still holds what was read (or the run stops), the
    new files are renamed in, ``blackbox_exporter --config.check`` and ``promtool
    check rules`` / ``check config`` run on them in place (skipped with
    ``blackbox_check: false`` / ``promtool_check: false``), and on any failure the
    previous files come back byte for byte and nothing is reloaded.

    **Example:**

    .. code:: python

        monitoring_files(
            name="Monitoring: blackbox modules, alert rules, scrape jobs",
            monitoring=load_monitoring(host.data.monitoring, settings),
            files=render_all(settings, monitoring),
        )
    """
    changes, problem = plan_monitoring_files(monitoring, files)
    if problem:
        if not executing():
            raise OperationError(problem)
        yield FunctionCommand(fail, (problem,), {})
        return
    if not changes:
        host.noop(f"monitoring files already as rendered in {monitoring.dir} ({len(files)} files)")
        return
    diff = []
    for change in changes:
        diff.extend(unified_diff(change.path, change.old, change.new))
    summary = "; ".join(f"{'create' if c.old is None else 'change'} {c.path}" for c in changes)
    for change in changes:  # for the --dry plan documents (docs/ci.md)
        note_file_change(host.name, change.path, change.old, change.new, "monitoring_files")
    checks = ", ".join(what for what, _ in monitoring.validations()) or "no validation (disabled in the inventory)"
    show(f"monitoring_files: {summary} (validated with {checks})", diff)
    transaction = Transaction(
        label="monitoring_files",
        files=tuple(changes),
        # Run after the swap and before any reload; a failure restores the old files.
        live_commands=tuple(monitoring.validations()),
        reloads=monitoring.reload,
    )
    yield from transaction_commands(transaction, transaction.label)


def _local_path(path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


@operation()
def local_file(path: str, text: str):
    """
    A file on the control machine (the rendered runbook): written atomically when it differs.

    + path: absolute, or relative to the project
    + text: the wanted content
    """
    target = _local_path(path)
    old = target.read_text(encoding="utf-8") if target.exists() else None
    if old == text:
        host.noop(f"{path} already as rendered")
        return
    note_file_change(host.name, path, old, text, "local_file", DOCUMENT)
    diff = unified_diff(path, old, text)
    title = f"local_file: {'create' if old is None else 'change'} {path} (on the control machine)"
    if bool(host.data.get(FULL_DOCS_KEY)):
        show(title, diff)
    else:
        # A generated page: its rendering is long and not configuration; one line unless asked.
        show(f"{title}: {doc_diff_summary(diff, host.data.get(MARKDOWN_KEY))}", [])
    yield FunctionCommand(write_atomically, (str(target), text), {})


def doc_diff_summary(diff: list[str], plan_markdown: str | None = None) -> str:
    """``+N -M lines`` of a generated page's diff and where its full diff is."""
    body = diff[2:]
    added = sum(1 for line in body if line.startswith("+"))
    removed = sum(1 for line in body if line.startswith("-"))
    where = f"in the plan {plan_markdown}, or " if plan_markdown else ""
    return f"+{added} -{removed} lines (full diff: {where}--data {FULL_DOCS_KEY}=true)"


# --- the stage as a whole -----------------------------------------------------------


@dataclass
class PreparedMonitoring:
    """Stage 6 of one monitoring host, rendered and validated on the control machine, nothing pushed yet."""

    monitoring: Monitoring
    files: dict[str, str]
    checked_here: str
    pages: list[tuple[str, str, str]]  # (title, path, text) of the rendered docs


def prepare_monitoring(settings: Settings) -> PreparedMonitoring | None:
    """Stage 6's read-only part on the current host, if it is a monitoring host: render and validate.

    Touches no host. ``deploys/backupmx.py`` calls it while the mail hosts are being
    assessed, so the local validators run alongside their facts instead of after
    the report. Bad data or files that do not validate raise ``DeployError``.
    """
    if not is_monitoring_host(host):
        return None
    monitoring = monitoring_settings(host, settings)
    try:
        files = render_all(settings, monitoring)
    except BackupMXError as error:
        raise deploy_error(error, host.name) from None
    start_reading_files(monitoring, files)
    # Validate on the control machine too: the monitoring host may not have the
    # validators (a Kubernetes node), and a broken file must not get that far.
    passed, problems = validate_locally(files)
    if problems:
        raise DeployError(f"{host.name}: the rendered monitoring files do not validate: {problems[0]}")
    if not monitoring.validations() and len(passed) < 3:
        raise DeployError(f"{host.name}: monitoring.blackbox_check and promtool_check are off and this machine "
                          "lacks prometheus-blackbox-exporter or promtool: nothing would validate the files; "
                          "install them here (make setup) or turn the checks on")
    pages = []
    if monitoring.runbook or monitoring.architecture:
        inventory_file = next((f"inventory/{group}.py" for group in host.groups
                               if Path(PROJECT_ROOT, "inventory", f"{group}.py").exists()), "inventory/production.py")
        try:
            view = docs.load_inventory(str(PROJECT_ROOT / inventory_file))
        except BackupMXError as error:
            raise DeployError(f"{inventory_file}: {error}") from None
        if monitoring.runbook:
            pages.append((f"Stage 6: render the runbook {monitoring.runbook}", monitoring.runbook,
                          docs.render_runbook(view)))
        if monitoring.architecture:
            pages.append((f"Stage 6: render the architecture page {monitoring.architecture}",
                          monitoring.architecture, docs.render_architecture(view)))
    return PreparedMonitoring(monitoring, files, ", ".join(passed) or "shape only (no validators installed here)",
                              pages)


def monitoring_stage(settings: Settings, prepared: PreparedMonitoring | None = None,
                     after: Callable[[], bool] | None = None) -> str | None:
    """Stage 6 on the current host, if it is a monitoring host: validate, push, render the docs.

    For ``deploys/monitoring.py`` and stage 6 of ``deploys/backupmx.py``. Returns a
    one-line summary for a report row (``None`` on other hosts); bad data or files
    that do not validate raise ``DeployError`` (one line, nothing contacted).
    ``prepared``: what ``prepare_monitoring`` already made for this host. ``after``:
    asked when the stage runs; False skips it (the deploy's stage 5 did not publish
    the records its probes and alerts expect, so they would report drift).
    """
    if prepared is None:
        prepared = prepare_monitoring(settings)
    if prepared is None:
        return None
    monitoring, files = prepared.monitoring, prepared.files
    condition = {"_if": after} if after is not None else {}
    monitoring_files(
        name=f"Stage 6: monitoring files (blackbox modules, alert rules, scrape jobs) in {monitoring.dir}",
        monitoring=monitoring,
        files=files,
        **condition,
    )
    for title, path, text in prepared.pages:
        local_file(name=title, path=path, text=text, **condition)
    return (f"{host.name}: {len(files)} files for {monitoring.dir} (validated here: {prepared.checked_here}; on "
            f"the host: {', '.join(what for what, _ in monitoring.validations()) or 'off'})")


# --- validation on the control machine ----------------------------------------------


BLACKBOX_PROGRAMS = ("prometheus-blackbox-exporter", "blackbox_exporter")  # Debian's name, upstream's


def validate_locally(files: dict[str, str], promtool_bin: str = "promtool", timeout: float = 60.0,
                     cache_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """Run the validators that exist here on ``files`` in a scratch directory.

    Returns (passed checks, problems). A validator that is not installed is neither:
    its absence is reported by the caller, never taken for a pass. Files that passed
    once pass again without running the validators while neither they nor the
    validators' binaries changed (a no-op run renders the same files every time):
    the passes are remembered in ``cache_dir`` (default ``$XDG_CACHE_HOME/backupmx/validated``).
    """
    problems = [f"{BLACKBOX_FILE}: {problem}" for problem in check_blackbox_shape(files[BLACKBOX_FILE])]
    blackbox_bin = next((program for program in BLACKBOX_PROGRAMS if shutil.which(program)), None)
    checks = []  # (what, program, arguments after it, the file it reads)
    if blackbox_bin:
        checks.append((f"{blackbox_bin} --config.check", blackbox_bin, ["--config.check"], BLACKBOX_FILE))
    if shutil.which(promtool_bin):
        checks.append(("promtool check rules", promtool_bin, ["check", "rules"], RULES_FILE))
        checks.append(("promtool check config", promtool_bin, ["check", "config"], SCRAPE_FILE))
    cache_dir = cache_dir or validation_cache()
    remembered = cache_dir / validation_key(files, checks) if cache_dir else None
    if not problems and remembered is not None and remembered.is_file():
        return remembered.read_text().splitlines(), []
    passed = []
    with tempfile.TemporaryDirectory(prefix="backupmx-monitoring-") as scratch:
        for name, text in files.items():
            Path(scratch, name).write_text(text, encoding="utf-8")
        for what, program, arguments, name in checks:
            target = str(Path(scratch, name))
            argv = [program, f"--config.file={target}", *arguments] if program == blackbox_bin else \
                [program, *arguments, target]
            try:
                result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout, cwd=scratch)
            except subprocess.TimeoutExpired:
                problems.append(f"{what}: no answer in {timeout:.0f} s")
                continue
            if result.returncode != 0:
                problems.append(f"{what} (exit {result.returncode}): {one_line(result.stderr + result.stdout)}")
            else:
                passed.append(what)
    if not problems and remembered is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs the next run the checks
            write_atomically(str(remembered), "".join(f"{what}\n" for what in passed))
    return passed, problems


def validation_cache() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or (str(Path.home() / ".cache") if Path.home().is_dir() else "")
    return Path(base, "backupmx", "validated") if base else None


def validation_key(files: dict[str, str], checks: list[tuple]) -> str:
    """The files and the validators that would check them (each binary by its path, size and mtime)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{len(files[name])}\0".encode() + files[name].encode("utf-8", "surrogateescape"))
    for what, program, arguments, name in checks:
        binary = Path(shutil.which(program) or program).resolve()
        stat = binary.stat()
        digest.update(f"{what}\0{binary}\0{stat.st_size}\0{stat.st_mtime_ns}\0{arguments}\0{name}\0".encode())
    return digest.hexdigest()
