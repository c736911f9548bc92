"""The sandbox's OpenBao holds the deploy's secrets at secret/viktor (KV v2)."""

from __future__ import annotations

import hvac
import pytest

from backupmx_sandbox import vault


def _client(world, token=None) -> hvac.Client:
    return hvac.Client(url=world["vault_addr"], token=token or world["vault_token"], timeout=10)


def _read(client: hvac.Client, world) -> dict:
    mount, _, path = world["vault_secret_path"].partition("/")
    return client.secrets.kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)


def test_seeded_secret_has_the_three_keys(world, sandbox):
    secret = _read(_client(world), world)["data"]["data"]

    assert set(secret) == {"cloudflare_api_token", "rollernet_password", "rollernet_api_key"}
    # The same values the fakes accept, so a deploy that reads Vault can log in.
    assert secret["cloudflare_api_token"] == sandbox.secret("cloudflare_token")
    assert secret["rollernet_api_key"] == world["acc_api_key"] == sandbox.secret("acc_api_key")
    assert secret["rollernet_password"] == sandbox.secret("rollernet_password")


def test_secret_path_is_kv_version_2(world):
    mounts = _client(world).sys.list_mounted_secrets_engines()["data"]
    assert world["vault_secret_path"] == "secret/viktor"
    assert mounts["secret/"]["type"] == "kv"
    assert mounts["secret/"]["options"]["version"] == "2"
    assert _read(_client(world), world)["data"]["metadata"]["version"] >= 1


def test_wrong_token_is_refused(world):
    with pytest.raises(hvac.exceptions.Forbidden):
        _read(_client(world, token="s.not-the-root-token"), world)


def test_health_answers_200(world):
    assert vault.health_status(world["vault_addr"]) == 200


def test_server_log_holds_no_token(world, sandbox):
    log = (sandbox.root / "log" / "openbao.log").read_text()
    assert world["vault_token"] not in log
    assert "Root Token" not in log and "Unseal Key" not in log
