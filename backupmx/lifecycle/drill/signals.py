"""The failover drill's down window under SIGINT/SIGTERM: they mark the drill interrupted
(the step in progress stops, the primary is brought back, the run fails), never kill it."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from backupmx.core.errors import BackupMXError


class Interrupted(BackupMXError):
    """SIGINT/SIGTERM during the drill: the primary is brought back, then the run fails."""


class SignalGuard:
    """During the down window: SIGINT/SIGTERM only flag the drill (which then restores), never kill it."""

    def __init__(self, drill: Any, log: Callable[[str], None]):
        self.drill = drill
        self.log = log
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self.drill.interrupted:
            self.drill.interrupted = name
        try:
            self.log(f"failover: {name}: bringing the primary back before stopping")
        except Exception:  # noqa: BLE001, S110 - a handler must never raise; the report says it anyway
            pass

    def __enter__(self) -> SignalGuard:  # noqa: PYI034
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: nothing to guard
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
