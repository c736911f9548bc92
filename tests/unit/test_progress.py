"""A wait over a few seconds shows its progress: in a log a line every few seconds; on a
terminal one status line at the bottom, redrawn in place, with pyinfra's spinner held back."""

from __future__ import annotations

import io
import sys

from backupmx.core.progress import LOG_EVERY, QUIET_SECONDS, Progress, Throttled
from backupmx.dns import check as dnscheck
from support.clock import Clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_a_line_every_few_seconds_after_a_quiet_start():
    clock, lines = Clock(100.0), []
    progress = Progress("DNS example.org: waiting", 300, lines.append, clock=clock, terminal=None)
    progress.update("not yet")
    assert lines == []  # a short wait says nothing
    seen = []
    for _ in range(40):
        clock.now += 0.5
        progress.update("lacks 20 mx1.example.net")
        seen.append(clock.now - 100)
    assert lines[0] == f"DNS example.org: waiting: {QUIET_SECONDS:.0f} s, at most {300 - QUIET_SECONDS:.0f} s left " \
                       "(lacks 20 mx1.example.net)"
    assert len(lines) == 1 + int((20 - QUIET_SECONDS) // LOG_EVERY)


def test_on_a_terminal_one_status_line_with_others_lines_above_it(monkeypatch):
    clock, terminal = Clock(100.0), Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Progress("lock example.org: waiting for pid 7", 60, lambda line: None, clock=clock,
                  terminal=terminal) as progress:
        clock.now += 4
        progress.update()
        sys.stderr.write("    - 50% (1/2) {@local}\r")  # pyinfra's spinner redraw: held back
        sys.stderr.write("\033[K")
        sys.stderr.write("    [@local] another host's line\n")  # goes above the status line
        clock.now += 1
        progress.update()
    assert sys.stderr is terminal  # given back
    shown = terminal.getvalue()
    assert "50%" not in shown
    assert shown == ("\r\033[Klock example.org: waiting for pid 7: 4 s, at most 56 s left"
                     "\r\033[K    [@local] another host's line\n"
                     "lock example.org: waiting for pid 7: 4 s, at most 56 s left"
                     "\r\033[Klock example.org: waiting for pid 7: 5 s, at most 55 s left"
                     "\r\033[K")


def test_the_dns_wait_reports_what_is_still_missing(monkeypatch):
    clock, told = Clock(100.0), []
    answers = iter([{"127.0.0.1:53": frozenset({(1, "mail.example.org")})}] * 3 +
                   [{"127.0.0.1:53": frozenset({(1, "mail.example.org"), (20, "mx1.example.net")})}])
    monkeypatch.setattr(dnscheck, "mx_per_server", lambda domain, servers: next(answers))

    def sleep(seconds):
        clock.now += seconds

    dnscheck.wait_for_mx("example.org", ["127.0.0.1:53"], want_present={(20, "mx1.example.net")}, timeout=60,
                         clock=clock, sleep=sleep, on_wait=told.append)
    assert told == ["127.0.0.1:53 lacks 20 mx1.example.net"] * 3


def test_a_poll_loop_logs_at_most_once_every_few_seconds():
    now, lines = [0.0], []
    at_once = Throttled(lines.append, 5.0, lambda: now[0])
    later = Throttled(lambda line: lines.append("later: " + line), 5.0, lambda: now[0], at_once=False)
    for second in range(0, 12):
        now[0] = float(second)
        at_once(f"{second}")
        later(f"{second}")
    assert lines == ["0", "5", "later: 5", "10", "later: 10"]
