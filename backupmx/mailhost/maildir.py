"""A Maildir on the mail host, read as a file tree (never through IMAP): the script that
lists the copies of given Message-IDs, run where the mailbox is, and its output parsed.
The failover drill and the canary both read their messages back with it.
"""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Sequence
from dataclasses import dataclass

# Per copy: the Message-ID, its size, its path and its header (the body stays on the
# host: the drill's large message is over 10 MB, and the mailbox is read every poll).
# Every folder of the Maildir is searched: Maildir++ subfolders too (docker-mailserver's
# sieve files spam into .Junk by default; a site's rules may file mail anywhere).
MAILDIR_SCRIPT = r'''dir=$1; shift
for id in "$@"; do
  for f in $(grep -rliF -e "message-id: $id" "$dir/new" "$dir/cur" "$dir"/.[!.]*/new "$dir"/.[!.]*/cur 2>/dev/null); do
    printf '==> %s %s %s %s\n' "$id" "$(wc -c < "$f")" "$(printf %s "$f" | base64 -w0)" \
      "$(sed '/^\r*$/q' "$f" | base64 -w0)"
  done
done
exit 0'''


@dataclass
class Delivered:
    """One copy in the Maildir: its header (parsed), its size in bytes and its path on the mail host."""

    message: email.message.EmailMessage
    size: int
    path: str


def parse_maildir_listing(lines: Sequence[str]) -> dict[str, list[Delivered]]:
    """``MAILDIR_SCRIPT``'s output: per searched id, each copy found."""
    found: dict[str, list] = {}
    for line in lines:
        if not line.startswith("==> "):
            continue
        _, message_id, size, path, header = line.split(" ", 4)
        message = email.message_from_bytes(base64.b64decode(header), policy=email.policy.default)
        found.setdefault(message_id, []).append(Delivered(message, int(size), base64.b64decode(path).decode()))
    return found
