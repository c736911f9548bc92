"""World-state checks shared by the fault matrix and the kill test (the invariants of docs/reliability.md).

The sandbox zone as the fake Cloudflare holds it, which records the tool owns, the
backup MX records present, the authoritative DNS answer, whether Postfix's
whitelist permits a relay address, the provider's enabled flag, and the fakes'
fault switches cleared.
"""

from __future__ import annotations

import subprocess

from support.seed import BACKUPS

from backupmx.dns import check as dnscheck
from backupmx.dns.cloudflare import CloudflareClient
from backupmx.dns.plan import MANAGED_MARKER
from backupmx_sandbox.seed import DOMAIN
from support.mailhost import managed_paths
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
