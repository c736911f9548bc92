"""The fake Roller Network's relay queue: one .eml + one .json per message, plus delivered/bounced logs.

Part of the fake Roller Network (``fake_rollernet.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path

from backupmx_sandbox.rollernet_state import iso, write_json_atomically


class MailQueue:
    """Messages the relays accepted and have not delivered or bounced yet.

    The ``.json`` file is written last and marks a message as queued, so a crash
    between the two writes leaves only an orphan ``.eml`` that start-up removes.
    """

    def __init__(self, directory: Path, delivered_log: Path, bounced_log: Path):
        self.directory = directory
        self.delivered_log = delivered_log
        self.bounced_log = bounced_log
        self.lock = threading.RLock()
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        for eml in self.directory.glob("*.eml"):
            if not eml.with_suffix(".json").exists():
                eml.unlink(missing_ok=True)
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def add(self, relay: str, mail_from: str, rcpts: list[str], domain: str, content: bytes) -> dict:
        now = time.time()
        meta = {
            "id": secrets.token_hex(6).upper(),
            "relay": relay,
            "domain": domain,
            "from": mail_from,
            "to": list(rcpts),
            "size": len(content),
            "queued_at": now,
            "attempts": 0,
            "last_attempt": None,
            "next_attempt": now,  # a relay tries at once
            "last_error": None,
        }
        with self.lock:
            eml = self.directory / f"{meta['id']}.eml"
            fd = os.open(eml, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            write_json_atomically(self.directory / f"{meta['id']}.json", meta)
        return meta

    def messages(self, domain: str | None = None) -> list[dict]:
        with self.lock:
            found = []
            for path in self.directory.glob("*.json"):
                try:
                    meta = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if domain is None or meta["domain"] == domain:
                    found.append(meta)
        return sorted(found, key=lambda meta: (meta["queued_at"], meta["id"]))

    def contains(self, message_id: str) -> bool:
        return (self.directory / f"{message_id}.json").exists()

    def content(self, message_id: str) -> bytes | None:
        try:
            return (self.directory / f"{message_id}.eml").read_bytes()
        except OSError:
            return None

    def update(self, message_id: str, fields: dict) -> bool:
        """Merge ``fields`` into a message's metadata; False if it left the queue meanwhile."""
        with self.lock:
            path = self.directory / f"{message_id}.json"
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                return False
            meta.update(fields)
            write_json_atomically(path, meta)
            return True

    def remove(self, message_id: str) -> None:
        with self.lock:
            (self.directory / f"{message_id}.json").unlink(missing_ok=True)
            (self.directory / f"{message_id}.eml").unlink(missing_ok=True)

    def make_due(self, domain: str | None = None) -> int:
        """Retry now (ETRN, queue_flush, hold release): every matching message is due."""
        now = time.time()
        count = 0
        for meta in self.messages(domain):
            count += self.update(meta["id"], {"next_attempt": min(meta["next_attempt"], now)})
        return count

    def record(self, outcome: str, entry: dict) -> None:
        path = self.delivered_log if outcome == "delivered" else self.bounced_log
        with self.lock:
            with open(path, "a") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def history(self, outcome: str) -> list[dict]:
        path = self.delivered_log if outcome == "delivered" else self.bounced_log
        with self.lock:
            try:
                lines = path.read_text().splitlines()
            except OSError:
                return []
        return [json.loads(line) for line in lines if line.strip()]

    def clear(self) -> None:
        with self.lock:
            for path in list(self.directory.iterdir()):
                path.unlink(missing_ok=True)
            for path in (self.delivered_log, self.bounced_log):
                path.unlink(missing_ok=True)


def queue_view(meta: dict, held: bool) -> dict:
    return {
        "id": meta["id"],
        "from": meta["from"],
        "to": list(meta["to"]),
        "size": meta["size"],
        "queued_at": iso(meta["queued_at"]),
        "attempts": meta["attempts"],
        "next_attempt": None if held else iso(meta["next_attempt"]),
        "last_error": meta["last_error"],
        "relay": meta["relay"],
        "held": held,
    }
