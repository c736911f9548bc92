"""The gate report's fact: how much mail the primary received per day, from its own Postfix log.

One read-only shell command (``backupmx.mailhost.maillog.SCRIPT``) run where Postfix
runs (through ``docker exec`` for docker-mailserver): it reads the log and its rotated
copies of the last month and prints one line per day, never the log itself.
"""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand

from backupmx.mailhost.maillog import AWK, DAYS, SCRIPT, MailVolume, parse_volume
from backupmx.postfix.shell import in_target


class MailLogVolume(FactBase):
    """
    Received messages and bytes per day in the mail host's Postfix log (the last ``days`` days):
    a ``backupmx.mailhost.maillog.MailVolume``.

    + mail_log: the log's path ("": Postfix's ``maillog_file``, else ``default``)
    + config_dir: Postfix's config directory (where ``maillog_file`` is read)
    + default: the flavour's log when ``maillog_file`` is not set

    .. code:: python

        host.get_fact(MailLogVolume, mail_log="", config_dir="/etc/postfix", default="/var/log/mail.log")
    """

    def command(self, mail_log, config_dir, default, days=DAYS, container=None, docker="docker"):
        argv = in_target(container, docker, ["sh", "-c", SCRIPT, "sh", mail_log, config_dir, default, str(days + 2),
                                             AWK])
        return StringCommand(*[QuoteString(part) for part in argv])

    @staticmethod
    def default():
        return MailVolume("unread")

    def process(self, output):
        return parse_volume(output)
