"""The by-hand steps in Roller Network's web console (the ACC), for a change the tool could not make."""

from __future__ import annotations

from backupmx.core.settings import Settings


def console_steps(settings: Settings, change: str, domain: str) -> list[str]:
    """``change`` (disable, enable, hold_on, hold_off) of ``domain``, done by hand in the console."""
    profile = settings.provider
    login = (f"log in to {profile.manual_url}" + (f" as {profile.user}" if profile.user else "") +
             f" (password: Vault {settings.vault.secret_path}, key rollernet_password)")
    steps = {
        "disable": [login, (f"open the mail domain {domain} and disable it (or delete it); its queue drains "
                            f"to the primary on its own")],
        "enable": [login, f"open the mail domain {domain} and enable it"],
        "hold_on": [login, f"open the mail domain {domain} and turn Accept and Hold on"],
        "hold_off": [login, (f"open the mail domain {domain} and turn Accept and Hold off; then flush its "
                             f"queue (or send ETRN {domain} to {settings.backup_mx.hosts[0]})")],
    }
    return steps[change]
