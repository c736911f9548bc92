"""The benchmark's sandbox world: bring it up, count requests in the fakes' logs and in Vault.

The benchmarks use a world of their own (``BACKUPMX_SANDBOX_DIR``, by default
``/var/tmp/backupmx-bench``) because they reset it, add zones to it and turn on
an OpenBao audit device: the test suite's ``.sandbox`` is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = "/var/tmp/backupmx-bench"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
SANDBOX_CLI = str(Path(sys.executable).with_name("backupmx-sandbox"))
VAULT_READ_PATH_SUFFIX = "secret/data/"
# What the fakes' rate limit is raised to while benchmarking: every no-op repeat
# would otherwise add up to Cloudflare's 1200 per 5 minutes across runs. Whether one
# run stays under the real limit is reported from the counts, not left to the fake.
BENCH_RATE_LIMIT = {"requests": 1_000_000, "window": 300, "block": 300}


def sandbox_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BACKUPMX_SANDBOX_DIR", DEFAULT_DIR)
    os.environ["BACKUPMX_SANDBOX_DIR"] = env["BACKUPMX_SANDBOX_DIR"]
    return env


def sandbox_up() -> bool:
    """Start the world unless it runs; True if this call started something."""
    env = sandbox_env()
    status = subprocess.run([SANDBOX_CLI, "status"], env=env, check=False, capture_output=True, text=True)
    if status.returncode == 0:
        return False
    up = subprocess.run([SANDBOX_CLI, "up"], env=env, check=False, capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"backupmx-sandbox up failed:\n{up.stdout}{up.stderr}")
    return True


def sandbox_down() -> None:
    subprocess.run([SANDBOX_CLI, "down"], env=sandbox_env(), check=False, capture_output=True, text=True)


def load() -> dict:
    from backupmx_sandbox.world import load_world

    sandbox_env()
    return load_world()


@dataclass
class Counts:
    cloudflare: int = 0
    cloudflare_writes: int = 0
    acc: int = 0
    vault_reads: int = 0
    cloudflare_paths: list[str] = field(default_factory=list)


class Meter:
    """Request counts of one run, from the fake Cloudflare's and fake ACC's logs and Vault's audit log."""

    def __init__(self, world: dict):
        self.world = world
        self.cf_admin = world["cloudflare_admin"]
        self.acc_admin = world["acc_admin"]
        self.audit_log = Path(world["root"]) / "vault" / "bench-audit.log"
        self._acc_seen = 0
        self._audit_offset = 0
        self.extra_domains: list[str] = []

    # ---------------------------------------------------------------- set-up
    def enable_vault_audit(self) -> None:
        """A file audit device on the world's OpenBao (declarative: OpenBao refuses it over the API).

        Appends an ``audit "file"`` block to the world's server.hcl and sends SIGHUP to
        the OpenBao process the sandbox started (its pid from the sandbox's supervisor).
        """
        import hvac

        from backupmx_sandbox.supervisor import Supervisor
        from backupmx_sandbox.world import Sandbox

        client = hvac.Client(url=self.world["vault_addr"], token=self.world["vault_token"], timeout=10)
        for device in client.sys.list_enabled_audit_devices()["data"].values():
            path = (device.get("options") or {}).get("file_path")
            if device.get("type") == "file" and path:
                self.audit_log = Path(path)  # one is on already (an earlier bench run): count in it
                return
        config = Path(self.world["root"]) / "vault" / "server.hcl"
        text = config.read_text()
        if str(self.audit_log) not in text:
            config.write_text(text + f'audit "file" "backupmx-bench" {{\n  options {{\n    file_path = "{self.audit_log}"\n'
                                     f'  }}\n}}\n')
        pid = Supervisor(Sandbox()).pid("openbao")
        if pid is None:
            raise SystemExit("the bench world's OpenBao is not running")
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while not self.audit_log.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"OpenBao wrote no audit log to {self.audit_log} after SIGHUP")
            time.sleep(0.1)

    def reset_cloudflare(self) -> None:
        requests.post(f"{self.cf_admin}/reset", timeout=10).raise_for_status()
        self.relax_rate_limit()

    def relax_rate_limit(self) -> None:
        requests.post(f"{self.cf_admin}/faults", json={"limit": BENCH_RATE_LIMIT}, timeout=10).raise_for_status()

    def reset_acc(self) -> None:
        """The ACC back to its seed (domain enabled) plus the benchmark's extra domains."""
        requests.post(f"{self.acc_admin}/reset", timeout=10).raise_for_status()
        self._acc_seen = 0
        for name in self.extra_domains:
            self.add_acc_domain(name)

    def add_acc_domain(self, name: str) -> None:
        requests.post(f"{self.acc_admin}/state", timeout=10, json={
            "domain": name, "mode": "secondary_mx", "enabled": True, "user_table_default": "allow_any",
            "hold": False}).raise_for_status()

    def add_zone(self, name: str, primary: str) -> None:
        """Zone ``name`` in the fake Cloudflare (apex MX to ``primary``, its A record) and in the ACC."""
        records = [
            {"type": "MX", "name": name, "content": primary, "priority": 1, "ttl": 1},
            {"type": "A", "name": primary, "content": "127.0.0.1", "ttl": 1},
        ]
        answer = requests.post(f"{self.cf_admin}/zones", json={"name": name, "records": records}, timeout=10)
        if answer.status_code == 404:
            raise SystemExit("the fake Cloudflare has no POST /_sandbox/zones: restart the bench world "
                             "(backupmx-sandbox restart cloudflare) so it runs the current code")
        answer.raise_for_status()
        if name not in self.extra_domains:
            self.extra_domains.append(name)
        self.add_acc_domain(name)

    # -------------------------------------------------------------- counting
    def start(self) -> None:
        requests.delete(f"{self.cf_admin}/requests", timeout=10).raise_for_status()
        acc = requests.get(f"{self.acc_admin}/requests", timeout=10).json()
        if len(acc) > 600:  # the fake keeps the last 1000: reset it before it wraps
            self.reset_acc()
            acc = []
        self._acc_seen = len(acc)
        self._audit_offset = self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def stop(self) -> Counts:
        cf = requests.get(f"{self.cf_admin}/requests", timeout=10).json()["requests"]
        api = [entry for entry in cf if entry["path"].startswith("/client/v4")]
        acc = requests.get(f"{self.acc_admin}/requests", timeout=10).json()
        counts = Counts(
            cloudflare=len(api),
            cloudflare_writes=sum(entry["method"] != "GET" for entry in api),
            acc=len(acc) - self._acc_seen,
            vault_reads=self._vault_reads(),
            cloudflare_paths=[f"{entry['method']} {entry['path']}" for entry in api],
        )
        return counts

    def _vault_reads(self) -> int:
        """Requests (not responses) reading a KV v2 secret since ``start``; no value is ever looked at."""
        if not self.audit_log.exists():
            return 0
        reads = 0
        with open(self.audit_log, "rb") as handle:
            handle.seek(self._audit_offset)
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                request = entry.get("request") or {}
                if entry.get("type") == "request" and request.get("operation") == "read" \
                        and str(request.get("path", "")).startswith(VAULT_READ_PATH_SUFFIX):
                    reads += 1
        return reads


def run_pyinfra(inventory: str, deploy: str, *args: str, dry: bool = False, env: dict | None = None,
                check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one pyinfra CLI run (the user's command), and its result."""
    command = [PYINFRA, *([] if dry else ["-y"]), inventory, deploy, *args]
    if dry:
        command.append("--dry")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env or sandbox_env(), check=False, capture_output=True, text=True,
                            timeout=600)
    elapsed = time.perf_counter() - started
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise SystemExit(f"{' '.join(command[1:])} failed (exit {result.returncode}):\n{tail}")
    return elapsed, result
