"""The commands that run one ``backupmx.mailhost.Transaction`` on the current host.

Shared by the mail host stage (stage 3) and the monitoring stage (stage 6), so
both get the same answer to one limit: a command sent over SSH reaches the host
as a single argument of the login shell, and Linux refuses any argument above
128 KiB (``MAX_ARG_STRLEN``; the SSH session just closes, "executed 0 commands").
A transaction small enough travels as one script, contents inline (one round
trip, the common case); a larger one first uploads each new file over SFTP to a
temporary file and the script, still all-or-nothing, checks and uses those.
"""

from __future__ import annotations

import hashlib
import io
from typing import Iterator

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand

from backupmx import mailhost as mh


def _script_command(script: str) -> StringCommand:
    return StringCommand("sh", "-c", QuoteString(script))


def transaction_commands(tx: mh.Transaction) -> Iterator[FileUploadCommand | StringCommand]:
    """Yield from an operation: the uploads (if any) and the transaction script."""
    script = mh.transaction_script(tx)
    if len(script) <= mh.INLINE_SCRIPT_LIMIT:
        yield _script_command(script)
        return
    staged = {}
    for change in tx.files:
        if change.new is None:
            continue
        content = change.new.encode("utf-8", "surrogateescape")
        # Named after the target and the content: a re-run uploads to the same
        # name, and two transactions never share one.
        staged[change.path] = host.get_temp_filename(
            f"backupmx-staged {change.path} {hashlib.sha256(content).hexdigest()}")
        yield FileUploadCommand(io.BytesIO(content), staged[change.path])
    yield _script_command(mh.transaction_script(tx, staged=staged))
