"""Gate G2 for provider selfhosted: a relay takes the largest message any primary takes."""

from backupmx.core.report import FAIL, PASS, WARN
from backupmx.gates.message_size import message_size_rows


def test_no_relay_host_no_row():
    assert message_size_rows({"mx1": 10240000}, {}) == []


def test_a_relay_as_large_as_the_largest_primary_passes():
    rows = message_size_rows({"mx1": 10240000, "mx2": 5000000, "mx3": None}, {"relay": 10240000})
    assert [(row.key, row.status) for row in rows] == [("G2", PASS)]
    assert rows[0].evidence == "relay: message_size_limit 10240000 bytes, primary 10240000 bytes (mx1, mx2)"


def test_a_smaller_relay_fails_with_the_inventory_change():
    [row] = message_size_rows({"mx1": 10240000}, {"relay": 1000000})
    assert row.status == FAIL
    assert row.evidence.startswith("relay: message_size_limit 1000000 bytes < primary 10240000 bytes (mx1)")
    assert row.next_step.startswith("set relayhost.message_size_limit = 10240000 for relay")


def test_a_primary_without_limit_needs_a_relay_without_limit():
    assert message_size_rows({"mx1": 0}, {"relay": 0})[0].status == PASS
    [row] = message_size_rows({"mx1": 0, "mx2": 5000000}, {"relay": 99999999})
    assert row.status == FAIL and "primary no limit" in row.evidence


def test_sizes_not_read_are_warnings():
    [row] = message_size_rows({"mx1": None}, {"relay": 10240000})
    assert row.status == WARN and row.next_step == "run with the mail hosts"
    rows = message_size_rows({"mx1": 10240000}, {"b-relay": None, "a-relay": 10240000})
    assert [(row.evidence.split(":")[0], row.status) for row in rows] == [("a-relay", PASS), ("b-relay", WARN)]
