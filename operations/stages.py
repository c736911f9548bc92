"""Ordering between hosts: pyinfra orders operations per host, not across hosts."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation


@operation()
def boundary(stage: str):
    """
    Mark the end of a stage on every host, so that later operations of any host run after it.

    + stage: what has finished, for the output

    pyinfra merges each host's own sequence of operations; an operation that only
    the controller has (stage 5) could otherwise run before the mail hosts' stage
    3. Called unconditionally by every host at the same line, this operation is a
    node all hosts share: everything before it on any host runs before anything
    after it on any host. It changes nothing.

    **Example:**

    .. code:: python

        boundary(name="Stages 3-4 done on every mail host", stage="stages 3-4")
    """
    host.noop(f"{stage} finished")
    return
    yield  # an operation is a generator
