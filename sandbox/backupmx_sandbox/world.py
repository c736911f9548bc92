"""The sandbox's on-disk state: directory, stable ports and secrets, CA, world.json.

Everything the sandbox creates lives under one directory (``.sandbox/`` in the
project root unless ``BACKUPMX_SANDBOX_DIR`` says otherwise). Ports and generated
secrets are chosen once and kept, so ``up`` after ``down`` gives the same world.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
    link = PROJECT_ROOT / ".sandbox"
    if not link.exists() and not _traversable_by_all(PROJECT_ROOT):
        digest = hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:12]
        target = Path("/var/tmp") / f"backupmx-sandbox-{digest}"
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


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


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
        """A loopback port reserved for ``name``, the same on every ``up``."""
        ports = self._load(self._ports_file)
        if name not in ports:
            taken = set(ports.values())
            while True:
                candidate = _free_port()
                if candidate in taken:
                    continue
                if udp_too:
                    try:
                        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                            udp.bind((LOOPBACK, candidate))
                    except OSError:
                        continue
                break
            ports[name] = candidate
            write_private_json(self._ports_file, ports)
        return ports[name]

    def address(self, name: str, choose: Callable[[], str]) -> str:
        """A loopback address reserved for ``name`` (``choose`` picks it once), the same on every ``up``."""
        addresses = self._load(self._addresses_file)
        if name not in addresses:
            addresses[name] = choose()
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
