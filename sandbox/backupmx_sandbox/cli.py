"""``backupmx-sandbox up [--primary native|docker-mailserver]|down|status|restart``: the local world
every deploy and test runs against.

``backupmx-sandbox layer [NAME on|off|status]``: switch one layer of the primary
(``backupmx_sandbox.layers``); ``layer`` alone lists them.

``backupmx-sandbox primary``: which mail host runs, and how it differs from a production one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from backupmx_sandbox import components, layers, seed
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import PRIMARY_FLAVOURS, Sandbox, write_private_json


def up(sandbox: Sandbox, primary: str | None = None) -> dict:
    """Start every part not running yet; ``primary`` switches the mail host's flavour (only while it is down)."""
    supervisor = Supervisor(sandbox)
    if primary is not None and primary != sandbox.primary:
        running = [name for name in components.service_names(sandbox) if supervisor.pid(name)]
        if running:
            raise RuntimeError(f"this sandbox runs the {sandbox.primary} primary ({', '.join(running)}); "
                               f"`backupmx-sandbox down` first")
        sandbox.choose_primary(primary)
    # Ports chosen before the machine-wide registry (or taken by another world) move while
    # nothing of this world runs (backupmx_sandbox.ports).
    sandbox.reserve_ports(running=any(supervisor.pid(name) for name in supervisor.known()))
    world: dict = {
        "root": str(sandbox.root),
        "primary_mx": {"host": seed.PRIMARY_MX, "priority": seed.PRIMARY_PRIORITY},
        "backup_priority": seed.BACKUP_PRIORITY,
    }
    for component in components.parts(sandbox):
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
    switches = layers.switches_for(Sandbox())
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


def describe_primary(sandbox: Sandbox) -> int:
    """The primary of the last ``up`` (world.json): its flavour, container and image, and every
    difference from a production one."""
    path = sandbox.root / "world.json"
    if not path.exists():
        print(f"backupmx-sandbox primary: no world in {sandbox.root}; run `backupmx-sandbox up` first", file=sys.stderr)
        return 1
    primary = json.loads(path.read_text())["primary"]
    print(f"primary: {primary['flavour']}")
    for key in ("container", "image", "config_dir", "mail_log"):
        if primary.get(key):
            print(f"{key}: {primary[key]}")
    if primary.get("exec"):
        print(f"exec: {' '.join(primary['exec'])} COMMAND...")
        print(f"recreate: {' '.join(primary['recreate'])}")
    for what, here, why in primary.get("differences", []):
        print(f"- {what}: {here} (why: {why})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["layer"]:
        return layer_main(argv[1:])
    parser = argparse.ArgumentParser(prog="backupmx-sandbox", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "restart", "layer", "primary"])
    parser.add_argument("services", nargs="*", help="with restart: only these services")
    parser.add_argument("--primary", choices=PRIMARY_FLAVOURS,
                        help="with up: the mail host as native Postfix + rspamd (the default) or the real "
                             "docker-mailserver container (built once, then cached)")
    args = parser.parse_args(argv)
    sandbox = Sandbox()
    started = time.monotonic()
    try:
        if args.command == "up":
            up(sandbox, args.primary)
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
        if args.command == "primary":
            return describe_primary(sandbox)
        report = status(sandbox)
        print(f"primary: {sandbox.primary}")
        for name, pid in report.items():
            print(f"{name:16} {'running, pid ' + str(pid) if pid else 'stopped'}")
        return 0 if all(report.values()) else 3
    except (RuntimeError, ValueError) as error:
        hint = "; `backupmx-sandbox down` stops what did start" if args.command in ("up", "restart") else ""
        print(f"backupmx-sandbox {args.command}: {error}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
