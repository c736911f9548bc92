"""The failover drill's down window under SIGINT/SIGTERM: they mark the drill interrupted
(the step in progress stops, the primary is brought back, the run fails), never kill it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from backupmx.core.errors import BackupMXError
from backupmx.core.pyinfra_glue import flagging_signals


class Interrupted(BackupMXError):
    """SIGINT/SIGTERM during the drill: the primary is brought back, then the run fails."""


@contextlib.contextmanager
def signals_flag(drill: Any, log: Callable[[str], None]) -> Iterator[None]:
    """During the down window: SIGINT/SIGTERM only flag the drill (which then restores), never kill it."""
    def flag(name: str) -> None:
        if not drill.interrupted:
            drill.interrupted = name
        try:
            log(f"failover: {name}: bringing the primary back before stopping")
        except Exception:  # noqa: BLE001, S110 - a handler must never raise; the report says it anyway
            pass

    with flagging_signals(flag):
        yield
