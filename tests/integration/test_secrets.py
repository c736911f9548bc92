"""Secrets come from the real OpenBao, once per run, masked; an env var stands in only in emergencies."""

from __future__ import annotations

import socket

import pytest

from backupmx.core.errors import SecretError
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import VaultSettings


def closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def vault(world) -> VaultSettings:
    return VaultSettings(addr=world["vault_addr"], secret_path=world["vault_secret_path"])


def test_reads_vault_once_and_masks(world, vault):
    store = SecretStore(vault, environ={"VAULT_TOKEN": world["vault_token"]})
    token = store.get("cloudflare_api_token")
    key = store.get("rollernet_api_key")
    assert store.vault_reads == 1
    assert token.unmask() == world["cloudflare_token"]
    assert key.unmask() == world["acc_api_key"]
    assert str(token) == "*MASKED*" and repr(key) == "'*MASKED*'"


def test_missing_key_names_the_path_and_the_fix(world, vault):
    store = SecretStore(vault, environ={"VAULT_TOKEN": world["vault_token"]})
    with pytest.raises(SecretError, match=r"secret/viktor has no key 'no_such_key'; add it \(bao kv patch"):
        store.get("no_such_key")


def test_wrong_mount_is_reported(world):
    store = SecretStore(VaultSettings(addr=world["vault_addr"], secret_path="kv/viktor"),
                        environ={"VAULT_TOKEN": world["vault_token"]})
    with pytest.raises(SecretError) as caught:
        store.get("cloudflare_api_token")
    assert "kv/viktor" in str(caught.value)
    assert world["vault_token"] not in str(caught.value)


def test_unreachable_vault_falls_back_to_env_only_when_allowed():
    vault = VaultSettings(addr=f"http://127.0.0.1:{closed_loopback_port()}", secret_path="secret/viktor")
    environ = {"VAULT_TOKEN": "t", "CLOUDFLARE_API_TOKEN": "emergency-token-value"}
    with pytest.raises(SecretError, match="unreachable"):
        SecretStore(vault, environ=environ).get("cloudflare_api_token")
    store = SecretStore(vault, environ=environ)
    assert store.get("cloudflare_api_token", allow_env=True).unmask() == "emergency-token-value"
    assert "Vault unavailable" in store.sources["cloudflare_api_token"]


def test_no_token_anywhere_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    vault = VaultSettings(addr="http://127.0.0.1:1", secret_path="secret/viktor")
    with pytest.raises(SecretError, match=r"no token; set \$VAULT_TOKEN"):
        SecretStore(vault, environ={}).get("cloudflare_api_token")
