"""The per-run state holder (backupmx.core.context) against pyinfra's own State, no host contacted."""

from __future__ import annotations

import gevent
from pyinfra.api import Config, Inventory, State
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state

from backupmx.core import context


def make_state() -> State:
    return State(inventory=Inventory((["mx1", "mx2", "relay1"], {}), relay=(["relay1"], {})), config=Config())


def on(state: State, host_name: str):
    ctx_state.set(state)
    ctx_host.set(state.inventory.get_host(host_name))


def teardown_function():
    ctx_state.reset()
    ctx_host.reset()


def test_a_run_value_is_made_once_per_state_even_when_making_it_switches_greenlets():
    state, other = make_state(), make_state()
    made = []

    def make():
        gevent.sleep(0.01)  # a Vault read: the other greenlet runs meanwhile
        made.append(1)
        return object()

    def ask(host_name):
        on(state, host_name)
        return context.run_value("run", make)

    first, second = gevent.joinall([gevent.spawn(ask, "mx1"), gevent.spawn(ask, "mx2")])
    assert first.value is second.value and len(made) == 1
    on(other, "mx1")
    assert context.run_value("run", make) is not first.value


def test_memory_is_per_host_taken_once_unless_kept_and_not_written_at_execution():
    state = make_state()
    on(state, "mx1")
    context.remember("plan", "mx1's plan")
    context.remember("fact", "shared")
    on(state, "mx2")
    assert context.recall("plan") is None
    on(state, "mx1")
    assert context.recall("fact", keep=True) == "shared" == context.recall("fact", keep=True)
    assert context.recall("plan") == "mx1's plan"
    assert context.recall("plan", default="gone") == "gone"
    state.is_executing = True
    context.remember("late", "value")
    assert context.recall("late") is None


def test_where_pyinfra_is():
    assert not context.executing() and not context.executing_after_preparing()
    assert context.relay_group() is None  # outside a pyinfra run
    state = make_state()
    on(state, "mx1")
    assert [target.name for target in context.relay_group()] == ["relay1"]
    state.is_executing = True
    state.check_for_changes = False  # -y: the bodies run only now
    assert context.executing() and not context.executing_after_preparing()
    state.check_for_changes = True
    assert context.executing_after_preparing()


def test_the_run_end_as_the_at_exit_report_sees_it(monkeypatch):
    registered, ends = [], []
    monkeypatch.setattr(context.atexit, "register", registered.append)
    review, live = make_state(), make_state()
    on(review, "mx1")
    context.at_exit(ends.append)
    on(live, "mx1")
    context.at_exit(ends.append)
    live.current_stage = StateStage.Execute
    live.failed_hosts.add(live.inventory.get_host("mx2"))
    for report in registered:
        report()
    assert [(end.executed, end.failed_hosts) for end in ends] == [(False, frozenset()), (True, {"mx2"})]
    assert ends[0].group("relay") == {"relay1"} and ends[0].group("nothing") == frozenset()
