"""The fake Roller Network's test knobs: relay switches, faults of the ACC API, the request log.

Part of the fake Roller Network (``fake_rollernet.py``).
"""

from __future__ import annotations

import copy
import ipaddress
import threading

REQUEST_LOG_LIMIT = 1000


class RelaySettings:
    """Switches tests flip via ``POST /_sandbox/relay``; back to config defaults on reset."""

    FIELDS = ("source_override", "retry_schedule", "deliver", "max_queue_age", "rcpt_reply", "deliver_to",
              "client_address")

    def __init__(self, defaults: dict):
        self.defaults = defaults
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.values = {
                "source_override": None,
                "retry_schedule": list(self.defaults["retry_schedule"]),
                "deliver": True,
                "max_queue_age": self.defaults["max_queue_age"],
                "rcpt_reply": None,
                # "127.0.0.1:PORT" to deliver somewhere other than the mail host's
                # PROXY listener (a test's stand-in that answers 4xx/5xx on demand).
                "deliver_to": None,
                # The address the relays' Received header records for their client instead
                # of its loopback one: the sender's public address (every sandbox sender is on
                # loopback, which rspamd's SPF module never checks).
                "client_address": None,
            }

    def update(self, changes: dict) -> dict:
        unknown = set(changes) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown relay switch(es): {', '.join(sorted(unknown))}")
        for name in ("source_override", "client_address"):
            if changes.get(name) is not None:
                ipaddress.ip_address(changes[name])  # ValueError names the bad address
        schedule = changes.get("retry_schedule")
        if schedule is not None and (not schedule or any(float(step) <= 0 for step in schedule)):
            raise ValueError("retry_schedule must be a non-empty list of positive seconds")
        target = changes.get("deliver_to")
        if target is not None:
            host, _, port = target.rpartition(":")
            ipaddress.ip_address(host)
            if not port.isdigit():
                raise ValueError("deliver_to must be ip:port")
        reply = changes.get("rcpt_reply")
        if reply is not None and not (reply[:3].isdigit() and reply[0] in "45"):
            raise ValueError("rcpt_reply must be an SMTP 4xx/5xx reply line, e.g. '451 4.3.0 try later'")
        with self.lock:
            self.values.update(changes)
            return dict(self.values)

    def get(self, name: str):
        with self.lock:
            return copy.deepcopy(self.values[name])

    def snapshot(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.values)


class Faults:
    """Failures the ACC API answers with until cleared or their count runs out.

    ``{"down": true}`` drops connections without an answer; ``{"slow": 2.5}`` delays
    answers; ``{"server_error": {"count": 2, "status": 502}}``, ``{"rate_limit":
    {"count": 1, "retry_after": 3}}``, ``{"malformed": {"count": 1}}`` answer that
    many requests wrongly (a missing or null count means until cleared).
    """

    KINDS = ("down", "slow", "server_error", "rate_limit", "malformed")

    def __init__(self):
        self.lock = threading.Lock()
        self.active: dict = {}

    def set(self, changes: dict) -> dict:
        unknown = set(changes) - set(self.KINDS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        with self.lock:
            for kind, setting in changes.items():
                if setting in (None, False, 0):
                    self.active.pop(kind, None)
                else:
                    self.active[kind] = copy.deepcopy(setting)
            return copy.deepcopy(self.active)

    def clear(self) -> None:
        with self.lock:
            self.active = {}

    def snapshot(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.active)

    def take(self, kind: str):
        """The setting of ``kind`` if it applies to this request, using up one count."""
        with self.lock:
            setting = self.active.get(kind)
            if setting is None:
                return None
            if isinstance(setting, dict) and setting.get("count") is not None:
                setting["count"] -= 1
                if setting["count"] <= 0:
                    del self.active[kind]
            return setting


class RequestLog:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries: list[dict] = []

    def add(self, entry: dict) -> None:
        with self.lock:
            self.entries.append(entry)
            del self.entries[:-REQUEST_LOG_LIMIT]

    def clear(self) -> None:
        with self.lock:
            self.entries = []

    def snapshot(self) -> list[dict]:
        with self.lock:
            return copy.deepcopy(self.entries)
