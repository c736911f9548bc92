"""The self-hosted relay's bounces, read from its own mail log.

Postfix keeps nothing of a message it bounced: the message leaves the queue, and a
delivery status notification to its sender takes its place (gone too once sent).
What stays is the log: the queue manager's ``QUEUEID: from=<sender>`` line, and the
delivery agent's ``QUEUEID: to=<recipient>, ..., status=bounced (the reply)``, e.g.
``host 203.0.113.5[203.0.113.5] said: 550 5.7.1 ... (in reply to RCPT TO command)``
when the primary refused it.

Which log: the relay's ``maillog_file`` when its Postfix writes one, else Debian's
``/var/log/mail.log`` (rsyslog), else the journal's mail facility (Debian 12 without
rsyslog). Only the last ``LOG_LINES`` lines are read, and only the lines that matter
leave the relay host.
"""

from __future__ import annotations

import re

from backupmx.providers.base import BouncedMessage

LOG_LINES = 20000

# $1: the relay's Postfix config dir. Prints the from= and status=bounced lines of the
# log's tail; exits non-zero (with a reason on stderr) only when no log can be read.
READ_SCRIPT = r"""
config=$1
lines=$2
log=$(postconf -c "$config" -h maillog_file 2>/dev/null)
if [ -n "$log" ] && [ -r "$log" ]; then
    read_log() { tail -n "$lines" "$log"; }
elif [ -r /var/log/mail.log ]; then
    read_log() { tail -n "$lines" /var/log/mail.log; }
elif command -v journalctl >/dev/null 2>&1; then
    read_log() { journalctl -q --no-pager -o short -n "$lines" SYSLOG_FACILITY=2; }
else
    echo "no mail log to read: maillog_file unset, no /var/log/mail.log, no journalctl" >&2
    exit 1
fi
read_log | grep -E ': from=<|status=bounced'
[ $? -le 1 ]
"""

# "Dec  6 19:06:01 relay1 postfix/smtp[123]: 4B1D2C3E4F: to=<a@b>, relay=..., status=bounced (reply)"
_LINE = re.compile(r"^(?P<at>\S+\s+\d+\s+[\d:]+|\d{4}-\d\d-\d\dT\S+)\s+\S+\s+[^\s:]+\[\d+\]:\s+"
                   r"(?P<queue_id>[0-9A-Za-z]+):\s+(?P<rest>.*)$")
_FROM = re.compile(r"^from=<(?P<sender>[^>]*)>")
_BOUNCED = re.compile(r"^to=<(?P<recipient>[^>]*)>,.*?\bstatus=bounced \((?P<reply>.*)\)\s*$")


def read_argv(config_dir: str, lines: int = LOG_LINES) -> list[str]:
    """The command that prints the relevant lines of the relay's mail log."""
    return ["sh", "-c", READ_SCRIPT, "sh", config_dir, str(lines)]


def bounces_in(lines: list[str], domain: str, relay: str) -> list[BouncedMessage]:
    """The bounces for recipients in ``domain``, one per bounced message (oldest first)."""
    senders: dict[str, str] = {}
    found: dict[str, BouncedMessage] = {}
    suffix = "@" + domain.lower()
    for line in lines:
        match = _LINE.match(line.strip())
        if not match:
            continue
        queue_id, rest = match["queue_id"], match["rest"]
        sender = _FROM.match(rest)
        if sender:
            senders[queue_id] = sender["sender"]
            continue
        bounced = _BOUNCED.match(rest)
        if not bounced or not bounced["recipient"].lower().endswith(suffix):
            continue
        key = f"{relay}:{queue_id}"
        before = found.get(key)
        recipients = (before.recipients if before else ()) + (bounced["recipient"],)
        found[key] = BouncedMessage(id=key, sender=senders.get(queue_id, ""), recipients=recipients,
                                    reply=bounced["reply"], at=match["at"], relay=relay)
    return list(found.values())
