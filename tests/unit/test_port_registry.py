"""The machine-wide port registry (backupmx_sandbox.ports): no two worlds are ever given
the same port, even when they reserve at the same instant; ports lie outside the kernel's
ephemeral range; a world keeps its ports across `up`; a world whose directory is gone
frees them. No world runs here: each test has a registry file of its own."""

from __future__ import annotations

import json
import multiprocessing
import socket

import pytest

from backupmx_sandbox import ports
from backupmx_sandbox.ports import PortRegistry, candidate_ports
from backupmx_sandbox.world import Sandbox, write_private_json


def always_free(port: int, udp_too: bool) -> bool:
    return True


@pytest.fixture
def registry_file(tmp_path, monkeypatch):
    path = tmp_path / "registry" / "ports.json"
    monkeypatch.setenv("BACKUPMX_PORT_REGISTRY", str(path))
    return path


def world(tmp_path, name: str):
    root = tmp_path / name
    root.mkdir()
    return root


def test_candidates_lie_outside_the_ephemeral_range():
    found = candidate_ports((20000, 40000), ephemeral=(32768, 60999))
    assert found[0] == 20000 and found[-1] == 32767 and len(found) == 12768
    assert candidate_ports((1024, 65535), ephemeral=(2000, 65535)) == list(range(1024, 2000))
    with pytest.raises(RuntimeError, match="inside the ephemeral range"):
        candidate_ports((40000, 50000), ephemeral=(32768, 60999))


def test_the_default_range_avoids_this_machines_ephemeral_range():
    low, high = ports.ephemeral_range()
    assert not [port for port in candidate_ports() if low <= port <= high]


def test_port_range_from_the_environment(monkeypatch):
    monkeypatch.setenv("BACKUPMX_PORT_RANGE", "21000-21009")
    assert candidate_ports(ephemeral=(32768, 60999)) == list(range(21000, 21010))
    monkeypatch.setenv("BACKUPMX_PORT_RANGE", "21000")
    with pytest.raises(RuntimeError, match="LOW-HIGH"):
        candidate_ports()


def test_two_worlds_never_get_the_same_port(tmp_path, registry_file):
    registry = PortRegistry(registry_file, candidates=list(range(21000, 21010)), is_free=always_free)
    a, b = world(tmp_path, "a"), world(tmp_path, "b")
    got_a = [registry.reserve(a, f"p{n}") for n in range(4)]
    got_b = [registry.reserve(b, f"p{n}") for n in range(4)]
    assert not set(got_a) & set(got_b) and len(set(got_a + got_b)) == 8
    assert registry.owned(a) == {f"p{n}": port for n, port in enumerate(got_a)}
    # b cannot keep a's port; a can; the range runs out with a message naming the way out.
    with registry.locked() as data:
        assert registry.may_keep(a.resolve(), got_a[0], data)
        assert not registry.may_keep(b.resolve(), got_a[0], data)
    assert registry.reserve(b, "p9", keep=got_a[0]) not in got_a
    registry.reserve(b, "p10")
    with pytest.raises(RuntimeError, match="no free sandbox port"):
        registry.reserve(b, "p11")


def test_a_port_something_listens_on_is_skipped(tmp_path, registry_file):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not ports.bindable(taken)
        # Then ports the kernel just handed out and took back: free, unlike taken's neighbour,
        # which any process of a parallel suite may hold at that moment.
        free = []
        for _ in range(3):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                free.append(probe.getsockname()[1])
        registry = PortRegistry(registry_file, candidates=[taken, *free])
        assert registry.reserve(world(tmp_path, "a"), "smtp") in free


def test_the_ports_of_a_world_whose_directory_is_gone_are_freed(tmp_path, registry_file):
    registry = PortRegistry(registry_file, candidates=[21000, 21001], is_free=always_free)
    gone = world(tmp_path, "gone")
    assert registry.reserve(gone, "ssh") == 21000
    gone.rmdir()
    assert registry.reserve(world(tmp_path, "next"), "ssh") == 21000
    assert set(json.loads(registry_file.read_text())["ports"]) == {"21000"}


def test_release_frees_a_worlds_ports_and_addresses(tmp_path, registry_file):
    registry = PortRegistry(registry_file, candidates=[21000, 21001], is_free=always_free)
    a = world(tmp_path, "a")
    registry.reserve(a, "ssh")
    registry.reserve_address(a, "resolver", ["127.53.1.1"], lambda address: True)
    assert registry.release(a) == [21000]
    assert json.loads(registry_file.read_text()) == {"addresses": {}, "ports": {}}


def test_addresses_are_reserved_like_ports(tmp_path, registry_file):
    registry = PortRegistry(registry_file, candidates=[21000], is_free=always_free)
    a, b = world(tmp_path, "a"), world(tmp_path, "b")
    first = registry.reserve_address(a, "resolver", ["127.53.1.1", "127.53.1.2"], lambda address: True)
    second = registry.reserve_address(b, "resolver", ["127.53.1.1", "127.53.1.2"], lambda address: True)
    assert (first, second) == ("127.53.1.1", "127.53.1.2")
    assert registry.reserve_address(a, "resolver", [], lambda address: False, keep=first) == first
    with pytest.raises(RuntimeError):
        registry.reserve_address(b, "resolver", [], lambda address: False, keep=first)


def _reserve_many(args) -> list[int]:
    registry_path, root, count = args
    registry = PortRegistry(registry_path, candidates=list(range(21000, 21400)), is_free=always_free)
    return [registry.reserve(root, f"service{n}") for n in range(count)]


def test_worlds_reserving_at_the_same_instant_never_share_a_port(tmp_path, registry_file):
    roots = [world(tmp_path, f"w{n}") for n in range(8)]
    with multiprocessing.get_context("fork").Pool(8) as pool:
        results = pool.map(_reserve_many, [(registry_file, root, 20) for root in roots])
    every = [port for result in results for port in result]
    assert len(every) == 160 and len(set(every)) == 160
    recorded = json.loads(registry_file.read_text())["ports"]
    assert {int(port) for port in recorded} == set(every)


def test_a_sandbox_keeps_its_ports_and_moves_old_ones_only_while_down(tmp_path, registry_file, monkeypatch):
    monkeypatch.setenv("BACKUPMX_PORT_RANGE", "21000-21099")
    sandbox = Sandbox(root=tmp_path / "world")
    ssh = sandbox.port("ssh")
    assert 21000 <= ssh <= 21099 and sandbox.port("ssh") == ssh
    assert Sandbox(root=tmp_path / "world").port("ssh") == ssh
    other = Sandbox(root=tmp_path / "other")
    assert other.port("ssh") != ssh

    # A port chosen before the registry (inside the ephemeral range) stays while the world runs...
    low, _high = ports.ephemeral_range()
    write_private_json(sandbox.root / "ports.json", {"ssh": ssh, "old": low})
    assert sandbox.reserve_ports(running=True) == []
    assert sandbox.ports() == {"ssh": ssh, "old": low}
    # ...and moves at the next `up` of a stopped world; a port another world holds moves too.
    write_private_json(sandbox.root / "ports.json", {"ssh": ssh, "old": low, "stolen": other.port("ssh")})
    assert sorted(sandbox.reserve_ports(running=False)) == ["old", "stolen"]
    assert sandbox.ports() == {"ssh": ssh}
    assert sandbox.port("old") not in (low, ssh, other.port("ssh"))
    # A running world whose port another world holds cannot be fixed in place: it says so.
    write_private_json(sandbox.root / "ports.json", {"ssh": ssh, "stolen": other.port("ssh")})
    with pytest.raises(RuntimeError, match="reserved by"):
        sandbox.reserve_ports(running=True)
