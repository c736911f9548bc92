"""Secrets come from the real OpenBao, once per run, masked; an env var stands in only in emergencies."""

from __future__ import annotations

import pytest

from backupmx.core.errors import SecretError
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import VaultSettings


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


