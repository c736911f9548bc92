"""The inline transport route a self-hosted relay's rollback adds, and its removal on the way back.

Disabling a domain on a relay (``SelfHostedProvider.set_enabled(domain, False)``)
takes it out of ``relay_domains``; mail already queued for it then needs a route
to the primary, so ``transport_maps = inline:{domain=smtp:[primary]:port}`` is
added first. When the deploy puts the domain back in ``relay_domains``,
``relay_transport`` routes it again and the entry is stale: ``without_routes``
takes it out of main.cf (the whole line when nothing else is left in it).
"""

from __future__ import annotations

from collections.abc import Sequence

from backupmx.postfix.syntax import logical_lines

INLINE = "inline:{"


def route(domain: str, nexthop: str) -> str:
    return f"{domain}=smtp:{nexthop}"


def inline_entries(value: str) -> list[str] | None:
    """The entries of an ``inline:{...}`` value; None for anything else (an operator's own table)."""
    value = value.strip()
    if not value:
        return []
    if not value.startswith(INLINE) or not value.endswith("}"):
        return None
    return [entry.strip() for entry in value[len(INLINE):-1].split(",") if entry.strip()]


def with_route(value: str, domain: str, nexthop: str) -> str | None:
    """``transport_maps`` with the domain's route added; None: nothing to do (there already, or not ours to edit)."""
    entries = inline_entries(value)
    if entries is None or route(domain, nexthop) in entries:
        return None
    return INLINE + ",".join(entries + [route(domain, nexthop)]) + "}"


def without_routes(main_cf: str, domains: Sequence[str], nexthop: str) -> str:
    """main.cf without the rollback's routes for ``domains`` (a line left empty goes)."""
    stale = {route(domain, nexthop) for domain in domains}
    lines = main_cf.splitlines(keepends=True)
    out: list[str] = []
    previous = 0
    for start, end in logical_lines(lines):
        out.extend(lines[previous:start])
        previous = end
        name, _, value = "".join(lines[start:end]).partition("=")
        entries = inline_entries(" ".join(value.split())) if name.strip() == "transport_maps" else None
        if not entries or not stale & set(entries):
            out.extend(lines[start:end])
            continue
        kept = [entry for entry in entries if entry not in stale]
        if kept:
            out.append(f"transport_maps = {INLINE}{','.join(kept)}}}\n")
    out.extend(lines[previous:])
    return "".join(out)
