"""Machine-wide reservation of the sandbox worlds' listening ports and resolver addresses.

Several worlds run on one machine at once: one per worker of a parallel test run
(``make test``), the benchmarks' own, a developer's ``.sandbox`` beside them, another
checkout's. Each world keeps its ports in its ``ports.json`` (the same on every ``up``);
this registry makes sure no two worlds are ever given the same one, even when they
start at the same instant:

* the candidates lie outside the kernel's ephemeral range
  (``/proc/sys/net/ipv4/ip_local_port_range``): an outgoing connection's source port
  never takes a port a world reserved but has not bound yet (a stopped world keeps its
  ports, so ``up`` after ``down`` gives the same world);
* the registry file (``/var/tmp/backupmx-sandbox-ports-<uid>.json``, or
  ``BACKUPMX_PORT_REGISTRY``) names the world directory that owns each reserved port,
  and is only read and written under an exclusive ``flock`` of its lock file;
* a candidate is reserved only if nobody listens on it (TCP, and UDP when asked);
* an entry whose world directory is gone is freed by the next reservation.

``BACKUPMX_PORT_RANGE=LOW-HIGH`` picks the range the candidates come from (default
20000-32767, less any part of it inside the ephemeral range).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"
DEFAULT_RANGE = (20000, 32767)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (and ``bind(0)``)."""
    try:
        low, high = (int(value) for value in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def configured_range() -> tuple[int, int]:
    text = os.environ.get("BACKUPMX_PORT_RANGE", "")
    if not text:
        return DEFAULT_RANGE
    try:
        low, high = (int(part) for part in text.split("-"))
    except ValueError:
        raise RuntimeError(f"BACKUPMX_PORT_RANGE={text!r}: expected LOW-HIGH, e.g. 20000-32767") from None
    if not 1024 <= low <= high <= 65535:
        raise RuntimeError(f"BACKUPMX_PORT_RANGE={text!r}: expected 1024 <= LOW <= HIGH <= 65535")
    return low, high


def candidate_ports(wanted: tuple[int, int] | None = None,
                    ephemeral: tuple[int, int] | None = None) -> list[int]:
    """The ports of ``wanted`` (default: ``configured_range()``) outside the ephemeral range."""
    low, high = wanted or configured_range()
    eph_low, eph_high = ephemeral or ephemeral_range()
    ports = [port for port in range(low, high + 1) if not eph_low <= port <= eph_high]
    if not ports:
        raise RuntimeError(f"no sandbox port: {low}-{high} lies inside the ephemeral range {eph_low}-{eph_high} "
                           f"({EPHEMERAL_RANGE_FILE}); set BACKUPMX_PORT_RANGE=LOW-HIGH outside it")
    return ports


def default_registry_path() -> Path:
    explicit = os.environ.get("BACKUPMX_PORT_REGISTRY")
    if explicit:
        return Path(explicit)
    return Path("/var/tmp") / f"backupmx-sandbox-ports-{os.getuid()}.json"


def bindable(port: int, udp_too: bool = False, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be bound on ``host`` now (nobody listens there, no socket holds it)."""
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp_too else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


class PortRegistry:
    """The registry file: ``{"ports": {"PORT": {"owner", "name"}}, "addresses": {"ADDR": {...}}}``."""

    def __init__(self, path: Path | None = None, candidates: list[int] | None = None,
                 is_free: Callable[[int, bool], bool] = bindable):
        self.path = Path(path) if path else default_registry_path()
        self._candidates = candidates
        self._is_free = is_free

    @property
    def candidates(self) -> list[int]:
        if self._candidates is None:
            self._candidates = candidate_ports()
        return self._candidates

    @contextmanager
    def locked(self) -> Iterator[dict]:
        """The registry's content, held under the exclusive lock; written back when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self._read()
                before = json.dumps(data, sort_keys=True)
                _prune(data)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    self._write(data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except ValueError:
            data = {}  # a torn or foreign file: every live world re-reserves its ports on `up`
        data.setdefault("ports", {})
        data.setdefault("addresses", {})
        return data

    def _write(self, data: dict) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    # --- ports ---------------------------------------------------------------------------

    def reserve(self, owner: Path, name: str, udp_too: bool = False, keep: int | None = None,
                data: dict | None = None) -> int:
        """A port for ``owner``'s ``name``: ``keep`` if it is still allowed and not another world's,
        else the first free candidate. Reserved in the registry before it is returned."""
        if data is None:
            with self.locked() as data:
                return self.reserve(owner, name, udp_too, keep, data)
        owner = str(Path(owner).resolve())
        entries = data["ports"]
        if keep is not None and self.may_keep(owner, keep, data):
            entries[str(keep)] = {"owner": owner, "name": name}
            return keep
        for port in self.candidates:
            if str(port) in entries or not self._is_free(port, udp_too):
                continue
            entries[str(port)] = {"owner": owner, "name": name}
            return port
        raise RuntimeError(f"no free sandbox port left in {self.candidates[0]}-{self.candidates[-1]} "
                           f"({len(entries)} reserved in {self.path}); remove worlds you no longer use "
                           "(their directories), or set BACKUPMX_PORT_RANGE")

    def may_keep(self, owner: Path | str, port: int, data: dict) -> bool:
        """Whether ``owner`` may keep ``port``: a candidate, and not reserved by another world."""
        entry = data["ports"].get(str(port))
        return port in self._candidate_set() and (entry is None or entry["owner"] == str(owner))

    def _candidate_set(self) -> set[int]:
        if not hasattr(self, "_set"):
            self._set = set(self.candidates)
        return self._set

    def owned(self, owner: Path) -> dict[str, int]:
        owner = str(Path(owner).resolve())
        with self.locked() as data:
            return {entry["name"]: int(port) for port, entry in data["ports"].items() if entry["owner"] == owner}

    def release(self, owner: Path) -> list[int]:
        """Free every port and address of ``owner`` (a world whose directory is about to go)."""
        owner = str(Path(owner).resolve())
        with self.locked() as data:
            freed = [int(port) for port, entry in data["ports"].items() if entry["owner"] == owner]
            for kind in ("ports", "addresses"):
                data[kind] = {key: entry for key, entry in data[kind].items() if entry["owner"] != owner}
            return freed

    # --- addresses (a port 53 of a loopback address of its own) ------------------------------

    def reserve_address(self, owner: Path, name: str, candidates: Iterable[str],
                        usable: Callable[[str], bool], keep: str | None = None) -> str:
        """The first of ``candidates`` that no other world reserved and ``usable`` accepts."""
        owner = str(Path(owner).resolve())
        with self.locked() as data:
            entries = data["addresses"]
            if keep is not None and entries.get(keep, {"owner": owner})["owner"] == owner:
                entries[keep] = {"owner": owner, "name": name}
                return keep
            for address in candidates:
                entry = entries.get(address)
                if entry is not None and entry["owner"] != owner:
                    continue
                if usable(address):
                    entries[address] = {"owner": owner, "name": name}
                    return address
        raise RuntimeError(f"no free address for {name} (reserved in {self.path})")


def _prune(data: dict) -> None:
    """Free the entries of worlds whose directory is gone."""
    alive: dict[str, bool] = {}
    for kind in ("ports", "addresses"):
        kept = {}
        for key, entry in data[kind].items():
            owner = entry.get("owner", "") if isinstance(entry, dict) else ""
            if owner not in alive:
                alive[owner] = bool(owner) and os.path.isdir(owner)
            if alive[owner]:
                kept[key] = entry
        data[kind] = kept
