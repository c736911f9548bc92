"""A native Postfix of the sandbox reloaded, and serving with its new configuration.

``postfix reload`` returns once master was signalled. Master logs that it re-read its
configuration, but a postscreen or smtpd started before it keeps accepting connections
until it notices the reload (the status pipe master closed): a client that connects in
that window meets the old postscreen access list or the old restrictions. So the wait is
for both the log line and the exit of every listener that served before the reload.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

RELOADED = " reload -- version "  # what master logs once it re-read its configuration
LISTENERS = ("postscreen", "smtpd")


def postconf_value(config_dir: str, name: str) -> str:
    return subprocess.run(["postconf", "-c", config_dir, "-h", name], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def master_pid(config_dir: str) -> int | None:
    """The pid of this Postfix's master, None when it is not running."""
    try:
        return int(Path(postconf_value(config_dir, "queue_directory"), "pid", "master.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def children(parent: int, names: tuple[str, ...]) -> set[int]:
    """The pids of ``parent``'s children whose command name is one of ``names``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        name = text[text.index("(") + 1:text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        if ppid == parent and name in names:
            found.add(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Not exited (a zombie master has yet to reap counts as exited)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] != "Z"


def reload_and_wait(config_dir: str, log: Path | None = None, timeout: float = 30.0) -> None:
    """``postfix -c config_dir reload``; return once master logged it (in ``log``, by default
    its ``maillog_file``) and the listeners that served before it are gone."""
    log = log or Path(postconf_value(config_dir, "maillog_file"))
    before = log.read_text(errors="replace").count(RELOADED)
    master = master_pid(config_dir)
    old_listeners = children(master, LISTENERS) if master else set()
    subprocess.run(["postfix", "-c", config_dir, "reload"], check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(RELOADED) <= before:
        assert time.monotonic() < deadline, f"the Postfix of {config_dir} did not log its reload in {log}"
        time.sleep(0.05)
    while alive := {pid for pid in old_listeners if running(pid)}:
        assert time.monotonic() < deadline, (f"the Postfix of {config_dir} still serves from before its reload: "
                                             f"{alive}; their last lines in {log}:\n{last_lines(log, alive)}")
        time.sleep(0.05)


def last_lines(log: Path, pids: set[int], count: int = 15) -> str:
    """What the processes ``pids`` logged last: what a listener that does not exit is waiting on."""
    marks = tuple(f"[{pid}]:" for pid in pids)
    lines = [line for line in log.read_text(errors="replace").splitlines() if any(m in line for m in marks)]
    return "\n".join(lines[-count:]) or "(none)"
