"""The per-run state holder (backupmx.core.context) against pyinfra's own State, no host contacted."""

from __future__ import annotations

import gevent
from backupmx.core import context
from support.pyinfra_state import make_state, on, reset


def teardown_function():
    reset()


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


def test_the_relay_group_is_the_inventorys_whatever_the_limit():
    assert context.relay_group() is None  # outside a pyinfra run
    on(make_state(), "mx1")
    assert [target.name for target in context.relay_group()] == ["relay1"]
