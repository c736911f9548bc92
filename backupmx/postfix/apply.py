"""A host plan (``backupmx.postfix.hostplan.HostPlan``) as the commands of a pyinfra operation on the
current host: its refusal, or its review lines and its transaction
(``backupmx.postfix.transaction.Transaction``). The operations hand their plan down here once.

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

from paramiko.ssh_exception import SSHException
from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, QuoteString, StringCommand

from backupmx.core.plan_log import note_file_change
from backupmx.core.pyinfra_glue import executing_after_preparing, print_output, ssh_connected
from backupmx.core.review import fail, show, stop
from backupmx.postfix.hostplan import HostPlan
from backupmx.postfix.transaction import INLINE_SCRIPT_LIMIT, Transaction, transaction_script


def _script_command(script: str) -> StringCommand:
    return StringCommand("sh", "-c", QuoteString(script))


def apply_host_plan(plan: HostPlan) -> Iterator[FileUploadCommand | FunctionCommand]:
    """Yield from an operation: the plan's transaction, after its review lines; nothing when it has
    nothing to change; its refusal when it is refused."""
    if plan.refusal is not None:
        yield from stop(plan.refusal)
        return
    if not plan.changed:
        host.noop(plan.already)
        return
    if not executing_after_preparing():  # for the --dry plan documents (docs/ci.md), with the review
        for change in plan.files:
            note_file_change(host.name, change.path, change.old, change.new, plan.label)
    show(f"{plan.label}: {plan.summary()}", plan.diff())
    yield from transaction_commands(plan.transaction, plan.label)


def transaction_commands(tx: Transaction, label: str) -> Iterator[FileUploadCommand | FunctionCommand]:
    """Yield from an operation: the uploads (if any) and the transaction script (``label`` names it in errors)."""
    script = transaction_script(tx)
    if len(script) <= INLINE_SCRIPT_LIMIT:
        yield FunctionCommand(_run_transaction, (label, _script_command(script)), {})
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
    yield FunctionCommand(_run_transaction, (label, _script_command(transaction_script(tx, staged=staged))), {})


def _run_transaction(state, host, label: str, command: StringCommand) -> bool:  # (state, host): from pyinfra
    """Run one transaction script; a connection lost on the way gets a line of its own.

    pyinfra reports a session killed mid-command only as "executed 0 commands"
    (the channel closes without an exit status), which names nothing.
    """
    try:
        ok, output = host.run_shell_command(command, print_output=state.print_output,
                                            print_input=state.print_input)
    except (OSError, EOFError, SSHException) as error:
        return fail(None, host, _connection_lost(host, label, type(error).__name__))
    if ok:
        return True
    if not state.print_output:
        print_output(host, output)
    if not ssh_connected(host):
        return fail(None, host, _connection_lost(host, label, "the session closed without an exit status"))
    return False


def _connection_lost(host, label: str, how: str) -> str:
    return (f"SSH connection to {host.name} lost during {label} ({how}): the transaction may not have finished "
            f"on the host; no DNS change follows in this run; reconnect and run the deploy again (stage 3 re-plans "
            f"from what the host holds, stage 4 proves the result)")
