"""The world settled: no mail of an earlier test still on its way (tests/conftest.py, after each module).

A store-and-forward world keeps working after a test ends: the fake relays retry
what they queued, Postfix retries what it deferred. A later test that compares
the world before and after its own run would see that mail arrive in between.
Settling hands every queue a retry now and waits, bounded, until the queues are
empty; what still waits after that (a hold, a domain switched off) is named in a
warning, so a test that leaks mail is seen without failing the next one.
"""

from __future__ import annotations

import subprocess
import time
import warnings

from support.providers import admin

SETTLE_SECONDS = 60.0


def queued_at_relays(world) -> list[str]:
    """The fake relays' queued messages that are due to be retried (held ones wait by design)."""
    return [entry["id"] for entry in admin(world, "queue")["queued"] if not entry["held"]]


def postfixes(world) -> dict[str, list[str]]:
    """Each Postfix of the world: where it runs (a name) -> the argv prefix of its ``postqueue``."""
    in_mailhost = world.get("primary", {}).get("exec") or []
    found = {"mail host": [*in_mailhost, "postqueue", "-c", world["postfix_config_dir"]]}
    if world.get("selfhosted"):
        found["relay host"] = ["postqueue", "-c", world["selfhosted"]["postfix_config_dir"]]
    return found


def postfix_queue(postqueue: list[str]) -> list[str]:
    listing = subprocess.run([*postqueue, "-j"], capture_output=True, text=True, timeout=30)
    return [line for line in listing.stdout.splitlines() if line.strip()]


def leftovers(world) -> dict[str, int]:
    left = {"fake relays": len(queued_at_relays(world))}
    for where, postqueue in postfixes(world).items():
        left[where] = len(postfix_queue(postqueue))
    return {where: count for where, count in left.items() if count}


def settle(world, timeout: float = SETTLE_SECONDS) -> None:
    admin(world, "flush", {})
    for postqueue in postfixes(world).values():
        subprocess.run([*postqueue, "-f"], capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout
    while (left := leftovers(world)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        warnings.warn(f"the world did not settle in {timeout:.0f} s: still queued {left}")
