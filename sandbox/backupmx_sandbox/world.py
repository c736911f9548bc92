"""The sandbox's on-disk state: directory, stable ports and secrets, CA, world.json.

Everything the sandbox creates lives under one directory (``.sandbox/`` in the
project root unless ``BACKUPMX_SANDBOX_DIR`` says otherwise). Ports and generated
secrets are chosen once and kept, so ``up`` after ``down`` gives the same world;
ports and the resolver's address are reserved machine-wide (``backupmx_sandbox.ports``),
so several worlds run side by side (``make test`` has one per worker, ``world_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from backupmx_sandbox.ports import PortRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
# The sandbox mail host: Postfix and rspamd run natively, or the real docker-mailserver.
PRIMARY_FLAVOURS = ("native", "docker-mailserver")


def sandbox_root() -> Path:
    """Where the sandbox keeps its state: ``BACKUPMX_SANDBOX_DIR`` or ``.sandbox/``.

    Postfix's master, its delivery agents and rspamd drop to their own users and
    must traverse every directory above their files. A project checked out under
    ``/root`` (mode 700) is closed to them, so there ``.sandbox`` becomes a link to
    a directory under /var/tmp, and every path written into a config is the real one.
    """
    explicit = os.environ.get("BACKUPMX_SANDBOX_DIR")
    if explicit:
        return Path(explicit).resolve()
    if not (PROJECT_ROOT / "sandbox" / "backupmx_sandbox").is_dir():
        # Installed as a copy (a plain `pip install ./sandbox`): PROJECT_ROOT is not the checkout.
        raise SystemExit(f"backupmx-sandbox is installed as a copy, in {Path(__file__).resolve().parent}, and "
                         f"its world belongs to the checkout: install it in place (pip install --no-deps -e ./sandbox "
                         f"from the checkout; make setup does), or set BACKUPMX_SANDBOX_DIR")
    return _project_dir(".sandbox", str(PROJECT_ROOT))


def world_dir(label: str) -> Path:
    """The directory of another world beside the default one (a test worker's, ``label`` ``gw0``).

    ``$BACKUPMX_SANDBOX_DIR-<label>`` when that is set, else ``.sandbox-<label>`` in the
    project, a link to /var/tmp like ``.sandbox`` when the project is not traversable by all.
    Not created here: ``Sandbox(root)`` creates it.
    """
    explicit = os.environ.get("BACKUPMX_SANDBOX_DIR")
    if explicit:
        return Path(f"{Path(explicit).resolve()}-{label}")
    return _project_dir(f".sandbox-{label}", f"{PROJECT_ROOT}:{label}")


def _project_dir(name: str, key: str) -> Path:
    link = PROJECT_ROOT / name
    if not link.exists() and not _traversable_by_all(PROJECT_ROOT):
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        suffix = "" if name == ".sandbox" else name.removeprefix(".sandbox")
        target = Path("/var/tmp") / f"backupmx-sandbox-{digest}{suffix}"
        target.mkdir(mode=0o755, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return link.resolve()


def _traversable_by_all(path: Path) -> bool:
    return all(os.stat(part).st_mode & 0o001 for part in [path, *path.parents])


def world_path() -> Path:
    return sandbox_root() / "world.json"


def load_world(path: Path | None = None) -> dict:
    """The world file that ``backupmx-sandbox up`` wrote; what tests and inventories read."""
    path = path or world_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: no sandbox world; run `backupmx-sandbox up` (or `make demo`) first") from None


def write_private_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


@dataclass
class Service:
    """One long-running process of the sandbox, started and stopped by pid.

    ``ready`` is polled after start until it returns True; ``after_start`` runs once
    it is ready (seeding data into it). ``argv`` must keep the process in the
    foreground so its pid is the one to stop.
    """

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    after_start: Callable[[], None] | None = None
    ready_timeout: float = 60.0
    stop_signal: int = 15


@dataclass
class Sandbox:
    root: Path = field(default_factory=sandbox_root)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._ports_file = self.root / "ports.json"
        self._secrets_file = self.root / "secrets.json"
        self._addresses_file = self.root / "addresses.json"

    def dir(self, *parts: str, mode: int = 0o755) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        return path

    def _load(self, path: Path) -> dict:
        return json.loads(path.read_text()) if path.exists() else {}

    def port(self, name: str, udp_too: bool = False) -> int:
        """A loopback port reserved for ``name``, the same on every ``up``.

        Chosen once, outside the kernel's ephemeral range, and reserved machine-wide
        (``backupmx_sandbox.ports``): no other world is ever given it.
        """
        ports = self._load(self._ports_file)
        if name in ports:
            return ports[name]
        registry = PortRegistry()
        with registry.locked() as data:
            ports = self._load(self._ports_file)  # another process of this world may have chosen it meanwhile
            if name not in ports:
                ports[name] = registry.reserve(self.root, name, udp_too=udp_too, data=data)
                write_private_json(self._ports_file, ports)
        return ports[name]

    def reserve_ports(self, running: bool) -> list[str]:
        """Reserve every port and address this world already chose (``up`` calls it first).

        A stored port that is no longer allowed (inside the ephemeral range: chosen before the
        registry) or that another world holds is dropped, to be chosen again, when nothing of
        this world runs; a running world keeps it (``down`` then ``up`` moves it). Returns the
        names dropped.
        """
        registry = PortRegistry()
        dropped = []
        with registry.locked() as data:
            ports = self._load(self._ports_file)
            for name, port in sorted(ports.items()):
                if registry.may_keep(self.root, port, data):
                    registry.reserve(self.root, name, keep=port, data=data)
                    continue
                holder = data["ports"].get(str(port))
                if running and holder is not None:
                    raise RuntimeError(f"port {port} ({name}) of the running world {self.root} is reserved by "
                                       f"{holder['owner']}; stop this world (`backupmx-sandbox down`) and start it "
                                       "again to move it")
                if not running:
                    dropped.append(name)
            if dropped:
                write_private_json(self._ports_file, {k: v for k, v in ports.items() if k not in dropped})
        addresses = self._load(self._addresses_file)
        kept = {}
        for name, address in sorted(addresses.items()):
            try:
                kept[name] = registry.reserve_address(self.root, name, [], lambda _: False, keep=address)
            except RuntimeError:
                if running:
                    raise RuntimeError(f"address {address} ({name}) of the running world {self.root} is reserved "
                                       "by another world; stop this world and start it again to move it") from None
                dropped.append(name)
        if kept != addresses:
            write_private_json(self._addresses_file, kept)
        return dropped

    def address(self, name: str, candidates: Iterable[str], usable: Callable[[str], bool]) -> str:
        """A loopback address reserved for ``name``: the first of ``candidates`` that ``usable``
        accepts and no other world holds; the same on every ``up``."""
        addresses = self._load(self._addresses_file)
        if name not in addresses:
            addresses[name] = PortRegistry().reserve_address(self.root, name, candidates, usable)
            write_private_json(self._addresses_file, addresses)
        return addresses[name]

    @property
    def primary(self) -> str:
        """Which primary this sandbox runs (``PRIMARY_FLAVOURS``): the last ``up --primary``, else native."""
        path = self.root / "primary"
        return path.read_text().strip() if path.exists() else PRIMARY_FLAVOURS[0]

    def choose_primary(self, flavour: str) -> None:
        if flavour not in PRIMARY_FLAVOURS:
            raise ValueError(f"{flavour!r} is not a primary: use one of {', '.join(PRIMARY_FLAVOURS)}")
        (self.root / "primary").write_text(flavour + "\n")

    def ports(self) -> dict[str, int]:
        return self._load(self._ports_file)

    def secret(self, name: str, factory: Callable[[], str] | None = None) -> str:
        """A generated secret kept in ``secrets.json`` (mode 600), the same on every ``up``."""
        values = self._load(self._secrets_file)
        if name not in values:
            values[name] = factory() if factory else secrets.token_urlsafe(30)
            write_private_json(self._secrets_file, values)
        return values[name]

    @property
    def ca(self) -> "SandboxCA":
        return SandboxCA(self.dir("ca", mode=0o755))


class SandboxCA:
    """A throw-away certificate authority for the sandbox's TLS endpoints.

    Clients are told to trust ``ca.pem`` explicitly; nothing is added to the
    machine's trust store.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.cert_path = directory / "ca.pem"
        self._key_path = directory / "ca.key"

    def _authority(self):
        import trustme

        if not self.cert_path.exists():
            ca = trustme.CA(organization_name="backupmx sandbox CA")
            ca.cert_pem.write_to_path(str(self.cert_path))
            ca.private_key_pem.write_to_path(str(self._key_path))
            os.chmod(self._key_path, 0o600)
            return ca
        return trustme.CA.from_pem(self.cert_path.read_bytes(), self._key_path.read_bytes())

    def issue(self, name: str, hostnames: list[str], not_after=None) -> tuple[Path, Path]:
        """Certificate and key files for ``hostnames``; kept once made (delete to renew)."""
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        if not cert_path.exists():
            leaf = self._authority().issue_cert(*hostnames, not_after=not_after)
            leaf.cert_chain_pems[0].write_to_path(str(cert_path))
            leaf.private_key_pem.write_to_path(str(key_path))
            os.chmod(key_path, 0o600)
        return cert_path, key_path
