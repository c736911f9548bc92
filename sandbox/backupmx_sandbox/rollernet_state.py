"""The fake Roller Network's account state: its domains and relay CIDRs (``state.json``), and their views.

Part of the fake Roller Network (``fake_rollernet.py``, which says what it is).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from pathlib import Path

# Assumed ACC vocabulary (see docs/provider-api.md).
MODES = ("secondary_mx", "mail_mirror", "primary")
RELAYED_MODES = ("secondary_mx", "mail_mirror")
USER_TABLE_DEFAULTS = ("allow_any", "deny")
PROTECTED_USERS = ("abuse", "postmaster")  # Roller Network: cannot be removed from the table


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def write_json_atomically(path: Path, data, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


class AccError(Exception):
    """An application error answered in the JSON envelope (HTTP 200 unless ``status`` says)."""

    def __init__(self, code: str, message: str, status: int = 200):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Store:
    """The account's domain settings and relay CIDRs, persisted to ``state.json``."""

    def __init__(self, path: Path, seed: dict):
        self.path = path
        self.seed = seed
        self.lock = threading.RLock()
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.reset()

    def reset(self) -> None:
        with self.lock:
            self.data = copy.deepcopy(self.seed)
            self._save()

    def _save(self) -> None:
        write_json_atomically(self.path, self.data)

    def domain(self, name: str) -> dict | None:
        with self.lock:
            record = self.data["domains"].get(name.lower())
            return copy.deepcopy(record) if record is not None else None

    def domain_names(self) -> list[str]:
        with self.lock:
            return sorted(self.data["domains"])

    def update_domain(self, name: str, fields: dict, create: bool = False) -> dict:
        with self.lock:
            domains = self.data["domains"]
            name = name.lower()
            if name not in domains:
                if not create:
                    raise AccError("domain_not_found", f"domain {name} is not in this account")
                domains[name] = new_domain_record()
            domains[name].update(copy.deepcopy(fields))
            self._save()
            return copy.deepcopy(domains[name])

    def remove_domain(self, name: str) -> None:
        with self.lock:
            self.data["domains"].pop(name.lower(), None)
            self._save()

    def relay_cidrs(self) -> list[str]:
        with self.lock:
            return list(self.data["relay_cidrs"])

    def set_relay_cidrs(self, cidrs: list[str]) -> None:
        with self.lock:
            self.data["relay_cidrs"] = list(cidrs)
            self._save()

    def snapshot(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.data)


def new_domain_record() -> dict:
    # Roller Network's documented default: a valid-user table that denies unknown users.
    return {"mode": "secondary_mx", "enabled": True, "user_table_default": "deny", "hold": False, "users": []}


def domain_view(name: str, record: dict) -> dict:
    return {
        "domain": name,
        "mode": record["mode"],
        "enabled": record["enabled"],
        "user_table_default": record["user_table_default"],
        "hold": record["hold"],
    }


def usertable_view(name: str, record: dict) -> dict:
    return {
        "domain": name,
        "default": record["user_table_default"],
        "users": sorted(set(record.get("users", [])) | set(PROTECTED_USERS)),
        "protected": list(PROTECTED_USERS),
    }


def check_domain_fields(fields: dict) -> None:
    if "mode" in fields and fields["mode"] not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if "user_table_default" in fields and fields["user_table_default"] not in USER_TABLE_DEFAULTS:
        raise ValueError(f"user_table_default must be one of {', '.join(USER_TABLE_DEFAULTS)}")
    for flag in ("enabled", "hold"):
        if flag in fields and not isinstance(fields[flag], bool):
            raise ValueError(f"{flag} must be true or false")
    if "users" in fields and not all(isinstance(user, str) for user in fields["users"]):
        raise ValueError("users must be a list of local parts")
