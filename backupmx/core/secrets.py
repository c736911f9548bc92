"""Secrets from Vault KV v2, read once per run, handed out masked.

Inventory data holds only the Vault *path*; values are read at use time and
wrapped in pyinfra's ``HiddenValue`` so they print as ``*MASKED*`` anywhere
pyinfra shows arguments. For emergencies (Vault down during a rollback) a value
can come from an environment variable instead, e.g. ``CLOUDFLARE_API_TOKEN``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import hvac
import hvac.exceptions
import requests
from pyinfra.api import HiddenValue

from backupmx.core.errors import SecretError
from backupmx.core.settings import VaultSettings

VAULT_TIMEOUT = 10


def emergency_env_name(key: str) -> str:
    """The environment variable that may stand in for a Vault key."""
    return key.upper()


class SecretStore:
    """The secrets of one run: one Vault read, however many keys are asked for."""

    def __init__(self, vault: VaultSettings, environ: Mapping[str, str] | None = None):
        self.vault = vault
        self.environ = os.environ if environ is None else environ
        self._values: dict[str, str] | None = None
        self.vault_reads = 0
        self.sources: dict[str, str] = {}

    def get(self, key: str, allow_env: bool = False) -> HiddenValue:
        """The secret ``key``; with ``allow_env``, an env var stands in when Vault cannot answer."""
        env_name = emergency_env_name(key)
        try:
            values = self._read()
        except SecretError as vault_error:
            if allow_env and self.environ.get(env_name):
                self.sources[key] = f"${env_name} (Vault unavailable)"
                return HiddenValue(self.environ[env_name])
            hint = f"; or set ${env_name} for an emergency run" if allow_env else ""
            raise SecretError(f"{vault_error}{hint}") from None
        if key not in values or values[key] in (None, ""):
            raise SecretError(
                f"Vault {self.vault.addr}: {self.vault.secret_path} has no key {key!r}; "
                f"add it (bao kv patch -mount={self.vault.mount} {self.vault.path} {key}=...)"
            )
        self.sources[key] = f"vault {self.vault.secret_path}"
        return HiddenValue(values[key])

    def values_read(self) -> tuple[str, ...]:
        """Every secret value this store has handed out or read (to mask them in documents), never printed."""
        values = list((self._values or {}).values())
        values += [self.environ[emergency_env_name(key)] for key, source in self.sources.items()
                   if source.startswith("$") and self.environ.get(emergency_env_name(key))]
        return tuple(sorted({v for v in values if isinstance(v, str) and len(v) >= 4}, key=len, reverse=True))

    def _token(self) -> str:
        token = self.environ.get(self.vault.token_env)
        if token:
            return token
        token_file = Path(self.vault.token_file) if self.vault.token_file else None
        default_file = Path.home() / ".vault-token"
        for candidate in (token_file, default_file):
            if candidate and candidate.is_file():
                return candidate.read_text().strip()
        looked = f"vault.token_file {token_file}, " if token_file else ""
        raise SecretError(
            f"Vault {self.vault.addr}: no token (not in ${self.vault.token_env}, {looked}{default_file}); "
            f"log in with `vault login` or `bao login` (either writes {default_file}), or set "
            f"${self.vault.token_env}"
        )

    def _read(self) -> dict[str, str]:
        if self._values is not None:
            return self._values
        where = f"Vault {self.vault.addr}"
        client = hvac.Client(url=self.vault.addr, token=self._token(), timeout=VAULT_TIMEOUT,
                             verify=self.vault.ca_cert or True)
        self.vault_reads += 1
        try:
            response = client.secrets.kv.v2.read_secret_version(
                mount_point=self.vault.mount, path=self.vault.path, raise_on_deleted_version=True
            )
        except hvac.exceptions.Forbidden:
            raise SecretError(f"{where}: permission denied reading {self.vault.secret_path}; "
                              f"check the token in ${self.vault.token_env} and its policy") from None
        except hvac.exceptions.InvalidPath:
            raise SecretError(f"{where}: {self.vault.secret_path} does not exist (is the KV v2 mount "
                              f"{self.vault.mount!r} right?)") from None
        except hvac.exceptions.VaultDown:
            raise SecretError(f"{where}: Vault is sealed; unseal it and run again") from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise SecretError(f"{where}: unreachable ({type(error).__name__}); check the address in vault.addr "
                              f"(inventory/production.py takes it from $VAULT_ADDR) and that Vault is "
                              f"running") from None
        except (hvac.exceptions.VaultError, requests.RequestException) as error:
            raise SecretError(f"{where}: failing ({type(error).__name__}); check Vault's own log and status "
                              f"(`vault status` or `bao status`), then run again") from None
        self._values = dict(response["data"]["data"])
        return self._values
