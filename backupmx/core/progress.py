"""Progress of a bounded wait (DNS to show a change, a run lock, a reload to take effect).

A wait of a few seconds shows nothing. A longer one says what it waits for, how long
it has waited and the time left:

* on a terminal, in one status line kept at the bottom and redrawn in place; what
  others print meanwhile goes above it. pyinfra's CLI draws its spinner on that same
  line while operations run (``pyinfra.progress``): its redraws are held back during
  the wait, or the two lines would flicker in turn;
* in a log (no terminal: cron, CI), one line every ``LOG_EVERY`` seconds, through the
  caller's ``log`` (pyinfra's ``host.log``).

The waiting loop calls ``update`` each time it looks again; ``end`` (or leaving the
``with`` block) clears the status line.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable

# A wait shorter than this shows nothing.
QUIET_SECONDS = 3.0
# In a log: the seconds between two lines.
LOG_EVERY = 5.0
_CLEAR = "\r\033[K"


class Throttled:
    """``log`` at most once every ``seconds`` by ``clock``: how a poll loop goes, without a line per poll.

    ``at_once``: the first line is logged at the first call; otherwise ``seconds`` after this is made.
    """

    def __init__(self, log: Callable[[str], None], seconds: float, clock: Callable[[], float],
                 at_once: bool = True):
        self.log = log
        self.seconds = seconds
        self.clock = clock
        self.logged_at = None if at_once else clock()

    def __call__(self, message: str) -> None:
        now = self.clock()
        if self.logged_at is None or now - self.logged_at >= self.seconds:
            self.logged_at = now
            self.log(message)


class Progress:
    def __init__(self, what: str, seconds: float, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, terminal=None):
        """``what``: what is waited for; ``seconds``: the most it waits. ``terminal``: the stream of
        the status line; default stderr when stdout and stderr are both a terminal, else none (a log)."""
        self.what = what
        self.seconds = seconds
        self.log = log
        self.clock = clock
        self.started = clock()
        self.logged_at: float | None = None
        if terminal is None and sys.stdout.isatty() and sys.stderr.isatty():
            terminal = sys.stderr
        self.terminal = terminal
        self._line: _StatusLine | None = None

    def text(self, detail: str = "") -> str:
        elapsed = self.clock() - self.started
        left = max(0.0, self.seconds - elapsed)
        return f"{self.what}: {elapsed:.0f} s, at most {left:.0f} s left" + (f" ({detail})" if detail else "")

    def update(self, detail: str = "") -> None:
        """The wait goes on (``detail``: what it saw last); shown once past ``QUIET_SECONDS``."""
        now = self.clock()
        if now - self.started < QUIET_SECONDS:
            return
        if self.terminal is not None:
            if self._line is None:
                self._line = _StatusLine.install(self.terminal)
            self._line.show(self.text(detail))
        elif self.logged_at is None or now - self.logged_at >= LOG_EVERY:
            self.logged_at = now
            self.log(self.text(detail))

    def end(self) -> None:
        if self._line is not None:
            self._line.remove()
            self._line = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.end()


def _is_spinner(data: str) -> bool:
    # pyinfra.progress redraws "    <char> <progress>\r" and then leaves an erase-line escape.
    return data == "\033[K" or (data.endswith("\r") and "\n" not in data)


class _StatusLine:
    """Stands in for ``sys.stderr`` while a status line is shown at the bottom of the terminal."""

    def __init__(self, stream):
        self.stream = stream
        self.text = ""

    @classmethod
    def install(cls, stream) -> _StatusLine:
        line = cls(stream)
        if sys.stderr is stream:
            sys.stderr = line
        return line

    def show(self, text: str) -> None:
        # One line: a longer one wraps, and a carriage return goes back only to its last part.
        width = shutil.get_terminal_size().columns - 1
        self.text = text if len(text) <= width else text[:max(width - 3, 0)] + "..."
        self.stream.write(_CLEAR + text)
        self.stream.flush()

    def remove(self) -> None:
        if sys.stderr is self:
            sys.stderr = self.stream
        self.stream.write(_CLEAR)
        self.stream.flush()

    # --- what others write meanwhile ---------------------------------------------------

    def write(self, data) -> int:
        if isinstance(data, str) and _is_spinner(data):
            return len(data)
        self.stream.write(_CLEAR)
        written = self.stream.write(data)
        if isinstance(data, str) and data.endswith("\n") and self.text:
            self.stream.write(self.text)
        return written

    def __getattr__(self, name):
        return getattr(self.stream, name)
