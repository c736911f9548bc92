"""The change log: one JSON line per DNS or provider change the tool applied.

So an operator can see, during an incident, what backupmx did and when:

    {"when": "2026-11-25T21:30:02+00:00", "who": "viktor@laptop", "pid": 4242,
     "deploy": "deploys/backupmx.py", "what": "dns.create", "target": "viktorbarzin.me",
     "before": null, "after": {"type": "MX", "name": "viktorbarzin.me", "priority": 20,
     "content": "mail.rollernet.us", "id": "..."}}

``what`` is one of ``dns.create``, ``dns.delete``, ``provider.domain_enabled``,
``provider.hold``, and ``provider.disable_requested`` (the rollback's, written just
before its disable request, so a run killed with the request in flight is on record). The file is ``audit_log`` from the inventory, default
``<state_dir>/audit.jsonl``; a line is appended (O_APPEND, one write) right after the
change was applied. Values are records and flags only, never secrets. A failure to
write the log is reported on stderr but never undoes or stops the change.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from backupmx.core.files import append_json_line
from backupmx.core.lock import who
from backupmx.core.pyinfra_glue import deploy_file


def log_path(settings) -> Path:
    if getattr(settings, "audit_log", ""):
        return Path(settings.audit_log)
    return Path(settings.state_dir) / "audit.jsonl"


def record_dict(record) -> dict[str, Any] | None:
    """An MX record (``mxplan.MXRecord``) as plain data for the log."""
    if record is None:
        return None
    return {"type": "MX", "name": record.name, "priority": record.priority, "content": record.host,
            "id": getattr(record, "id", None), "comment": getattr(record, "comment", None)}


def append(settings, what: str, target: str, before: Any, after: Any) -> dict:
    entry = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "who": who(),
        "pid": os.getpid(),
        "deploy": deploy_file(),
        "what": what,
        "target": target,
        "before": before,
        "after": after,
    }
    path = log_path(settings)
    error = append_json_line(path, entry)
    if error is not None:
        print(f"backupmx: warning: change not written to the audit log {path} ({error.strerror}): "
              f"{what} {target}", file=sys.stderr)
    return entry


def read(settings) -> list[dict]:
    path = log_path(settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Entries that say something about whether a domain is enabled at the provider:
# its MX records and its enabled state. ``provider.hold`` is left out: turning the
# hold off after a rollback (to drain the queue) does not enable or disable anything.
DISABLE_REQUESTED = "provider.disable_requested"
_STATE_CHANGES = ("dns.create", "dns.delete", "provider.domain_enabled", DISABLE_REQUESTED)
ROLLBACK_DEPLOY = "deploys/rollback.py"


def disabled_by_rollback(settings, domain: str) -> dict | None:
    """The rollback's entry if this tool's own rollback is the last to have disabled ``domain``.

    "Disabled by us" means: the last logged change of the domain's MX records or
    enabled state is the rollback's ``provider.domain_enabled`` setting it to false, or
    its ``provider.disable_requested`` (a rollback killed with the request in flight).
    Any later logged change (a deploy's record, an enable) or none at all (a fresh
    log, a domain disabled by hand or on another machine) answers None. The caller
    also checks that the provider still shows the domain disabled, i.e. the state
    equals what that entry set. A hand re-enable and re-disable in the provider's
    console with no logged change in between cannot be told apart (docs/rollback.md).
    """
    try:
        entries = read(settings)
    except (OSError, ValueError):
        return None
    last = None
    for entry in entries:
        if entry.get("target") == domain and entry.get("what") in _STATE_CHANGES:
            last = entry
    if (last is None or last.get("what") not in ("provider.domain_enabled", DISABLE_REQUESTED)
            or last.get("deploy") != ROLLBACK_DEPLOY):
        return None
    after = last.get("after")
    if not isinstance(after, dict) or after.get("enabled") is not False:
        return None
    return last
