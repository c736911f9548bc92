"""The runbook and the architecture page, rendered from the inventory (seed change 5).

    .venv/bin/python -m backupmx.monitoring.docs inventory/production.py           # write docs/runbook.md, docs/architecture.md
    .venv/bin/python -m backupmx.monitoring.docs inventory/production.py --check   # exit 1 if they are not current

Where the pages go comes from the monitoring host's data (``monitoring.runbook``,
``monitoring.architecture``), or ``--runbook``/``--architecture``. Rendering is
pure: hosts, networks, Vault paths and commands come from the validated model,
so the pages say what the deploys will do. ``deploys/monitoring.py`` renders the
same pages as part of a run.
"""

from __future__ import annotations

import argparse
import runpy
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupmx.core.errors import BackupMXError
from backupmx.core.paths import PROJECT_ROOT
from backupmx.core.settings import Settings, load_settings
from backupmx.dns import mtasts
from backupmx.mailhost.model import MailHost, load_mailhost
from backupmx.mailhost.probes import probe_addresses
from backupmx.monitoring import canary_metrics, rules
from backupmx.core.templates import render
from backupmx.monitoring.rules import wanted_mx
from backupmx.monitoring.settings import Monitoring, load_monitoring

QUOTED = "'\"()|*$;&<>"  # characters a remote shell would take for its own
RUNBOOK_TEMPLATE = "runbook.md.j2"
ARCHITECTURE_TEMPLATE = "architecture.md.j2"
# The seed's facts about the provider that no API confirms (docs/gates.md, PROVIDER-NOTES).
SEED = {
    "queue_weeks": 3,
    "retry": "every 15 minutes at first, the interval doubling up to once a week",
    "overage": "10 MB/day",
    "overage_lock": "the domain locks until midnight Pacific time",
    "third_party_overage": "200 messages or 10 MB per rolling 7 days, then the domain is suspended for 48 h "
                           "answering 5xx",
}


@dataclass(frozen=True)
class MailhostView:
    name: str
    ssh: str  # "user@host" to reach it
    mailhost: MailHost
    inside: tuple[tuple[str, str], ...]  # (network, an address in it)
    outside: tuple[str, ...]
    # The weekly canary's Maildir and metrics file, as the inventory's ``canary`` data names
    # them (shown only; deploys/canary.py validates them): "" when not set.
    canary_maildir: str = ""
    canary_metrics_file: str = ""

    def command(self, argv: Sequence[str]) -> str:
        """``argv`` as typed on the control machine: over SSH (the remote shell parses it
        again, hence one quoted argument when it needs quoting), in the container for
        docker-mailserver."""
        remote = shlex.join(self.mailhost.in_target(list(argv)))
        if any(character in remote for character in QUOTED):
            plain = not any(character in remote for character in '"$`\\!')
            remote = f'"{remote}"' if plain else shlex.quote(remote)
        return f"ssh {self.ssh} {remote}"

    def postmap(self, address: str) -> str:
        return self.command(self.mailhost.postmap_query(address)[len(self.mailhost.in_target([])):])

    @property
    def mail_log(self) -> str:
        # docker-mailserver logs to /var/log/mail/mail.log in the container; Debian to /var/log/mail.log.
        return "/var/log/mail/mail.log" if self.mailhost.is_docker else "/var/log/mail.log"


@dataclass(frozen=True)
class MonitoringView:
    name: str
    monitoring: Monitoring


@dataclass(frozen=True)
class InventoryView:
    path: str  # as typed in commands, e.g. inventory/production.py
    settings: Settings
    mailhosts: tuple[MailhostView, ...]
    monitoring: tuple[MonitoringView, ...]


def mailhost_view(name: str, data: Mapping[str, Any], settings: Settings) -> MailhostView:
    mailhost = load_mailhost(data.get("mailhost"))
    probes = probe_addresses(settings.relay_cidrs)
    user = data.get("ssh_user")
    target = data.get("ssh_hostname") or name
    ssh = f"{user}@{target}" if user else str(target)
    if data.get("ssh_port"):
        ssh = f"-p {data['ssh_port']} {ssh}"
    canary = data.get("canary") if isinstance(data.get("canary"), Mapping) else {}
    return MailhostView(name, ssh, mailhost, tuple((str(net), address) for net, address in probes.inside),
                        tuple(probes.outside), str(canary.get("maildir") or ""), str(canary.get("metrics_file") or ""))


def inventory_name(path: str) -> str:
    candidate = Path(path)
    try:
        return str(candidate.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(candidate)


def load_inventory(path: str) -> InventoryView:
    """Read a pyinfra inventory file the way pyinfra does (module-level groups of (name, data))."""
    groups = runpy.run_path(path)
    hosts: dict[str, tuple[dict, list[str]]] = {}
    for group, entries in groups.items():
        if group.startswith("_") or not isinstance(entries, (list, tuple)):
            continue
        for entry in entries:
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Mapping):
                name, data = entry
                known = hosts.setdefault(name, ({}, []))
                known[0].update(data)
                known[1].append(group)
    if not hosts:
        raise BackupMXError(f"{path}: no hosts with data found")
    settings = load_settings(next(iter(hosts.values()))[0])
    mailhosts, monitors = [], []
    for name, (data, member_of) in hosts.items():
        if "mailhosts" in member_of or data.get("mailhost") is not None:
            mailhosts.append(mailhost_view(name, data, settings))
        if "monitoring" in member_of or data.get("monitoring") is not None:
            monitors.append(MonitoringView(name, load_monitoring(data.get("monitoring"), settings)))
    return InventoryView(inventory_name(path), settings, tuple(mailhosts), tuple(monitors))


def _context(view: InventoryView) -> dict[str, Any]:
    settings = view.settings
    domains = []
    for domain in settings.domains:
        hosts = mtasts.mx_hosts(domain, settings.backup_mx)
        testing = mtasts.policy_for(domain, settings.backup_mx, mode="testing")
        enforce = mtasts.policy_for(domain, settings.backup_mx, mode="enforce")
        domains.append({
            "domain": domain,
            "records": wanted_mx(domain, settings),
            "mx_hosts": hosts,
            "policy_testing": testing,
            "policy_enforce": enforce,
            "txt_testing": mtasts.txt_record(testing),
            "txt_enforce": mtasts.txt_record(enforce),
        })
    ledger = settings.gate_ledger
    return {
        "inv": view.path,
        "settings": settings,
        "backup": settings.backup_mx,
        "provider": settings.provider,
        "vault": settings.vault,
        "cidrs": [str(net) for net in settings.relay_cidrs],
        "domains": domains,
        "first": domains[0],
        "mailhosts": view.mailhosts,
        # Relay scoring external_relay on any mail host changes what relayed mail shows.
        "external_relay": any(m.mailhost.relay_scoring == "external_relay" for m in view.mailhosts),
        "monitoring": view.monitoring,
        "overage": ledger.overage,
        "ledger_cidrs": ledger.relay_cidrs,
        "dns_servers": list(settings.dns_servers),
        "seed": SEED,
        "m": rules,
        "canary": canary_metrics,
        # One canary per domain and backup MX host and run; Roller Network counts each (PROVIDER-NOTES).
        "canary_messages": len(settings.domains) * len(settings.backup_mx.hosts),
        "crlf": lambda text: text.replace("\r\n", "\n"),
    }


def render_runbook(view: InventoryView) -> str:
    return render(RUNBOOK_TEMPLATE, **_context(view))


def render_architecture(view: InventoryView) -> str:
    return render(ARCHITECTURE_TEMPLATE, **_context(view))


def _output(given: str | None, view: InventoryView, key: str) -> Path | None:
    path = given or next((getattr(m.monitoring, key) for m in view.monitoring if getattr(m.monitoring, key)), None)
    if path is None:
        return None
    candidate = Path(path)
    return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backupmx.monitoring.docs", description=__doc__.splitlines()[0])
    parser.add_argument("inventory", help="pyinfra inventory file, e.g. inventory/production.py")
    parser.add_argument("--runbook", help="where to write the runbook (default: monitoring.runbook)")
    parser.add_argument("--architecture", help="where to write the architecture page (default: monitoring.architecture)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is not current")
    args = parser.parse_args(argv)
    try:
        view = load_inventory(args.inventory)
    except BackupMXError as error:
        print(f"backupmx.monitoring.docs: {error}", file=sys.stderr)
        return 2
    stale = []
    for key, given, page in (("runbook", args.runbook, render_runbook),
                               ("architecture", args.architecture, render_architecture)):
        target = _output(given, view, key)
        if target is None:
            print(f"backupmx.monitoring.docs: no {key} path: set monitoring.{key} in the inventory or pass --{key}",
                  file=sys.stderr)
            return 2
        text = page(view)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            print(f"{target}: current")
        elif args.check:
            stale.append(str(target))
            print(f"{target}: NOT current (re-render: python -m backupmx.monitoring.docs {args.inventory})")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"{target}: written")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
