"""The docker-mailserver container in the foreground, stoppable by its wrapper's pid.

Run as ``python -m backupmx_sandbox.dms_runner SPEC_FILE`` by the sandbox Supervisor
(``backupmx_sandbox.dmshost``). It removes a container of the same name that an
earlier run left, runs a new one from the image (``podman run --rm``, attached, so
its output lands in the service's log), and writes the ready file once DMS says it
"is up and running" and every port of ``listening`` is listened on in the container's
network namespace: DMS says so when it has started its daemons, not when they have
bound their ports, and until then the forwarder meets a refused connection (the
client a reset). On SIGTERM it removes the container (``podman rm -f``: what a
pod deletion or ``docker compose down`` does) and exits when the container is gone.
Every start is therefore a new container from the image with the same config dir
and volumes: what a Kubernetes rollout does, and the only way DMS applies
``postfix-main.cf``, ``postfix-master.cf`` and ``user-patches.sh`` again.

The spec (JSON): ``{"name", "image", "netns_service", "ready_file", "applied", "args": [...],
"listening": [port, ...]}``:
``args`` are ``podman run``'s options but the network, which joins the namespace
held by the ``netns_service`` (``backupmx_sandbox.netfwd``) of this sandbox;
``applied`` (what the container runs with) goes into the ready file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from backupmx_sandbox.dms_image import podman_env
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import Sandbox

UP_LINE = "is up and running"
LISTEN_SECONDS = 120.0  # after the up line, for the daemons to bind their ports
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def listening_ports(pid: int) -> set[int]:
    """The TCP ports listened on in the network namespace of ``pid``."""
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def mark_ready_when_listening(ready: Path, applied: str, holder: int, wanted: set[int],
                              stopped: threading.Event) -> None:
    deadline = time.monotonic() + LISTEN_SECONDS
    while not stopped.is_set():
        missing = wanted - listening_ports(holder)
        if not missing:
            ready.write_text(applied + "\n")
            return
        if time.monotonic() > deadline:
            print(f"dms_runner: DMS is up but nothing listens on port(s) {sorted(missing)} after "
                  f"{LISTEN_SECONDS:.0f} s; not ready", flush=True)
            return
        stopped.wait(0.2)


class _StopRequested(Exception):
    pass


def remove(name: str) -> None:
    subprocess.run(["podman", "rm", "-f", "-t", "2", "--ignore", name], env=podman_env(), capture_output=True,
                   timeout=120)


def run(spec: dict) -> int:
    def request_stop(signum, frame):
        raise _StopRequested

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    ready = Path(spec["ready_file"])
    ready.unlink(missing_ok=True)
    holder = Supervisor(Sandbox()).pid(spec["netns_service"])
    if holder is None:
        print(f"dms_runner: the network namespace service {spec['netns_service']} is not running", flush=True)
        return 1
    remove(spec["name"])
    argv = ["podman", "run", "--rm", "--name", spec["name"], f"--network=ns:/proc/{holder}/ns/net",
            *spec["args"], spec["image"]]
    container = subprocess.Popen(argv, env=podman_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True, errors="replace", process_group=0)
    stopped = threading.Event()
    try:
        for line in container.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if UP_LINE in line:
                threading.Thread(target=mark_ready_when_listening, daemon=True,
                                 args=(ready, spec["applied"], holder, set(spec["listening"]), stopped)).start()
        return container.wait()
    except _StopRequested:
        stopped.set()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ready.unlink(missing_ok=True)
        remove(spec["name"])
        try:
            container.wait(timeout=60)
        except subprocess.TimeoutExpired:
            container.kill()
            container.wait()
        return 0
    finally:
        stopped.set()
        ready.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m backupmx_sandbox.dms_runner SPEC_FILE")
    sys.exit(run(json.loads(Path(sys.argv[1]).read_text())))
