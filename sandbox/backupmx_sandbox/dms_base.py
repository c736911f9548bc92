"""The Debian 12 base image the DMS image is built FROM, made here instead of pulled.

Docker Hub is unreachable from the project's machines, the Debian mirror is not: the
base is ``debootstrap --variant=minbase bookworm`` from the mirror the machine's own
apt uses, with the machine's apt settings that make that mirror work (Check-Valid-Until
for a snapshot mirror, proxies), imported with ``podman import``. It stands in for
``docker.io/debian:12-slim``; its tag carries a key of everything that shapes it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backupmx_sandbox.dms_podman import cache_dir, cache_lock, image_exists, podman, run_logged

SUITE = "bookworm"
BASE_REPO = "localhost/backupmx-sandbox/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# apt settings that decide whether the mirror answers at all; the rest are the machine's taste.
APT_KEYS = ("Acquire::Check-Valid-Until", "Acquire::Check-Date", "Acquire::Retries", "Acquire::http::Proxy",
            "Acquire::https::Proxy", "Acquire::ftp::Proxy")
# Suites a Debian archive (not a third-party repository) serves.
DEBIAN_SUITES = {"bullseye", "bookworm", "trixie", "forky", "sid", "oldstable", "stable", "testing", "unstable"}


@dataclass(frozen=True)
class AptSource:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def read_apt_sources(apt_dir: Path = Path("/etc/apt")) -> list[AptSource]:
    """The machine's enabled apt sources, in the order apt reads them, from both the
    one-line ``sources.list`` format and the DEB822 ``*.sources`` format."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    sources: list[AptSource] = []
    for path in files:
        if path.name.endswith(".list") and path.is_file():
            sources += _one_line_sources(path.read_text())
        elif path.name.endswith(".sources") and path.is_file():
            sources += _deb822_sources(path.read_text())
    return sources


def _one_line_sources(text: str) -> list[AptSource]:
    sources = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) > 1 and words[1].startswith("["):
            while len(words) > 1 and not words[1].endswith("]"):
                del words[1]
            del words[1:2]
        if len(words) >= 3 and words[0] in ("deb", "deb-src"):
            sources.append(AptSource((words[0],), (words[1],), (words[2],), tuple(words[3:])))
    return sources


def _deb822_sources(text: str) -> list[AptSource]:
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "uris" not in fields:
            continue
        fields_of = ("types", "uris", "suites", "components")
        sources.append(AptSource(*(tuple(fields.get(name, "").split()) for name in fields_of)))
    return sources


def _is_security(suite: str) -> bool:
    return suite.endswith("-security") or suite.endswith("/updates")


def debian_mirrors(sources: list[AptSource]) -> tuple[str, str | None]:
    """(the Debian archive URI, the Debian security archive URI or None) the machine uses."""
    debian = [s for s in sources if "deb" in s.types and "main" in s.components]
    archive = next((s.uris[0] for s in debian if any(x.split("-")[0] in DEBIAN_SUITES and not _is_security(x)
                                                      for x in s.suites)), None)
    if archive is None:
        raise RuntimeError("no Debian archive (a 'deb' source with suite e.g. bookworm and component main) "
                           "in /etc/apt/sources.list{,.d}: the base image needs the machine's Debian mirror")
    security = next((s.uris[0] for s in debian if any(_is_security(x) for x in s.suites)), None)
    return archive.rstrip("/"), security.rstrip("/") if security else None


def image_sources(archive: str, security: str | None) -> str:
    """The DEB822 sources of the base image: the machine's mirrors, serving bookworm
    with its updates and security suites, as debian:12-slim has them."""
    stanzas = [(archive, f"{SUITE} {SUITE}-updates")] + ([(security, f"{SUITE}-security")] if security else [])
    return "\n".join(f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\nSigned-By: {KEYRING}\n"
                     for uri, suites in stanzas)


def image_apt_conf() -> str:
    """The machine's apt settings in APT_KEYS, as ``apt-config dump`` resolves them."""
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=True).stdout
    kept = [line for line in dump.splitlines() if line.startswith(APT_KEYS)]
    return "// The build machine's apt settings that its Debian mirror needs (backupmx_sandbox).\n" + \
        "".join(line + "\n" for line in kept)


def base_inputs() -> tuple[str, str, str]:
    """(archive URI, the image's sources file, the image's apt.conf.d file) for this machine."""
    archive, security = debian_mirrors(read_apt_sources())
    return archive, image_sources(archive, security), image_apt_conf()


def base_key() -> str:
    """A short hex key of what shapes the base image: this code and the machine's mirror settings."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for part in base_inputs():
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:12]


def base_ref() -> str:
    return f"{BASE_REPO}:{SUITE}-{base_key()}"


def ensure_base_image(log: Callable[[str], None] = print) -> str:
    """The base image's reference; debootstrapped and imported only when podman lacks it."""
    ref = base_ref()
    if image_exists(ref):
        return ref
    with cache_lock("base-image"):
        if not image_exists(ref):
            _build_base(ref, log)
    return ref


def _build_base(ref: str, log: Callable[[str], None]) -> None:
    archive, sources, apt_conf = base_inputs()
    work = cache_dir() / "base-rootfs"
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    logs = cache_dir() / "logs"
    log(f"dms: making base image {ref} (debootstrap {SUITE} from {archive})")
    started = time.monotonic()
    try:
        run_logged(["debootstrap", "--variant=minbase", SUITE, str(rootfs), archive],
                   logs / "debootstrap.log", "debootstrap")
        _configure_rootfs(rootfs, sources, apt_conf)
        tarball = work / "rootfs.tar"
        run_logged(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."],
                   logs / "base-tar.log", "packing the base rootfs")
        podman("import", "--change", "CMD [\"bash\"]", "--change",
               "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", str(tarball), ref)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"dms: base image ready in {time.monotonic() - started:.0f} s")


def _configure_rootfs(rootfs: Path, sources: str, apt_conf: str) -> None:
    """apt in the image reaches the machine's mirror; nothing of this host stays in it."""
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(sources)
    (rootfs / "etc/apt/apt.conf.d/99backupmx-build-host").write_text(apt_conf)
    for leftover in ("etc/hostname", "etc/resolv.conf"):
        (rootfs / leftover).unlink(missing_ok=True)
    for cache in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
