"""The one way an MX plan reaches a zone: stage 5, the rollback and the tests all apply plans here.

A plan its own verdict refuses is not applied at all. Creates come first, then
deletes, so the published MX set never shrinks mid-change; a failure stops the
loop where it is, and a later run re-reads the zone and plans only what is left.
Each change gets its line in the change log (``backupmx.core.audit``) right after
the zone took it. A create whose answer was lost is not sent again blindly: the
client re-reads the zone first (``CloudflareClient.create_mx``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from backupmx.core import audit
from backupmx.dns.plan import MXPlan, MXRecord

CREATE = "dns.create"
DELETE = "dns.delete"

# Told of each change right after it was made: what (CREATE or DELETE) and the plan's record.
Applied = Callable[[str, MXRecord], None]


class ZoneWriter(Protocol):
    """The two writes of ``CloudflareClient`` a plan needs."""

    def create_mx(self, zone_id: str, name: str, host: str, priority: int,
                  comment: str | None = None) -> MXRecord: ...

    def delete_record(self, zone_id: str, record_id: str) -> None: ...


def apply_plan(client: ZoneWriter, zone_id: str, plan: MXPlan, settings,
               applied: Applied | None = None) -> list[MXRecord]:
    """Make the changes of ``plan`` in zone ``zone_id``; the records created, as the zone holds them.

    ``settings`` names the change log. Raises ``UnsafePlan`` (nothing applied) when
    the plan's verdict refuses it, and the client's error, naming the endpoint and
    the next step, when a write fails.
    """
    plan.raise_if_unsafe()
    domain = plan.domain.name
    created = []
    for record in plan.creates:
        made = client.create_mx(zone_id, record.name, record.host, record.priority, record.comment)
        audit.append(settings, CREATE, domain, None, audit.record_dict(made))
        created.append(made)
        if applied:
            applied(CREATE, record)
    for record in plan.deletes:
        client.delete_record(zone_id, record.id)
        audit.append(settings, DELETE, domain, audit.record_dict(record), None)
        if applied:
            applied(DELETE, record)
    return created
