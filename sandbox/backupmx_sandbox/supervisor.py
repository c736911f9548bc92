"""Start and stop the sandbox's processes by pid, never by name.

Each service's pid is kept in ``<root>/run/<name>.pid`` together with its start
time (from /proc), so a recycled pid is never mistaken for ours. Every service
runs in its own session; stopping it signals its whole process group, which is how
a daemon's workers (Postfix's master children, rspamd's workers) go with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from backupmx_sandbox.world import Sandbox, Service


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime), counted after the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[19]


class Supervisor:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self.run_dir = sandbox.dir("run")
        self.log_dir = sandbox.dir("log")

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The live pid of ``name`` if we started it and it still runs."""
        try:
            record = json.loads(self._pidfile(name).read_text())
        except (OSError, ValueError):
            return None
        pid = record["pid"]
        if _start_ticks(pid) != record["start"]:
            return None
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return None if state == "Z" else pid

    def known(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    def start(self, service: Service) -> int:
        """Start ``service`` unless it already runs; wait until it is ready."""
        running = self.pid(service.name)
        if running:
            return running
        log = open(self.log_dir / f"{service.name}.log", "ab")
        env = {**os.environ, **(service.env or {})}
        process = subprocess.Popen(
            service.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=service.cwd,
            env=env,
            start_new_session=True,
        )
        log.close()
        self._pidfile(service.name).write_text(
            json.dumps({"pid": process.pid, "start": _start_ticks(process.pid), "signal": service.stop_signal})
        )
        deadline = time.monotonic() + service.ready_timeout
        while not service.ready():
            if process.poll() is not None:
                raise RuntimeError(
                    f"sandbox service {service.name} exited with {process.returncode}; "
                    f"see {self.log_dir / (service.name + '.log')}"
                )
            if time.monotonic() > deadline:
                self.stop(service.name)
                raise RuntimeError(
                    f"sandbox service {service.name} not ready after {service.ready_timeout:.0f}s; "
                    f"see {self.log_dir / (service.name + '.log')}"
                )
            time.sleep(0.1)
        if service.after_start:
            service.after_start()
        return process.pid

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """Stop ``name``'s process group; True if something was running."""
        pidfile = self._pidfile(name)
        pid = self.pid(name)
        if pid is None:
            pidfile.unlink(missing_ok=True)
            return False
        record = json.loads(pidfile.read_text())
        try:
            os.killpg(pid, record.get("signal", signal.SIGTERM))
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_alive(pid):
            self._reap(pid)
            time.sleep(0.05)
        if group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while group_alive(pid):
                self._reap(pid)
                time.sleep(0.05)
        pidfile.unlink(missing_ok=True)
        return True

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group ``pgid``."""
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
