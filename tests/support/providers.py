"""The sandbox's fakes and the pyinfra CLI, as most world tests drive them.

The sandbox inventory's settings and secrets, the fake relay provider's and the fake
Cloudflare's admin APIs (state, request logs, faults), pyinfra runs of a deploy file, and
the report rows of their output.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings, load_settings
from backupmx_sandbox.world import Sandbox

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
ACC_WRITES = {"domain_set", "hold_set", "usertable_set_default", "queue_flush"}
CF_WRITES = {"POST", "PATCH", "PUT", "DELETE"}


def sandbox_data() -> dict:
    """A deep copy of ``inventory/sandbox.py``'s settings (it reads .sandbox/world.json)."""
    spec = importlib.util.spec_from_file_location("sandbox_inventory", PROJECT_ROOT / "inventory" / "sandbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return copy.deepcopy(module._settings)


def sandbox_settings(**changes) -> Settings:
    data = sandbox_data()
    data.update(copy.deepcopy(changes))
    return load_settings(data)


def secrets_for(settings: Settings) -> SecretStore:
    return SecretStore(settings.vault)


def admin(world, name: str, payload=None):
    """The fake ACC's test-only endpoints (GET without payload, POST with one)."""
    url = f"{world['acc_admin']}/{name}"
    if payload is None:
        response = requests.get(url, timeout=10)
    else:
        response = requests.post(url, json=payload, timeout=10)
    response.raise_for_status()
    return response.json()


def relayed_ids(world) -> set[str]:
    """Every message the fake relays ever took (queued, delivered or bounced), by id.

    Compare two of these to see what one test sent: the whole queue is no snapshot,
    since an earlier test's late messages move from queued to delivered meanwhile.
    """
    report = admin(world, "queue")
    return {entry["id"] for kind in ("queued", "delivered", "bounced") for entry in report[kind]}


def acc_requests(world) -> list[dict]:
    return admin(world, "requests")


def acc_writes(world) -> list[dict]:
    return [entry for entry in acc_requests(world) if entry.get("action") in ACC_WRITES]


def cloudflare_admin(world, method: str, name: str, payload=None):
    """The fake Cloudflare's test-only endpoints (``payload``: a JSON body)."""
    response = requests.request(method, f"{world['cloudflare_admin']}/{name}", json=payload, timeout=10)
    response.raise_for_status()
    return response.json() if response.content else None


def cloudflare_faults(world, **settings) -> None:
    """Switch the fake Cloudflare's faults (docs/reliability.md); a reset clears them."""
    cloudflare_admin(world, "POST", "faults", settings)


def cloudflare_requests(world) -> list[dict]:
    """The fake Cloudflare's request log, oldest first."""
    return cloudflare_admin(world, "GET", "requests")["requests"]


def clear_cloudflare_requests(world) -> None:
    cloudflare_admin(world, "DELETE", "requests")


def cloudflare_writes(world) -> list[dict]:
    """The API writes in the fake Cloudflare's request log (not the test-only endpoints)."""
    return [entry for entry in cloudflare_requests(world)
            if entry["method"] in CF_WRITES and "/client/v4/" in entry["path"]]


def secret_values(world) -> list[str]:
    values = json.loads((Path(world["root"]) / "secrets.json").read_text())
    return [value for value in values.values() if isinstance(value, str) and len(value) >= 8]


def dead_port() -> int:
    """A loopback port nothing listens on (what a stopped daemon looks like to a client): one the
    session's world reserved and never binds, so no other world or outgoing connection takes it."""
    return Sandbox().port("tests.dead")


def pyinfra_argv(deploy: str, *args: str, yes: bool = True, dry: bool = False,
                 inventory: str | Path = "inventory/sandbox.py") -> list[str]:
    """The pyinfra command line; ``dry``: a ``--dry`` review, without ``-y`` (with it pyinfra shows no diff)."""
    return [PYINFRA, *(["-y"] if yes and not dry else []), str(inventory), deploy, *args, *(["--dry"] if dry else [])]


def pyinfra(deploy: str, *args: str, env: dict | None = None, yes: bool = True, dry: bool = False,
            inventory: str | Path = "inventory/sandbox.py", timeout: float = 300) -> subprocess.CompletedProcess:
    """The pyinfra CLI on ``deploy``, run to its end from the project root (see ``pyinfra_argv``)."""
    return subprocess.run(pyinfra_argv(deploy, *args, yes=yes, dry=dry, inventory=inventory), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                          check=False)


def start_pyinfra(deploy: str, *args: str, yes: bool = True, dry: bool = False,
                  inventory: str | Path = "inventory/sandbox.py", stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """The pyinfra CLI on ``deploy``, started and left running (text pipes; ``stderr=subprocess.STDOUT`` merges)."""
    return subprocess.Popen(pyinfra_argv(deploy, *args, yes=yes, dry=dry, inventory=inventory), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, stdin=subprocess.DEVNULL)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def has_line(text: str, line: str) -> bool:
    """``line`` is one of ``text``'s lines, surrounding blanks aside (not just a part of one)."""
    return line in (candidate.strip() for candidate in text.splitlines())


@dataclass(frozen=True)
class ReportRow:
    stage: str
    check: str
    status: str
    evidence: str


def report_rows(text: str) -> list[ReportRow]:
    """The rows of every backupmx report in ``text`` (the gate report, the rollback and drift summaries),
    cut at the columns of its header line; a row's ``next:`` line is not a row."""
    rows = []
    lines = text.splitlines()
    for index, header in enumerate(lines):
        if not re.fullmatch(r"  stage +check +status +evidence", header):
            continue
        check_at, status_at, evidence_at = (header.index(word) for word in ("check", "status", "evidence"))
        for line in lines[index + 1:]:
            if not line.startswith("  ") or line.startswith("  =>"):
                break
            stage = line[:check_at].strip()
            if stage:
                rows.append(ReportRow(stage, line[check_at:status_at].strip(), line[status_at:evidence_at].strip(),
                                      line[evidence_at:]))
    return rows


def report_row(text: str, stage: str, check: str = "") -> ReportRow:
    """The one report row of ``stage`` whose check starts with ``check``."""
    found = [row for row in report_rows(text) if row.stage == stage and row.check.startswith(check)]
    assert len(found) == 1, f"{len(found)} rows for stage {stage} {check!r} in:\n{text}"
    return found[0]


def provider_data(world, **changes) -> str:
    """``--data provider=...`` JSON: the sandbox profile with ``changes``."""
    profile = {"name": "rollernet", "backend": "api", "api_base": world["acc_api_base"], "user": world["acc_user"]}
    profile.update(changes)
    return "provider=" + json.dumps(profile)
