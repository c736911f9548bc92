"""What one deploy run learns, as records with one writer each: the hosts' assessments (while
preparing, for the report), the proofs of stages 4 and 4r (at execution, for stage 5's guard)
and stage 5's outcome per domain (for stage 6 and the last lines)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from backupmx.dns.stage import Assessment


@dataclass
class HostProofs:
    """Per host, whether what it serves was proven live in this run, and the evidence.

    Filled in at execution; stage 5 refuses unless every host it names is in here as live.
    """

    by_host: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def record(self, host_name: str, live: bool, evidence: str) -> None:
        self.by_host[host_name] = (live, evidence)

    def unproven(self, host_names: Iterable[str]) -> list[str]:
        """Of ``host_names``, those not proven live in this run (never proven counts)."""
        return [name for name in host_names if not self.by_host.get(name, (False, ""))[0]]


@dataclass
class Assessed:
    """Which hosts' passes added their rows to the report while preparing, and the Postfix
    ``message_size_limit`` each read (None: not read); gate G2's size row needs them all."""

    hosts: set[str] = field(default_factory=set)
    relays: set[str] = field(default_factory=set)
    primary_message_sizes: dict[str, int | None] = field(default_factory=dict)
    relay_message_sizes: dict[str, int | None] = field(default_factory=dict)

    def mailhost(self, host_name: str, message_size: int | None) -> None:
        self.primary_message_sizes[host_name] = message_size

    def relay(self, host_name: str, message_size: int | None) -> None:
        self.relays.add(host_name)
        self.relay_message_sizes[host_name] = message_size


@dataclass
class DnsOutcome:
    """Stage 5: the plan read per domain while preparing, the domains whose every wanted backup
    record is in the zone, and the record changes made in this run."""

    plans: dict[str, Assessment] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)
    applied: dict[str, list[str]] = field(default_factory=dict)

    def publish(self, domain: str, changes: list[str] | None = None) -> None:
        self.published.add(domain)
        if changes:
            self.applied[domain] = list(changes)

    def all_published(self, domains: Iterable[str]) -> bool:
        """Whether stage 5 ended well for every one of ``domains``: stage 6's monitoring expects the records."""
        return all(domain in self.published for domain in domains)
