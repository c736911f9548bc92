"""World-state checks shared by the fault matrix and the kill test (the invariants of docs/reliability.md).

The sandbox zone as the fake Cloudflare holds it, which records the tool owns, the
backup MX records present, the authoritative DNS answer, whether Postfix's
whitelist permits a relay address, the provider's enabled flag, and the fakes'
fault switches cleared; I1-I3 after a run and I5 after a run to its end, each as the
lines naming what broke.
"""

from __future__ import annotations

import subprocess

from support.seed import BACKUPS, PRIMARY

from backupmx.dns import check as dnscheck
from backupmx.dns.cloudflare import CloudflareClient
from backupmx.dns.plan import MANAGED_MARKER
from backupmx_sandbox.seed import DOMAIN
from support.mailhost import managed_paths, snapshot
from support.providers import admin, cloudflare_admin

BACKUPMX, ROLLBACK = "deploys/backupmx.py", "deploys/rollback.py"


def zone(world) -> list[dict]:
    return cloudflare_admin(world, "GET", "records")["zones"][DOMAIN]


def owned(record: dict) -> bool:
    return record["type"] == "MX" and MANAGED_MARKER in (record.get("comment") or "")


def backups_in_zone(world) -> set:
    return {(r["priority"], r["content"]) for r in zone(world) if r["type"] == "MX" and r["name"] == DOMAIN
            and (r["priority"], r["content"]) in BACKUPS}


def dns_answer(world) -> set:
    return set(dnscheck.live_mx(DOMAIN, [world["dns"]]))


def publish_backups(world) -> None:
    client = CloudflareClient(world["cloudflare_api_base"], world["cloudflare_token"])
    zone_id = client.zone_id(DOMAIN)
    for _priority, host in sorted(BACKUPS):
        client.create_mx(zone_id, DOMAIN, host, 20, comment=MANAGED_MARKER)


def relay_permitted(world) -> bool:
    cidr = managed_paths(world)["cidr"]
    probe = world["relay_cidrs"][0].split("/")[0]
    result = subprocess.run(["postmap", "-c", world["postfix_config_dir"], "-q", probe, f"cidr:{cidr}"],
                            capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip() == "permit"


def acc_enabled(world) -> bool:
    return admin(world, "state")["domains"][DOMAIN]["enabled"]


def clear_fakes(world) -> None:
    cloudflare_admin(world, "DELETE", "faults")
    admin(world, "faults", {kind: None for kind in ("down", "slow", "server_error", "rate_limit", "malformed")})


def reset_fakes(world) -> None:
    """Both fakes at their seed, no fault switched on."""
    clear_fakes(world)
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")


def broken_i1_to_i3(world, before_zone: list[dict], goal_files) -> list[str]:
    """I1-I3 against ``before_zone`` (the zone before the run) and ``goal_files`` (the mail host's
    proven goal files): one line per invariant that does not hold, [] if all do."""
    broken = []
    after_zone = zone(world)
    if backups_in_zone(world) and (snapshot(world) != goal_files or not relay_permitted(world)):
        broken.append("I1: backup MX in the zone but the whitelist/exemption are not live")
    primary = [[r for r in records if r["type"] == "MX" and (r["priority"], r["content"]) == PRIMARY]
               for records in (before_zone, after_zone)]
    if primary[0] != primary[1]:
        broken.append("I2: the primary MX record changed")
    if [r for r in before_zone if not owned(r)] != [r for r in after_zone if not owned(r)]:
        broken.append("I3: a record the tool does not own changed")
    if len([r for r in after_zone if owned(r)]) > len(BACKUPS):
        broken.append("I3: duplicate managed records")
    return broken


def broken_i5(world, deploy: str, goal_files, provider_checked: bool = True) -> list[str]:
    """I5, once ``deploy`` ran again to its end: after deploys/backupmx.py the backup MX records
    answer in DNS beside the primary and the mail host holds ``goal_files`` with the whitelist live;
    after deploys/rollback.py only the primary answers and (``provider_checked``) the domain is off
    at the provider. One line per goal missed, [] at the goal."""
    broken = []
    if deploy == BACKUPMX:
        if dns_answer(world) != {PRIMARY} | BACKUPS:
            broken.append(f"I5: DNS answers {sorted(dns_answer(world))}")
        if snapshot(world) != goal_files or not relay_permitted(world):
            broken.append("I5: mail host not at the goal")
    else:
        if dns_answer(world) != {PRIMARY}:
            broken.append(f"I5: DNS answers {sorted(dns_answer(world))}")
        if provider_checked and acc_enabled(world):
            broken.append("I5: the domain is still enabled at the provider")
    return broken
