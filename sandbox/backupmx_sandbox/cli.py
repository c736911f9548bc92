"""``backupmx-sandbox up|down|status|restart``: the local world every deploy and test runs against.

``backupmx-sandbox layer [NAME on|off|status]``: switch one layer of the primary
(``backupmx_sandbox.layers``); ``layer`` alone lists them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from backupmx_sandbox import components, layers, seed
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import Sandbox, write_private_json


def up(sandbox: Sandbox) -> dict:
    supervisor = Supervisor(sandbox)
    # Ports chosen before the machine-wide registry (or taken by another world) move while
    # nothing of this world runs (backupmx_sandbox.ports).
    sandbox.reserve_ports(running=any(supervisor.pid(name) for name in supervisor.known()))
    world: dict = {
        "root": str(sandbox.root),
        "primary_mx": {"host": seed.PRIMARY_MX, "priority": seed.PRIMARY_PRIORITY},
        "backup_priority": seed.BACKUP_PRIORITY,
    }
    for component in components.ORDER:
        for service in component.services(sandbox):
            supervisor.start(service)
        world.update(component.world(sandbox))
    write_private_json(sandbox.root / "world.json", world)
    return world


def down(sandbox: Sandbox) -> list[str]:
    supervisor = Supervisor(sandbox)
    names = list(reversed(components.service_names(sandbox)))
    stray = [name for name in supervisor.known() if name not in names]
    return [name for name in names + stray if supervisor.stop(name)]


def status(sandbox: Sandbox) -> dict[str, object]:
    supervisor = Supervisor(sandbox)
    return {name: supervisor.pid(name) for name in components.service_names(sandbox)}


def layer_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backupmx-sandbox layer",
                                     description="Switch one layer of the sandbox primary (main.cf, then reload).")
    parser.add_argument("name", nargs="?", choices=layers.NAMES)
    parser.add_argument("action", nargs="?", choices=["on", "off", "status"], default="status")
    args = parser.parse_args(argv)
    switches = layers.Switches(Sandbox())
    try:
        if args.name is None or args.action == "status":
            for name, on in switches.status().items():
                if args.name in (None, name):
                    print(f"{name:24} {'on' if on else 'off'}")
            return 0
        changed = switches.switch(args.name, args.action == "on")
    except (OSError, subprocess.CalledProcessError) as error:
        detail = (getattr(error, "stderr", "") or str(error)).strip().splitlines()
        print(f"backupmx-sandbox layer {args.name}: {detail[-1] if detail else error}; "
              "is the sandbox up (`backupmx-sandbox up`)?", file=sys.stderr)
        return 1
    print(f"{args.name}: {args.action}{'' if changed else ' (already)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["layer"]:
        return layer_main(argv[1:])
    parser = argparse.ArgumentParser(prog="backupmx-sandbox", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "restart", "layer"])
    parser.add_argument("services", nargs="*", help="with restart: only these services")
    args = parser.parse_args(argv)
    sandbox = Sandbox()
    started = time.monotonic()
    try:
        if args.command == "up":
            up(sandbox)
            print(f"sandbox up in {time.monotonic() - started:.1f}s; world: {sandbox.root / 'world.json'}")
            return 0
        if args.command == "down":
            stopped = down(sandbox)
            print(f"sandbox down: stopped {', '.join(stopped) if stopped else 'nothing (was not running)'}")
            return 0
        if args.command == "restart":
            supervisor = Supervisor(sandbox)
            for name in args.services or components.service_names(sandbox):
                supervisor.stop(name)
            up(sandbox)
            return 0
        report = status(sandbox)
        for name, pid in report.items():
            print(f"{name:16} {'running, pid ' + str(pid) if pid else 'stopped'}")
        return 0 if all(report.values()) else 3
    except RuntimeError as error:
        hint = "; `backupmx-sandbox down` stops what did start" if args.command in ("up", "restart") else ""
        print(f"backupmx-sandbox {args.command}: {error}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
