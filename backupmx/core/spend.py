"""The spend ledger: every message this tool itself sent through a backup provider.

One JSON line per message the provider's relay took (the failover drill's probes, its
large and spam messages, the canaries), in ``<state_dir>/spend.jsonl`` beside the change
log, appended (O_APPEND, one write) right after the relay's answer:

    {"when": "2026-11-25T21:30:02+00:00", "provider": "rollernet", "domain": "viktorbarzin.me",
     "messages": 1, "bytes": 1432, "what": "canary", "relay": "mail.rollernet.us",
     "run": "20261125213002-1a2b3c4d", "deploy": "deploys/canary.py", "who": "viktor@laptop"}

A message whose fate cannot be told (the connection lost during DATA) is written too:
the ledger may count too much, never too little. The drill and the canary read it
(``spent``) to keep inside this tool's share of the provider's budget
(``backupmx.core.budget``). Nothing in it is secret. A line that cannot be read stops
them with one line naming the file and the line: what was spent is then unknown.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from backupmx.core.pyinfra_glue import deploy_file
from backupmx.core.budget import Spent
from backupmx.core.errors import BackupMXError
from backupmx.core.files import append_json_line
from backupmx.core.lock import who

FILE_NAME = "spend.jsonl"


def ledger_path(settings) -> Path:
    return Path(settings.state_dir) / FILE_NAME


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def record(settings, domain: str, nbytes: int, what: str, relay: str, run: str,
           when: datetime.datetime | None = None) -> dict:
    """Append one sent message of ``settings.provider`` for ``domain``; a failure to write is a warning."""
    entry = {
        "when": (when or now()).isoformat(timespec="seconds"),
        "provider": settings.provider.name,
        "domain": domain,
        "messages": 1,
        "bytes": int(nbytes),
        "what": what,
        "relay": relay,
        "run": run,
        "deploy": deploy_file(),
        "who": who(),
    }
    path = ledger_path(settings)
    error = append_json_line(path, entry)
    if error is not None:
        print(f"backupmx: warning: a sent message was not written to the spend ledger {path} "
              f"({error.strerror}): {what} {domain} via {relay}, {nbytes} bytes", file=sys.stderr)
    return entry


def spent(settings, domain: str) -> list[Spent]:
    """What this tool sent through ``settings.provider`` for ``domain``, every entry of the ledger."""
    path = ledger_path(settings)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise BackupMXError(f"spend ledger {path}: cannot be read ({error.strerror}): what this tool spent "
                            "through the provider is unknown; fix its permissions") from None
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        entry = _entry(line, path, number)
        if entry["provider"] == settings.provider.name and entry["domain"] == domain:
            found.append(Spent(entry["when"], entry["messages"], entry["bytes"]))
    return found


def _entry(line: str, path: Path, number: int) -> dict:
    where = f"spend ledger {path} line {number}"
    fix = "fix or delete that line (docs/budget.md); until then nothing is sent through a metered provider"
    try:
        entry = json.loads(line)
    except ValueError:
        raise BackupMXError(f"{where}: not JSON; {fix}") from None
    if not isinstance(entry, dict):
        raise BackupMXError(f"{where}: not a JSON object; {fix}")
    for key in ("provider", "domain"):
        if not isinstance(entry.get(key), str):
            raise BackupMXError(f"{where}: {key} {entry.get(key)!r} is not a name; {fix}")
    for key in ("messages", "bytes"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BackupMXError(f"{where}: {key} {value!r} is not a count; {fix}")
    try:
        when = datetime.datetime.fromisoformat(str(entry.get("when")))
    except ValueError:
        raise BackupMXError(f"{where}: when {entry.get('when')!r} is not an ISO date-time; {fix}") from None
    entry["when"] = when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
    return entry
