"""The docker-mailserver container in the foreground, stoppable by its wrapper's pid.

Run as ``python -m backupmx_sandbox.dms_runner SPEC_FILE`` by the sandbox Supervisor
(``backupmx_sandbox.dmshost``). It removes a container of the same name that an
earlier run left, runs a new one from the image (``podman run --rm``, attached, so
its output lands in the service's log), and writes the ready file once DMS says it
"is up and running". On SIGTERM it removes the container (``podman rm -f``: what a
pod deletion or ``docker compose down`` does) and exits when the container is gone.
Every start is therefore a new container from the image with the same config dir
and volumes: what a Kubernetes rollout does, and the only way DMS applies
``postfix-main.cf``, ``postfix-master.cf`` and ``user-patches.sh`` again.

The spec (JSON): ``{"name", "image", "netns_service", "ready_file", "applied", "args": [...]}``:
``args`` are ``podman run``'s options but the network, which joins the namespace
held by the ``netns_service`` (``backupmx_sandbox.netfwd``) of this sandbox;
``applied`` (what the container runs with) goes into the ready file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from backupmx_sandbox.dms_image import podman_env
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import Sandbox

UP_LINE = "is up and running"


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
    try:
        for line in container.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if UP_LINE in line:
                ready.write_text(spec["applied"] + "\n")
        return container.wait()
    except _StopRequested:
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
        ready.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m backupmx_sandbox.dms_runner SPEC_FILE")
    sys.exit(run(json.loads(Path(sys.argv[1]).read_text())))
