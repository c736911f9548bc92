"""The fake Cloudflare's faults and limits: injected failures (``/_sandbox/faults``), the
API's rate limit, and the request log the tests read. Part of ``backupmx_sandbox.fake_cloudflare``.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import deque

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# The "method" of an authoritative DNS question, for the fault filters.
DNS_METHOD = "DNS"
REQUEST_LOG_LIMIT = 10_000



# ------------------------------------------------------------ faults and limits


class Faults:
    """Injected faults for ``/client/v4`` calls, each used up ``count`` times.

    ``rate_limit`` {count, retry_after}, ``server_error`` {count, status},
    ``slow`` {count, seconds}, ``after_write`` {count, mode: error|drop[, status]},
    all with optional ``methods`` and ``path_contains`` filters (``count`` defaults
    to 1; null keeps the fault until cleared); ``quota`` sets the
    zone's record quota (null restores the default). ``slow`` with ``methods: ["DNS"]``
    slows the zones' authoritative DNS answers instead (``path_contains``: in the
    question's name): a name server that answers late, or not in a client's time.
    """

    KINDS = ("rate_limit", "server_error", "slow", "after_write")

    def __init__(self):
        self.lock = threading.Lock()
        self.active: dict[str, dict] = {}

    def set(self, settings: dict) -> None:
        with self.lock:
            for kind in self.KINDS:
                if kind in settings:
                    spec = settings[kind]
                    if spec is None:
                        self.active.pop(kind, None)
                    else:
                        self.active[kind] = {"count": 1, **spec}

    def clear(self) -> None:
        with self.lock:
            self.active.clear()

    def view(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.active)

    def take(self, kind: str, method: str, path: str) -> dict | None:
        """The fault of ``kind`` that applies to this request (using up one count), if any."""
        with self.lock:
            spec = self.active.get(kind)
            if spec is None or not self._applies(kind, spec, method, path):
                return None
            if spec["count"] is not None:  # null: until cleared
                spec["count"] -= 1
                if spec["count"] <= 0:
                    del self.active[kind]
            return dict(spec)

    @staticmethod
    def _applies(kind: str, spec: dict, method: str, path: str) -> bool:
        if method == DNS_METHOD and DNS_METHOD not in [m.upper() for m in spec.get("methods") or ()]:
            return False  # DNS is slowed only when asked by name: an API fault must not slow it
        methods = spec.get("methods") or (sorted(WRITE_METHODS) if kind == "after_write" else None)
        if methods and method not in [m.upper() for m in methods]:
            return False
        return spec.get("path_contains", "") in path


class Throttle:
    """Cloudflare's global limit: N requests per window per token, then blocked for a while."""

    def __init__(self, requests: int, window: float, block: float):
        self.defaults = {"requests": requests, "window": window, "block": block}
        self.lock = threading.Lock()
        self.seen: dict[str, deque] = {}
        self.blocked_until: dict[str, float] = {}
        self.configure(None)

    def configure(self, limit: dict | None) -> None:
        """New limits (``requests``, ``window``, ``block``), or the defaults for None; counts restart."""
        settings = {**self.defaults, **(limit or {})}
        with self.lock:
            self.requests, self.window, self.block = settings["requests"], settings["window"], settings["block"]
            self.seen.clear()
            self.blocked_until.clear()

    def view(self) -> dict:
        return {"requests": self.requests, "window": self.window, "block": self.block}

    def check(self, key: str) -> int | None:
        """Seconds to wait if ``key`` is over the limit, else None (and the request counts)."""
        now = time.monotonic()
        with self.lock:
            until = self.blocked_until.get(key, 0)
            if now < until:
                return math.ceil(until - now)
            seen = self.seen.setdefault(key, deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.requests:
                self.blocked_until[key] = now + self.block
                return math.ceil(self.block)
            seen.append(now)
            return None


class RequestLog:
    """What was asked and answered; never a credential."""

    def __init__(self):
        self.lock = threading.Lock()
        self.entries: deque = deque(maxlen=REQUEST_LOG_LIMIT)

    def add(self, entry: dict) -> None:
        with self.lock:
            self.entries.append(entry)

    def view(self) -> list[dict]:
        with self.lock:
            return list(self.entries)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
