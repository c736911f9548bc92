"""Accept-and-Hold for planned maintenance, in plain Python: read, toggle, report.

"Accept and Hold" makes the provider's relays keep accepting and queueing a
domain's mail while delivering none of it, so a primary that is half up during
maintenance is not fed mail. The reminder printed with every answer says what
that means for queued mail.
"""

from __future__ import annotations

from backupmx.core import audit
from backupmx.core.errors import BackupMXError
from backupmx.core.secrets import SecretStore
from backupmx.core.settings import Settings
from backupmx.providers.base import Fact, ManualStepRequired, Provider
from backupmx.providers.registry import manual_steps, open_provider

ACTIONS = ("on", "off", "status")

HOLD_MEANING = ("Accept-and-Hold: the backup relays keep accepting and queueing mail for the domain but deliver "
                "none of it, even when the primary is back; queued mail waits for as long as the provider keeps "
                "a queue (the seed: 3 weeks) and is then bounced; mail that reaches the primary directly is not "
                "affected")
REMINDER = {
    "on": f"{HOLD_MEANING}. Turn it off when maintenance is over: "
          "pyinfra INVENTORY deploys/maintenance.py --data hold=off",
    "off": "Hold is off: held mail is released and delivered to the primary on the relays' next attempts "
           "(the provider retries on its own schedule; a queue flush or ETRN makes it now)",
}


def parse_action(value) -> str:
    """``--data hold=on|off|status`` (pyinfra turns true/false into booleans)."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in ACTIONS:
        return value.strip().lower()
    given = "nothing" if value is None else repr(value)
    raise BackupMXError(f"--data hold: got {given}; pass --data hold=on, hold=off or hold=status")


class Maintenance:
    """One maintenance run: the provider opened once, its answers kept for the report."""

    def __init__(self, settings: Settings, secrets=None):
        self.settings = settings
        self.secrets = secrets or SecretStore(settings.vault)
        self._provider: Provider | None = None

    def provider(self) -> Provider:
        if self._provider is None:
            # Vault may be on the very homelab under maintenance: $ROLLERNET_API_KEY may stand in.
            self._provider = open_provider(self.settings, self.secrets, allow_env=True)
        return self._provider

    def close(self) -> None:
        if self._provider:
            self._provider.close()

    def hold(self, domain: str) -> Fact:
        """The hold state; an error when the provider cannot be read or lacks the domain."""
        facts = self.provider().domain_facts(domain)
        if facts.errors:
            raise BackupMXError(facts.errors[0])
        if facts.present.value is False:
            raise BackupMXError(f"{domain} is not in the {self.settings.provider.name} account "
                                f"({facts.present.evidence})")
        return facts.hold

    def status(self, domain: str) -> list[str]:
        """Lines describing the hold state and the queue of ``domain``."""
        facts = self.provider().domain_facts(domain)
        hold = facts.hold
        if not hold.known:
            lines = [f"{domain}: hold state unknown ({hold.evidence})"]
        else:
            lines = [f"{domain}: Accept-and-Hold is {'ON' if hold.value else 'off'} ({hold.evidence})"]
        try:
            messages = self.provider().queue(domain)
        except ManualStepRequired as manual:
            lines.append(f"{domain}: queue not readable here; {manual.steps[0]}")
        except BackupMXError as error:
            lines.append(f"{domain}: queue not readable: {error}")
        else:
            held = sum(1 for message in messages if message.held)
            lines.append(f"{domain}: {len(messages)} message(s) queued at the provider, {held} held")
        lines.append(REMINDER["on"] if hold.value else
                     f"{HOLD_MEANING}. Before planned maintenance: pyinfra INVENTORY deploys/maintenance.py "
                     f"--data hold=on")
        return lines

    def set_hold(self, domain: str, on: bool) -> Fact:
        before = self.provider().domain_facts(domain).hold
        after = self.provider().set_hold(domain, on)
        audit.append(self.settings, "provider.hold", domain, {"hold": before.value},
                     {"hold": after.value, "evidence": after.evidence})
        return after

    def provider_steps(self, change: str, domain: str) -> list[str]:
        return manual_steps(self.settings, change, domain)
