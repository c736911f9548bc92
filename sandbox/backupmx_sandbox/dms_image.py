"""The real docker-mailserver (DMS) 15.1.0 container image, built here with podman.

The machines reach no registry but Debian's and PyPI, so the image is built from the
vendored release tree (``sandbox/vendor/docker-mailserver-15.1.0.tar.gz``) on a Debian
base debootstrapped from the machine's own mirror, with a small explicit recipe of
changes (``dms_recipe``: the patch ``dms/recipe.patch``, a mechanical Dockerfile
rewrite, and ``DIFFERENCES`` listing what differs from upstream's image, and why).

Surface:
    cache_dir() -> Path                  where inputs, logs and podman's config live
    podman_env() -> dict[str, str]       the environment every podman call here uses
    image_key() -> str                   key of the tarball + recipe: a change builds anew
    ensure_base_image(log) -> str        the local Debian 12 base image's reference
    ensure_image(log, rebuild) -> str    the DMS image's reference, built if podman lacks it
    run_smoke(image, log) -> float       start it once, check its services, seconds to "up"
    DIFFERENCES                          (upstream, here, why) for every difference

``python -m backupmx_sandbox.dms_image [--rebuild] [--smoke] [--differences]`` prints
the image's reference (progress goes to stderr), or one error line and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from backupmx_sandbox.dms_base import base_key, ensure_base_image
from backupmx_sandbox.dms_podman import cache_dir, cache_lock, image_exists, podman_env, run_logged
from backupmx_sandbox.dms_recipe import DIFFERENCES, apply_recipe, recipe_files
from backupmx_sandbox.dms_smoke import run_smoke

__all__ = ["DIFFERENCES", "TARBALL", "cache_dir", "ensure_base_image", "ensure_image", "image_key",
           "image_ref", "podman_env", "run_smoke"]

VERSION = "15.1.0"
COMMIT = "060bf9a47443382fb7e37f30d6ab9709b4b8aeab"
TARBALL = Path(__file__).resolve().parents[1] / "vendor" / f"docker-mailserver-{VERSION}.tar.gz"
IMAGE_REPO = "localhost/backupmx-sandbox/docker-mailserver"


def image_key() -> str:
    """A short hex key of everything the image is made from: the tarball's sha256, every
    recipe file and the recipe code (this module included), and the base image's key."""
    digest = hashlib.sha256(_sha256(TARBALL).encode())
    for path in [*recipe_files(), Path(__file__)]:
        digest.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    digest.update(b"\0" + base_key().encode())
    return digest.hexdigest()[:12]


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise RuntimeError(f"the vendored DMS release is missing: {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_ref() -> str:
    return f"{IMAGE_REPO}:{VERSION}-{image_key()}"


def ensure_image(log: Callable[[str], None] = print, rebuild: bool = False) -> str:
    """The DMS image's reference; built only when ``podman image exists`` says it is not
    there, or always (without podman's layer cache) when ``rebuild`` is set."""
    ref = image_ref()
    if not rebuild and image_exists(ref):
        return ref
    with cache_lock("dms-image"):
        if rebuild or not image_exists(ref):
            _build(ref, log, no_cache=rebuild)
    return ref


def _build(ref: str, log: Callable[[str], None], no_cache: bool) -> None:
    base = ensure_base_image(log)
    context = cache_dir() / "build" / ref.rsplit(":", 1)[1]
    build_log = cache_dir() / "logs" / f"dms-build-{ref.rsplit(':', 1)[1]}.log"
    _unpack(context)
    apply_recipe(context, base)
    log(f"dms: building {ref} (log {build_log})")
    started = time.monotonic()
    run_logged(["podman", "build", "--format", "docker", "--network", "host",
                *(["--no-cache"] if no_cache else []),
                "--build-arg", f"DMS_RELEASE=v{VERSION}", "--build-arg", f"VCS_REVISION={COMMIT}",
                "-t", ref, str(context)], build_log, f"building {ref}", env=podman_env())
    shutil.rmtree(context)
    log(f"dms: built {ref} in {time.monotonic() - started:.0f} s")


def _unpack(context: Path) -> None:
    """A fresh copy of the release tree; umask 0022 keeps its files from being
    group/other-writable, which Postfix warns about at every start."""
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    subprocess.run(["tar", "--no-same-owner", "--no-same-permissions", "--strip-components=1",
                    "-xzf", str(TARBALL), "-C", str(context)],
                   check=True, preexec_fn=lambda: os.umask(0o022))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backupmx_sandbox.dms_image",
        description=f"Build (or find) the docker-mailserver {VERSION} image; print its reference.")
    parser.add_argument("--rebuild", action="store_true", help="build again, without podman's layer cache")
    parser.add_argument("--smoke", action="store_true", help="then start it once and check its services")
    parser.add_argument("--differences", action="store_true", help="only print how it differs from upstream's image")
    args = parser.parse_args(argv)
    if args.differences:
        for upstream, here, why in DIFFERENCES:
            print(f"- upstream: {upstream}\n  here: {here}\n  why: {why}")
        return 0
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - stdout is the reference alone
    try:
        ref = ensure_image(progress, rebuild=args.rebuild)
        if args.smoke:
            run_smoke(ref, progress)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
