"""A clock the test moves by hand: ``clock()`` is the time, ``clock.sleep(s)`` advances it (no real wait)."""

from __future__ import annotations


class Clock:
    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
