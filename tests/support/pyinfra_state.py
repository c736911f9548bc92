"""A pyinfra State made in the test, without the CLI: hosts mx1, mx2 and relay1 (group ``relay``),
made current for one host; ``reset`` undoes it after each test."""

from __future__ import annotations

from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_host, ctx_state


def make_state() -> State:
    return State(inventory=Inventory((["mx1", "mx2", "relay1"], {}), relay=(["relay1"], {})), config=Config())


def on(state: State, host_name: str) -> None:
    ctx_state.set(state)
    ctx_host.set(state.inventory.get_host(host_name))


def reset() -> None:
    ctx_state.reset()
    ctx_host.reset()
