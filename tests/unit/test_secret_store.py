"""The secret store without a Vault: an unreachable one falls back to the environment only
when the caller allows it; no token anywhere says how to get one. Against the real
OpenBao: tests/integration/test_secrets.py."""

from __future__ import annotations

import pytest

from backupmx.core.errors import SecretError
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import VaultSettings
from backupmx_sandbox.seed import VAULT_SECRET_PATH
from support.providers import dead_port


def test_unreachable_vault_falls_back_to_env_only_when_allowed():
    vault = VaultSettings(addr=f"http://127.0.0.1:{dead_port()}", secret_path=VAULT_SECRET_PATH)
    environ = {"VAULT_TOKEN": "t", "CLOUDFLARE_API_TOKEN": "emergency-token-value"}
    with pytest.raises(SecretError, match="unreachable") as caught:
        SecretStore(vault, environ=environ).get("cloudflare_api_token")
    # A closed port: where the address comes from.
    assert "vault.addr" in str(caught.value) and "$VAULT_ADDR" in str(caught.value)
    store = SecretStore(vault, environ=environ)
    assert store.get("cloudflare_api_token", allow_env=True).unmask() == "emergency-token-value"
    assert "Vault unavailable" in store.sources["cloudflare_api_token"]


def test_no_token_anywhere_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    vault = VaultSettings(addr=f"http://127.0.0.1:{dead_port()}", secret_path=VAULT_SECRET_PATH)
    with pytest.raises(SecretError, match="no token") as caught:
        SecretStore(vault, environ={}).get("cloudflare_api_token")
    message = str(caught.value)
    for hint in ("$VAULT_TOKEN", "`vault login`", "`bao login`", str(tmp_path / ".vault-token")):
        assert hint in message, message
