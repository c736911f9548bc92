"""Fault matrix: every external dependency × the stages that use it, with invariants checked.

Each cell injects one fault (a fake's fault switch, a stopped or killed real
daemon, a broken Vault, a mail host file that fails validation), runs one deploy
through the pyinfra CLI, clears the fault, checks the invariants, then runs the
same deploy again without the fault:

* I1 if a backup MX is in the zone, the whitelist and exemption are live on the mail host
  (its files are the proven goal files and ``postmap`` permits a relay address);
* I2 the primary MX record is byte-identical (id, content, priority, ttl, comment, times);
* I3 no record the tool does not own changed (every record but the managed backup MX);
* I4 after a failed validation the previous files are back and Postfix and rspamd answer;
* I5 the re-run without the fault converges to the goal (exit 0, the deploy's end state);
* a failing run exits non-zero with one line naming the failed dependency.

Cells are chosen, not a cartesian product: each dependency is faulted in every
stage that uses it (Vault: stage 1; ACC: gates in stage 2, rollback step 3; SSH
and validation: stages 3-4, rollback step 4; Cloudflare: stage 5, rollback step
1). A dependency is not faulted in a stage that does not call it: the run would
be the unfaulted run. docs/reliability.md lists the cells and why.

``make test`` runs the short form: one cell per fault kind, which together reach every
stage (13 cells); the five cells marked ``sweep`` repeat a fault kind in another stage
and run with ``BACKUPMX_SWEEP=1`` (the long form, all 18).

The matrix (fault × stage → held/broken) is printed once the module's cells have run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest
from support.seed import BACKUPS, PRIMARY

from backupmx.mailhost.model import RSPAMD_BLOCK
from backupmx.postfix.blocks import with_block
from backupmx_sandbox import cli
from backupmx_sandbox.seed import DOMAIN
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import Sandbox
from support.invariants import (
    BACKUPMX,
    ROLLBACK,
    broken_i1_to_i3,
    broken_i5,
    clear_fakes,
    dns_answer,
    owned,
    publish_backups,
    zone,
)
from support.mailhost import leftovers, managed_paths, services_answer, snapshot
from support.providers import (
    admin,
    cloudflare_admin,
    cloudflare_faults,
    output,
    pyinfra,
    sandbox_data,
    secret_values,
)
from support.summaries import summary

RECIPIENT = f"faults-{os.getpid()}@{DOMAIN}"
# Fault-run-only --data (filled in from the world when the cell runs; the re-run goes without):
SHORT_CF_TIMEOUT = "cloudflare=<read_timeout 1>"  # a 1 s read timeout, so a timeout costs 1 s
ACC_ONE_RETRY = "provider=<retries 1>"  # one retry, so a dead ACC costs seconds, not its full backoff
PLACEHOLDERS = {
    SHORT_CF_TIMEOUT: lambda data: "cloudflare=" + json.dumps({**data["cloudflare"], "read_timeout": 1}),
    ACC_ONE_RETRY: lambda data: "provider=" + json.dumps({**data["provider"], "retries": 1}),
}


def cell_args(cell) -> tuple:
    data = sandbox_data()
    return tuple(PLACEHOLDERS[arg](data) if arg in PLACEHOLDERS else arg for arg in cell.args)


def rerun_args(cell) -> tuple:
    args, kept = list(cell.args), []
    for index, arg in enumerate(args):
        if arg in PLACEHOLDERS or (arg == "--data" and index + 1 < len(args) and args[index + 1] in PLACEHOLDERS):
            continue
        kept.append(arg)
    return tuple(kept)


# --- faults ----------------------------------------------------------------------------------


def cf_fault(**spec) -> Callable:
    def setup(world, ctx):
        cloudflare_faults(world, **spec)

    return setup


def acc_fault(**spec) -> Callable:
    def setup(world, ctx):
        admin(world, "faults", spec)

    return setup


def vault_client(world) -> hvac.Client:
    return hvac.Client(url=world["vault_addr"], token=world["vault_token"], timeout=10)


def seal_vault(world, ctx):
    vault_client(world).sys.seal()


def restart_vault(world, ctx):
    # Sealed with no unseal key kept (like dev mode): a restart seeds it again.
    supervisor = Supervisor(Sandbox())
    supervisor.stop("openbao")
    cli.up(Sandbox())


def drop_vault_key(world, ctx):
    client = vault_client(world)
    data = client.secrets.kv.v2.read_secret_version(path="viktor", mount_point="secret",
                                                    raise_on_deleted_version=True)["data"]["data"]
    ctx["vault_data"] = data
    client.secrets.kv.v2.create_or_update_secret(
        path="viktor", mount_point="secret", secret={k: v for k, v in data.items() if k != "cloudflare_api_token"})


def restore_vault_key(world, ctx):
    vault_client(world).secrets.kv.v2.create_or_update_secret(path="viktor", mount_point="secret",
                                                              secret=ctx["vault_data"])


def stop_sshd(world, ctx):
    Supervisor(Sandbox()).stop("sshd")


def start_sshd(world, ctx):
    cli.up(Sandbox())


def break_rspamd_settings(world, ctx):
    """A site's own rspamd rule with a syntax error: configtest fails once stage 3 rewrites the file."""
    path = managed_paths(world)["settings.conf"]
    ctx["settings"] = path.read_bytes() if path.exists() else None
    ctx["goal"] = snapshot(world)
    path.write_bytes(b"site_rule {\n  priority = low;\n  ip = \"198.18.0.0/15\";\n  apply { actions { reject = 50; }\n")
    ctx["before"] = snapshot(world)


def unbreak_rspamd_settings(world, ctx):
    ctx["after_run"] = snapshot(world)
    path = managed_paths(world)["settings.conf"]
    if ctx["settings"] is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(ctx["settings"])


def sshd_session_of(pid: int) -> list[int]:
    """The sandbox sshd's session process (a direct child of its pid) that ``pid`` runs under."""
    main = Supervisor(Sandbox()).pid("sshd")
    while pid > 1:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if parent == main:
            return [pid]
        pid = parent
    return []


def hang_rspamd_reload_and_drop_ssh(world, ctx):
    """Stage 3 on a mail host without the exemption, whose rspamd reload hangs; the SSH session is
    killed while it hangs (a connection dropped in the middle of the stage)."""



    path = Path(world["mailhost"]["rspamd_reload"][0])
    ctx["reload"] = path.read_bytes()
    settings = managed_paths(world)["settings.conf"]
    ctx["settings"] = settings.read_bytes()
    # Take only our block out (the whitelist stays): stage 3 has the exemption to add.
    stripped = with_block(settings.read_text(), RSPAMD_BLOCK, None) or ""
    settings.write_text(stripped)
    marker = Path(world["root"]) / "state" / "reload-hanging"
    marker.unlink(missing_ok=True)
    path.write_text(f"#!/bin/sh\necho $$ >{marker}\nexec sleep 60\n")
    path.chmod(0o755)

    def killer():
        deadline = time.monotonic() + 60
        hanging = None
        while hanging is None and time.monotonic() < deadline:
            try:
                hanging = int(marker.read_text().strip())  # the script has written its pid
            except (OSError, ValueError):
                time.sleep(0.05)
        if hanging is not None:
            try:
                ctx["killed"] = sshd_session_of(hanging)
            except (OSError, ValueError):
                ctx["killed"] = []
            for pid in ctx["killed"]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    ctx["killer"] = threading.Thread(target=killer, daemon=True)
    ctx["killer"].start()


def restore_rspamd_reload(world, ctx):
    ctx["killer"].join(timeout=70)
    Path(world["mailhost"]["rspamd_reload"][0]).write_bytes(ctx["reload"])
    # The hanging reload (our own script, by the pid it wrote) may outlive the killed session.
    marker = Path(world["root"]) / "state" / "reload-hanging"
    try:
        os.kill(int(marker.read_text().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    marker.unlink(missing_ok=True)
    settings = managed_paths(world)["settings.conf"]
    if settings.read_bytes() != ctx["settings"]:
        ctx["settings_after_drop"] = settings.read_bytes()


def stop_postfix_with_a_whitelist_line_missing(world, ctx):
    """Stage 3 has a whitelist line to add, and the mail host's Postfix is down (its master stopped
    by the sandbox's service script, by pid): the change validates, the reload cannot."""
    cidr = managed_paths(world)["cidr"]
    lines = cidr.read_text().splitlines(keepends=True)
    cidr.write_text("".join(lines[:-1]))
    subprocess.run(world["failover"]["stop_command"], check=True, timeout=60, capture_output=True)


def start_postfix(world, ctx):
    subprocess.run(world["failover"]["start_command"], check=True, timeout=60, capture_output=True)


# --- cells -------------------------------------------------------------------------------------


@dataclass
class Cell:
    id: str
    dependency: str
    fault: str
    deploy: str
    stage: str
    start: str  # "fresh": no backup MX in the zone; "live": backups published
    setup: Callable | None = None
    teardown: Callable | None = None
    args: tuple = ()
    env: dict | None = None
    # The run must exit non-zero with one line matching this; None: it must succeed (recovered).
    names: str | None = None
    may_recover: bool = False  # either outcome is fine (e.g. a timeout the client can recover from)
    exit_code: int | None = None  # the exact non-zero exit wanted, when it means something
    i4: bool = False  # a validation cell: previous files back, both daemons answer
    note: str = ""  # printed under the matrix
    sweep: bool = False  # the long form only (BACKUPMX_SWEEP=1): the short form has its fault and stage already
    ctx: dict = field(default_factory=dict)


def _cells() -> list[Cell]:
    return [
        Cell("vault-sealed-b", "Vault", "sealed", BACKUPMX, "1 secrets", "fresh", seal_vault, restart_vault,
             names=r"Vault .*sealed"),
        Cell("vault-sealed-r", "Vault", "sealed", ROLLBACK, "R1 remove records", "live", seal_vault, restart_vault,
             args=("--limit", "controller"), names=r"Vault .*sealed", sweep=True),
        Cell("vault-token-b", "Vault", "wrong token", BACKUPMX, "1 secrets", "fresh",
             env={**os.environ, "VAULT_TOKEN": "s.not-the-token", "HOME": "/nonexistent"},
             names=r"Vault .*permission denied"),
        Cell("vault-key-b", "Vault", "missing key", BACKUPMX, "1 secrets", "fresh", drop_vault_key, restore_vault_key,
             names=r"Vault .*has no key 'cloudflare_api_token'"),
        Cell("acc-down-b", "ACC API", "down", BACKUPMX, "2 gates", "fresh", acc_fault(down=True), None,
             args=("--data", ACC_ONE_RETRY), names=r"(?i)(acc|api\.php).*(no answer|connection)", sweep=True),
        Cell("acc-5xx-b", "ACC API", "5xx", BACKUPMX, "2 gates", "fresh",
             acc_fault(server_error={"count": None, "status": 503}), None, args=("--data", ACC_ONE_RETRY), names=r"(?i)(acc|api\.php).*50[0-9]"),
        Cell("acc-down-r", "ACC API", "down", ROLLBACK, "R3 disable domain", "live", acc_fault(down=True), None,
             args=("--limit", "controller", "--data", ACC_ONE_RETRY),
             names=r"finish by hand what the warn row\(s\) say \(exit 2\): disable viktorbarzin.me at rollernet",
             exit_code=2),
        Cell("ssh-refused-b", "SSH", "connection refused", BACKUPMX, "3-4 mail host", "fresh", stop_sshd, start_sshd,
             names=r"(?i)(could not connect|refused).*", sweep=True),
        Cell("ssh-refused-r", "SSH", "connection refused", ROLLBACK, "R4 revert mail host", "live", stop_sshd,
             start_sshd, args=("--data", "revert_mailhost=true"), names=r"(?i)(could not connect|not reached)"),
        Cell("ssh-drop-b", "SSH", "dropped mid-stage", BACKUPMX, "3-4 mail host", "fresh",
             hang_rspamd_reload_and_drop_ssh, restore_rspamd_reload,
             names=r"SSH connection to sandbox-mailhost lost during rspamd_exemption"),
        Cell("postfix-down-b", "Postfix", "daemon down (reload fails)", BACKUPMX, "3-4 mail host", "fresh",
             stop_postfix_with_a_whitelist_line_missing, start_postfix,
             names=r"passed validation and are in place, but .*postfix.* reload failed"),
        Cell("rspamd-invalid-b", "rspamd", "configtest fails", BACKUPMX, "3-4 mail host", "fresh",
             break_rspamd_settings, unbreak_rspamd_settings, names=r"rspamadm configtest fails", i4=True),
        Cell("cf-429-b", "Cloudflare", "429 + Retry-After", BACKUPMX, "5 DNS", "fresh",
             cf_fault(rate_limit={"count": None, "retry_after": 1, "methods": ["POST"]}), None,
             names=r"(?i)POST \S*/dns_records.*(429|rate)"),
        Cell("cf-5xx-b", "Cloudflare", "5xx", BACKUPMX, "5 DNS", "fresh",
             cf_fault(server_error={"count": None, "status": 502, "methods": ["POST"]}), None,
             names=r"POST \S*/dns_records"),
        Cell("cf-timeout-b", "Cloudflare", "timeout", BACKUPMX, "5 DNS", "fresh",
             cf_fault(slow={"count": 1, "seconds": 2.5, "methods": ["POST"]}), None, args=("--data", SHORT_CF_TIMEOUT),
             names=r"POST \S*/dns_records", may_recover=True),
        Cell("cf-drop-b", "Cloudflare", "dropped after write", BACKUPMX, "5 DNS", "fresh",
             cf_fault(after_write={"count": 1, "mode": "drop", "methods": ["POST"]}), None, names=None, sweep=True),
        Cell("cf-5xx-r", "Cloudflare", "5xx", ROLLBACK, "R1 remove records", "live",
             cf_fault(server_error={"count": None, "status": 502, "methods": ["DELETE"]}), None,
             args=("--limit", "controller"), names=r"DELETE \S*/dns_records", sweep=True),
        Cell("cf-drop-r", "Cloudflare", "dropped after write", ROLLBACK, "R1 remove records", "live",
             cf_fault(after_write={"count": 1, "mode": "drop", "methods": ["DELETE"]}), None,
             args=("--limit", "controller"), names=None),
    ]


@dataclass
class Outcome:
    cell: Cell
    broken: list[str]
    seconds: float

    @property
    def status(self) -> str:
        return "broken" if self.broken else "held"


def matrix_lines(outcomes: list[Outcome]) -> list[str]:
    """The matrix, fault x stage -> held/broken ("-": the dependency is not used there), and its notes."""
    stages, faults = [], []
    for outcome in outcomes:
        cell = outcome.cell
        if (cell.deploy, cell.stage) not in stages:
            stages.append((cell.deploy, cell.stage))
        if (cell.dependency, cell.fault) not in faults:
            faults.append((cell.dependency, cell.fault))
    header = ["fault \\ stage"] + [f"{Path(deploy).stem}:{stage}" for deploy, stage in stages]
    rows = []
    for dependency, fault in faults:
        row = [f"{dependency}: {fault}"]
        for deploy, stage in stages:
            found = [o.status for o in outcomes
                     if (o.cell.dependency, o.cell.fault, o.cell.deploy, o.cell.stage) == (dependency, fault, deploy, stage)]
            row.append(found[0] if found else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths)) for row in [header, *rows]]
    lines.append(f"{len(outcomes)} cells, {sum(o.seconds for o in outcomes):.0f} s")
    for outcome in outcomes:
        if outcome.broken:
            lines.append(f"  {outcome.cell.id}: {'; '.join(outcome.broken)}")
        if outcome.cell.note:
            lines.append(f"  note {outcome.cell.id}: {outcome.cell.note}")
    return lines


@pytest.fixture(scope="module")
def matrix():
    """The outcome of each cell that ran; printed as the matrix once the module's cells are done."""
    outcomes: list[Outcome] = []
    yield outcomes
    if outcomes:
        summary("fault matrix (held: every invariant held and the re-run converged; - : dependency not used there)",
                matrix_lines(outcomes))


@pytest.fixture(scope="module")
def goal(world):
    """The goal state once (mail host proven live); each cell starts from it, its zone reset."""
    for name in ("sshd", "openbao"):
        if Supervisor(Sandbox()).pid(name) is None:
            cli.up(Sandbox())
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    result = pyinfra(BACKUPMX)
    assert result.returncode == 0, output(result)
    files = snapshot(world)
    yield files
    clear_fakes(world)
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")


def prepare(world, cell: Cell, goal_files) -> None:
    clear_fakes(world)
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    if snapshot(world) != goal_files:  # a cell before left the mail host elsewhere: back to the goal
        result = pyinfra(BACKUPMX)
        assert result.returncode == 0, output(result)
        cloudflare_admin(world, "POST", "reset")
    if cell.start == "live":
        publish_backups(world)
        assert dns_answer(world) == {PRIMARY} | BACKUPS


def check(world, cell: Cell, result, before_zone: list[dict], goal_files) -> list[str]:
    text = output(result)
    broken = broken_i1_to_i3(world, before_zone, goal_files)
    # I4
    if cell.i4:
        if cell.ctx.get("after_run") != cell.ctx.get("before"):
            broken.append("I4: the previous files are not back")
        try:
            services_answer(world, RECIPIENT)
        except AssertionError as error:
            broken.append(f"I4: a daemon does not answer ({error})")
    # A transaction that ended (validated, failed or restored) leaves no staged or set-aside file;
    # one killed with its SSH session may, and the next transaction clears them (checked in I5).
    if leftovers(world) and cell.id != "ssh-drop-b":
        broken.append(f"left behind: {', '.join(map(str, leftovers(world)))}")
    # Exit and the one line naming the dependency.
    if "Traceback" in text:
        broken.append("traceback in the output")
    if cell.names is None and not cell.may_recover:
        if result.returncode != 0:
            broken.append(f"exit {result.returncode}: expected the run to recover")
    elif result.returncode != 0 or not cell.may_recover:
        if result.returncode == 0:
            broken.append("exit 0 despite the fault")
        elif cell.exit_code is not None and result.returncode != cell.exit_code:
            broken.append(f"exit {result.returncode}, not {cell.exit_code}")
        if not [line for line in text.splitlines() if re.search(cell.names, line)]:
            broken.append(f"no line names the dependency (/{cell.names}/)")
    leaked = [value for value in secret_values(world) if value in text]
    if leaked:
        broken.append("a secret value is in the output")
    return broken


def converge(world, cell: Cell, goal_files) -> list[str]:
    """I5: the same deploy again, without the fault, reaches the goal."""
    args = rerun_args(cell)
    result = pyinfra(cell.deploy, *args)
    broken = [f"I5: left behind after the re-run: {', '.join(map(str, leftovers(world)))}"] if leftovers(world) else []
    if result.returncode != 0:
        broken.append(f"I5: re-run exit {result.returncode}: "
                      + next((line for line in output(result).splitlines() if "error" in line.lower()), ""))
    broken += broken_i5(world, cell.deploy, goal_files)
    if len([r for r in zone(world) if owned(r)]) > len(BACKUPS):
        broken.append("I5: duplicate managed records")
    return broken


@pytest.mark.parametrize("cell", [pytest.param(cell, id=cell.id, marks=[pytest.mark.sweep] if cell.sweep else [])
                                  for cell in _cells()])
def test_fault_cell(world, goal, matrix, cell: Cell):
    started = time.monotonic()
    prepare(world, cell, goal)
    before_zone = zone(world)
    if cell.setup:
        cell.setup(world, cell.ctx)
    try:
        result = pyinfra(cell.deploy, *cell_args(cell), env=cell.env, timeout=180)
    finally:
        if cell.teardown:
            cell.teardown(world, cell.ctx)
        clear_fakes(world)
    broken = check(world, cell, result, before_zone, goal)
    # Documented (docs/rollback.md): with the ACC down the provider step warns with the manual steps, exit 2.
    if cell.id == "acc-down-r" and "open the mail domain viktorbarzin.me and disable it" not in result.stdout:
        broken.append("no warn row with the manual steps")
    if cell.id == "ssh-drop-b" and not cell.ctx.get("killed"):
        broken.append("the SSH session was never dropped (the reload did not start)")
    broken += converge(world, cell, goal)
    matrix.append(Outcome(cell, broken, time.monotonic() - started))
    assert not broken, f"{cell.id}: " + "; ".join(broken) + "\n" + output(result)[-3000:]


def test_each_cell_has_its_own_slot_in_the_matrix():
    """Two cells on one (dependency, fault, deploy, stage) would show as one: the second hidden."""
    cells = _cells()
    assert len({cell.id for cell in cells}) == len(cells)
    table = matrix_lines([Outcome(cell, [], 0.0) for cell in cells])
    assert sum(line.split().count("held") for line in table) == len(cells)


def test_the_short_form_has_every_fault_and_every_stage():
    """Without BACKUPMX_SWEEP the matrix runs one cell per fault kind, which together reach every stage."""
    cells = _cells()
    short = [cell for cell in cells if not cell.sweep]
    assert {(c.dependency, c.fault) for c in short} == {(c.dependency, c.fault) for c in cells}
    assert {(c.deploy, c.stage) for c in short} == {(c.deploy, c.stage) for c in cells}
    assert len({(c.dependency, c.fault) for c in short}) == len(short)
