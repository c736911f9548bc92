"""The provider registry: the provider the inventory chooses, and the by-hand steps in its console."""

from __future__ import annotations

from backupmx.core.settings import Settings
from backupmx.providers import selfhosted
from backupmx.providers.acc import AccClient
from backupmx.providers.base import LEDGER, Provider, ProviderError
from backupmx.providers.console import console_steps
from backupmx.providers.ledger import LedgerProvider
from backupmx.providers.rollernet import AccProvider
from backupmx.providers.selfhosted import SelfHostedProvider


def manual_steps(settings: Settings, change: str, domain: str) -> list[str]:
    """The by-hand steps in the provider's web console for a change the tool could not make."""
    if settings.selfhosted:
        return selfhosted.manual_steps(settings, change, domain)
    return console_steps(settings, change, domain)


def open_provider(settings: Settings, secrets=None, allow_env: bool = False, fail_fast: bool = False) -> Provider:
    """The provider the inventory chooses; the API key is read now (from Vault, or its env stand-in).

    ``allow_env``: the key may come from its environment variable when Vault cannot
    answer (emergencies); ``fail_fast``: an API unreachable once is not tried again.
    """
    profile = settings.provider
    if settings.selfhosted:
        # The relay hosts answer for themselves, over their pyinfra SSH connection: no key, no ledger.
        return SelfHostedProvider(settings)
    ledger = LedgerProvider(settings)
    if profile.backend == LEDGER:
        return ledger
    if secrets is None:
        raise ProviderError(f"provider {profile.name}: the api backend needs the secret store for "
                            f"{profile.key_secret}")
    key = secrets.get(profile.key_secret, allow_env=allow_env)
    return AccProvider(settings, AccClient(profile, key, fail_fast=fail_fast), ledger)
