"""What an operation says to the operator, said one way by every operation: the lines of the review,
and the refusal that stops an operation (while preparing: one ``OperationError`` line, nothing run;
when it runs: a logged line and a failed command, so the host runs nothing after it).
"""

from __future__ import annotations

from typing import Callable, Iterable

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError

from backupmx.core.pyinfra_glue import executing, executing_after_preparing


def show(message: str, lines: Iterable[str] = (), log_func: Callable = logger.info, review_only: bool = False) -> None:
    """A line of the review, and ``lines`` indented under it (a diff): shown while preparing (the
    ``--dry`` review) and, with ``-y`` (no preparing pass), once when the operation runs; never
    twice. ``review_only``: never when it runs (the steps then say what they do themselves)."""
    if executing_after_preparing() or (review_only and executing()):
        return
    host.log(message, log_func)
    for line in lines:
        logger.info("    %s", line)


def fail(state, host, message: str) -> bool:  # (state, host): pyinfra passes them to a FunctionCommand
    """A ``FunctionCommand`` callback that fails the operation with one logged line."""
    host.log(f"backupmx: {message}", log_func=logger.error)
    return False


def stop(message: str):
    """Fail this operation with one line (``yield from stop(...)``): while preparing, or when it runs."""
    if not executing():
        raise OperationError(message)
    yield FunctionCommand(fail, (message,), {})
