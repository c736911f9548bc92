"""What the primary's own Postfix log says: how much mail it received per day (docs/budget.md),
and which messages it took without its milter (the failover drill, docs/failover-drill.md).

The provider's quota caps real mail during an outage; the gate report turns it into
hours from this volume. ``SCRIPT`` runs on the mail host (in the container for
docker-mailserver) and prints a compact per-day summary, never the log itself:

* the log: ``mailhost.mail_log`` if set; else Postfix's ``maillog_file`` (Postfix >= 3.4,
  ``postlogd``; the sandbox's); else ``/var/log/mail.log`` (native Debian with rsyslog) or
  ``/var/log/mail/mail.log`` (docker-mailserver); with its rotated copies (``.1``,
  ``.2.gz``, ``-20260701``) of the last ``days`` days, gzip or not;
* a message counts as received when an ``smtpd`` line gives its queue id a ``client=``
  without ``sasl_username=`` (mail from another server, not a user's submission), and
  its ``qmgr ... from=<...>, size=N, nrcpt=M (queue active)`` line then gives its size
  and day. A deferred message entering the active queue again is not counted again.

Output lines: ``==today YYYY-MM-DD`` (the host's date), ``==log present|missing|unreadable
PATH``, and ``day KEY|MESSAGES|BYTES`` per day the log has lines for, KEY being
``YYYY-MM-DD`` (RFC 3339 time stamps) or ``Mon DD`` (traditional syslog ones, whose year
is the latest that is not in the future).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from backupmx.mailhost.model import MailHost

NATIVE_LOG = "/var/log/mail.log"
DMS_LOG = "/var/log/mail/mail.log"
DAYS = 30

AWK = r"""
{
  if ($1 ~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]/) day = substr($1, 1, 10); else day = $1 " " $2
  seen[day] = 1
}
/\/smtpd\[[0-9]+\]: [0-9A-Za-z]+: client=/ {
  if ($0 ~ /sasl_username=/) next
  s = substr($0, index($0, "]: ") + 3); inbound[substr(s, 1, index(s, ":") - 1)] = 1; next
}
/\/qmgr\[[0-9]+\]: [0-9A-Za-z]+: from=<[^>]*>, size=[0-9]+, nrcpt=/ {
  s = substr($0, index($0, "]: ") + 3); q = substr(s, 1, index(s, ":") - 1)
  if (!(q in inbound)) next
  delete inbound[q]
  match(s, /size=[0-9]+/); messages[day] += 1; bytes[day] += substr(s, RSTART + 5, RLENGTH - 5)
}
END { for (d in seen) printf "day %s|%.0f|%.0f\n", d, messages[d], bytes[d] }
"""

SCRIPT = r"""f=$1
if [ -z "$f" ]; then
  f=$(postconf -c "$2" -h maillog_file 2>/dev/null)
  case "$f" in ""|/dev/*) f=$3 ;; esac
fi
echo "==today $(date +%Y-%m-%d)"
if [ ! -e "$f" ]; then echo "==log missing $f"; exit 0; fi
if [ ! -r "$f" ]; then echo "==log unreadable $f"; exit 0; fi
echo "==log present $f"
d=$(dirname -- "$f"); b=$(basename -- "$f")
find "$d" -maxdepth 1 -type f \( -name "$b" -o -name "$b.*" -o -name "$b-*" \) -mtime -"$4" |
  while IFS= read -r x; do zcat -f -- "$x" 2>/dev/null || cat -- "$x"; done |
  awk "$5"
"""

_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}


def default_log(mailhost: MailHost) -> str:
    """Where the flavour's Postfix logs when ``maillog_file`` is not set."""
    return DMS_LOG if mailhost.is_docker else NATIVE_LOG


@dataclass(frozen=True)
class Window:
    """Received mail over the complete days of a window, and how many of them the log covers."""

    days: int
    covered: int
    messages: int
    bytes: int

    @property
    def messages_per_day(self) -> float:
        return self.messages / self.covered if self.covered else 0.0

    @property
    def bytes_per_day(self) -> float:
        return self.bytes / self.covered if self.covered else 0.0


@dataclass(frozen=True)
class MailVolume:
    """The fact's answer: the log read, and per day (the host's dates) messages and bytes received."""

    state: str  # "present", "missing", "unreadable", "unread"
    path: str = ""
    today: datetime.date | None = None
    received: dict[datetime.date, tuple[int, int]] = field(default_factory=dict)
    logged: frozenset[datetime.date] = frozenset()  # days the log has any line for

    def window(self, days: int) -> Window:
        """The ``days`` complete days before today; the first covered is the oldest the log has a line for."""
        if self.today is None:
            return Window(days, 0, 0, 0)
        span = [self.today - datetime.timedelta(days=back) for back in range(days, 0, -1)]
        first = next((day for day in span if day in self.logged), None)
        inside = [day for day in span if first is not None and day >= first]
        messages = sum(self.received.get(day, (0, 0))[0] for day in inside)
        nbytes = sum(self.received.get(day, (0, 0))[1] for day in inside)
        return Window(days, len(inside), messages, nbytes)


def parse_volume(lines: Iterable[str]) -> MailVolume:
    state, path, today = "unread", "", None
    rows: list[tuple[str, int, int]] = []
    for line in lines:
        line = line.rstrip("\n")
        if line.startswith("==today "):
            try:
                today = datetime.date.fromisoformat(line.split(" ", 1)[1].strip())
            except ValueError:
                today = None
        elif line.startswith("==log "):
            _, state, path = (line.split(" ", 2) + [""])[:3]
        elif line.startswith("day "):
            key, _, counts = line[4:].partition("|")
            messages, _, nbytes = counts.partition("|")
            if messages.isdigit() and nbytes.isdigit():
                rows.append((key, int(messages), int(nbytes)))
    received: dict[datetime.date, tuple[int, int]] = {}
    logged = set()
    for key, messages, nbytes in rows:
        day = _day(key, today)
        if day is None:
            continue
        logged.add(day)
        old = received.get(day, (0, 0))
        received[day] = (old[0] + messages, old[1] + nbytes)
    return MailVolume(state, path, today, received, frozenset(logged))


def _day(key: str, today: datetime.date | None) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(key)
    except ValueError:
        pass
    month, _, day = key.partition(" ")
    if month not in _MONTHS or not day.strip().isdigit() or today is None:
        return None
    for year in (today.year, today.year - 1):
        try:
            found = datetime.date(year, _MONTHS[month], int(day))
        except ValueError:
            continue  # 29 Feb in a year without it
        if found <= today:
            return found
    return None


# --- mail taken without the milter (the failover drill) ---------------------------

# Postfix takes a message without its milter (``milter_default_action = accept``,
# docker-mailserver's) when the milter refused the connection or timed out: smtpd
# logs the warning between a session's "connect from" and its queue id's "client=",
# cleanup between a queue id's "message-id=" and the next one's. QUEUE_IDS is filled in.
MILTER_AWK = r"""
BEGIN { n = split("QUEUE_IDS", ids, " "); for (i = 1; i <= n; i++) wanted[ids[i]] = 1 }
/\/(smtpd|cleanup)\[[0-9]+\]: / {
  s = substr($0, index($0, "]: ") + 3)
  p = substr($0, 1, index($0, "]: ")); sub(/.*\//, "", p)
  if (s ~ /^connect from /) { missed[p] = ""; next }
  if (s ~ /^warning: (connect to Milter service|milter )/) {
    if (p ~ /^cleanup/ && (queue[p] in wanted)) print "milter " queue[p] "|" s
    else missed[p] = s
    next
  }
  if (s ~ /^[0-9A-Za-z]+: (client|message-id)=/) {
    q = substr(s, 1, index(s, ":") - 1); queue[p] = q
    if ((q in wanted) && missed[p] != "") print "milter " q "|" missed[p]
    if (p ~ /^cleanup/) missed[p] = ""
  }
}
"""
QUEUE_ID = re.compile(r"[0-9A-Za-z]+")


def log_reader(mailhost: MailHost, awk: str, days: int = 2) -> list[str]:
    """The argv that runs ``awk`` where Postfix runs, over its log and rotated copies of ``days`` days."""
    return mailhost.in_target(["sh", "-c", SCRIPT, "sh", mailhost.mail_log, mailhost.postfix_config_dir,
                               default_log(mailhost), str(days), awk])


def milter_awk(queue_ids: Iterable[str]) -> str:
    """``MILTER_AWK`` for these queue ids (each must look like one: they go into the program)."""
    ids = sorted(set(queue_ids))
    bad = [q for q in ids if not QUEUE_ID.fullmatch(q)]
    if bad:
        raise ValueError(f"not a Postfix queue id: {bad[0]!r}")
    return MILTER_AWK.replace("QUEUE_IDS", " ".join(ids))


def parse_milter_misses(lines: Iterable[str]) -> dict[str, str]:
    """``MILTER_AWK``'s output: per queue id, the first warning Postfix logged about its milter."""
    misses: dict[str, str] = {}
    for line in lines:
        if line.startswith("milter "):
            queue_id, _, warning = line[len("milter "):].rstrip("\n").partition("|")
            misses.setdefault(queue_id, warning)
    return misses
