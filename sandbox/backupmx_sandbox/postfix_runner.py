"""Postfix in the foreground, stoppable by its wrapper's pid; optionally with a resolver of its own.

Run as ``python -m backupmx_sandbox.postfix_runner CONFIG_DIR [RESOLV_CONF]``.

With ``RESOLV_CONF``, Postfix starts in a mount namespace of its own (``unshare
--mount``) in which that file is bind-mounted over ``/etc/resolv.conf``: master and
everything it spawns (smtpd's reverse lookups and ``reject_*`` checks, postscreen's
dnsblog, policyd-spf) ask the sandbox resolver, and the machine's resolver stays as
it is for everything else. ``postfix reload`` and ``postfix stop`` from outside only
signal master, which keeps its namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backupmx_sandbox.supervisor import group_alive

# unshare execs the shell in the new namespace (same pid, no fork), and the shell
# execs Postfix: start-fg keeps the pid the wrapper waits for. The namespace's mounts
# are made private first, so the bind mount never shows outside it. In a chroot "/" is
# no mount point and cannot be made private (unshare --propagation private fails
# there): then the mount under /etc/resolv.conf must not be shared, or the shell stops.
_WITH_RESOLVER = (
    'mount --make-rprivate / 2>/dev/null'
    ' || ! findmnt -n -o PROPAGATION -T /etc/resolv.conf | grep -q shared'
    ' || { echo "sandbox: cannot keep the resolver mount private" >&2; exit 1; }\n'
    'mount --bind "$0" /etc/resolv.conf && exec "$@"'
)


class _StopRequested(Exception):
    pass


def postfix_argv(config_dir: str, resolv_conf: str | None = None) -> list[str]:
    start_fg = ["/usr/sbin/postfix", "-c", config_dir, "start-fg"]
    if resolv_conf is None:
        return start_fg
    return ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", _WITH_RESOLVER, resolv_conf, *start_fg]


def run_postfix_foreground(config_dir: str, resolv_conf: str | None = None) -> int:
    """Run ``postfix -c DIR start-fg``; on SIGTERM/SIGINT stop all of Postfix, then exit.

    start-fg runs in its own process group, so the supervisor's killpg reaches
    only this wrapper, which then stops Postfix the way Postfix wants to be
    stopped and knows it is over when start-fg (master's parent) exits.
    """

    def request_stop(signum, frame):
        raise _StopRequested

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    start_fg = subprocess.Popen(postfix_argv(config_dir, resolv_conf), process_group=0)
    try:
        return start_fg.wait()
    except _StopRequested:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_postfix(config_dir, start_fg)
        return 0


def _stop_postfix(config_dir: str, start_fg: subprocess.Popen, timeout: float = 8.0) -> None:
    """`postfix stop` (master then kills its own process group); wait until all of it is gone."""
    deadline = time.monotonic() + timeout
    master = _master_pid(config_dir)
    while master is None and start_fg.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # stopped while still starting: wait for master.pid
        master = _master_pid(config_dir)
    subprocess.run(["/usr/sbin/postfix", "-c", config_dir, "stop"], capture_output=True, timeout=30)

    def running() -> bool:
        return start_fg.poll() is None or (master is not None and group_alive(master))

    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    for group in (master, start_fg.pid):
        if group is not None and group_alive(group):
            os.killpg(group, signal.SIGKILL)
    start_fg.wait()


def _master_pid(config_dir: str) -> int | None:
    """The pid of the master running from ``config_dir``, checked against /proc.

    master.pid may be stale and its pid reused; only a live ``master`` process
    whose environment names this config dir (postfix exports MAIL_CONFIG) counts.
    """
    queue = subprocess.run(
        ["/usr/sbin/postconf", "-c", config_dir, "-h", "queue_directory"], capture_output=True, text=True
    ).stdout.strip()
    try:
        pid = int((Path(queue) / "pid" / "master.pid").read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if comm != "master" or f"MAIL_CONFIG={config_dir}".encode() not in environ:
        return None
    return pid


if __name__ == "__main__":
    if len(sys.argv) in (2, 3):
        sys.exit(run_postfix_foreground(*sys.argv[1:]))
    sys.exit("usage: python -m backupmx_sandbox.postfix_runner CONFIG_DIR [RESOLV_CONF]")
