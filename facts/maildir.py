"""The canary's fact: messages in a Maildir on the mail host, read over its SSH connection.

One read-only script (``backupmx.mailhost.maildir.MAILDIR_SCRIPT``, the failover
drill's Maildir reader) run where the mailbox is: on the host (native) or through
``docker exec`` (docker-mailserver). No credential is involved: the Maildir is read
as a file tree, never through IMAP.
"""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand

from backupmx.mailhost.maildir import MAILDIR_SCRIPT, parse_maildir_listing
from backupmx.postfix.shell import in_target

PRESENT, MISSING = "==maildir present", "==maildir missing"
# Says whether the Maildir exists before listing, so "not there" never reads as "not delivered".
SCRIPT = (f'if [ -d "$1/new" ] || [ -d "$1/cur" ]; then echo "{PRESENT}"; else echo "{MISSING}"; fi\n'
          + MAILDIR_SCRIPT)


class MaildirMessages(FactBase):
    """
    The messages whose Message-ID starts with ``prefix`` in the Maildir ``maildir``
    (``new`` and ``cur``): ``{"present": bool, "messages": {prefix: [Delivered, ...]}}``,
    each copy's header (an ``email.message.EmailMessage``), size and file.

    .. code:: python

        host.get_fact(MaildirMessages, maildir="/var/mail/canary", prefix="<backupmx-canary.")
    """

    def command(self, maildir, prefix, container=None, docker="docker"):
        argv = in_target(container, docker, ["sh", "-c", SCRIPT, "sh", maildir, prefix])
        return StringCommand(*[QuoteString(part) for part in argv])

    @staticmethod
    def default():
        return {"present": False, "messages": {}}

    def process(self, output):
        lines = list(output)
        return {"present": PRESENT in (line.strip() for line in lines), "messages": parse_maildir_listing(lines)}
