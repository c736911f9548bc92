"""Provider ``selfhosted``: the relay hosts of the inventory's ``relay`` group are the provider.

The Roller Network provider answers through an account API; a self-hosted relay
answers for itself: its Postfix is read and changed over the same SSH connection
pyinfra uses for it (``Host.run_shell_command``), never with a secret on a command
line. What each provider operation means on a relay:

* enabled: the domain is in ``relay_domains`` (disabling takes it out: the relay
  refuses new mail for it; mail already queued still drains to the primary, through
  an inline ``transport_maps`` entry added before it leaves);
* Accept-and-Hold: the transport to the primary is in ``defer_transports``
  (deliver nothing, keep accepting); off removes it and flushes the queue. It is
  per relay, not per domain: a relay this tool configures serves only the backup
  MX, so holding it holds every domain it relays;
* the queue: ``postqueue -j`` on every relay host;
* bounces: the ``status=bounced`` lines of each relay host's mail log (``relaylog``).

Configuring the relay (catch-all, 4xx-only, queue lifetime, TLS to the primary) is
``operations.relayhost``'s job; its read-only ``assess_relayhost`` rows are gates
G1, G2 and G4 for this provider (see docs/provider-selfhosted.md).
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass
from typing import Any, Callable

from pyinfra.api import QuoteString, StringCommand
from pyinfra.api.exceptions import ConnectError

from backupmx.core.context import relay_group
from backupmx.core.errors import BackupMXError
from backupmx.core.relayhost import load_relayhost
from backupmx.core.settings import Settings
from backupmx.postfix.maincf import parse_postconf_main, postfix_list
from backupmx.postfix.postqueue import parse_postqueue_json
from backupmx.providers import relaylog
from backupmx.providers.base import (
    BouncedMessage,
    Fact,
    ManualStepRequired,
    Provider,
    ProviderError,
    ProviderFacts,
    QueuedMessage,
)
from backupmx.providers.relayroute import with_route

SOURCE = "relayhost"
COMMAND_TIMEOUT = 30

# (ok, stdout lines, stderr) for an argv on one relay host.
Runner = Callable[[list[str]], tuple[bool, list[str], str]]


@dataclass
class RelayTarget:
    """One relay host: its inventory name, its validated ``relayhost`` data and how to run a command there."""

    name: str
    relay: Any  # backupmx.core.relayhost.RelayHost
    run: Runner


def pyinfra_runner(target) -> Runner:
    """``argv -> (ok, stdout lines, stderr)`` on a pyinfra ``Host``, connecting it first if ``--limit`` left it out."""
    def run(argv: list[str]) -> tuple[bool, list[str], str]:
        if not target.connected:
            try:
                target.connect(reason="provider selfhosted", show_errors=False, raise_exceptions=True)
            except ConnectError as error:
                raise ProviderError(f"relay host {target.name}: cannot connect over SSH ({error}); check the "
                                    f"`relay` group's ssh data, then run again") from None
        command = StringCommand(*[QuoteString(part) for part in argv])
        try:
            ok, output = target.run_shell_command(command, print_output=False, print_input=False,
                                                  _timeout=COMMAND_TIMEOUT)
        except Exception as error:  # a dropped connection or a timeout: one line, not a traceback
            raise ProviderError(f"relay host {target.name}: {argv[0]} did not complete "
                                f"({type(error).__name__}); check the host, then run again") from None
        return ok, list(output.stdout_lines), output.stderr

    return run


def inventory_targets(settings: Settings) -> list[RelayTarget]:
    """The relay hosts of the pyinfra inventory being run (every one, whatever ``--limit`` says)."""
    group = relay_group()
    if group is None:
        raise ProviderError("provider selfhosted: the relay hosts are reached through pyinfra; run this from a "
                            "deploy (pyinfra INVENTORY deploys/...)")
    hosts = {target.name: target for target in group}
    targets = []
    for name in settings.relay_hosts:
        if name not in hosts:
            raise ProviderError(f"provider selfhosted: relay host {name} is not in the inventory's `relay` group")
        target = hosts[name]
        targets.append(RelayTarget(name, load_relayhost(target.data.get("relayhost")), pyinfra_runner(target)))
    return targets


class SelfHostedProvider(Provider):
    """The ``Provider`` interface on the relay hosts' own Postfix."""

    name = "selfhosted"
    backend = SOURCE

    def __init__(self, settings: Settings, targets: list[RelayTarget] | None = None):
        self.settings = settings
        self._targets = targets

    def targets(self) -> list[RelayTarget]:
        if self._targets is None:
            self._targets = inventory_targets(self.settings)
        return self._targets

    # ------------------------------------------------------------- plumbing

    def _run(self, target: RelayTarget, argv: list[str], what: str) -> list[str]:
        ok, stdout, stderr = target.run(argv)
        if not ok:
            why = (stderr.strip().splitlines() or ["no error output"])[-1]
            raise ProviderError(f"relay host {target.name}: {what} failed ({why}); by hand on it: "
                                f"{shlex.join(argv)}")
        return stdout

    def _postconf(self, target: RelayTarget, *names: str) -> dict[str, str]:
        values = parse_postconf_main(self._run(target, target.relay.postconf(*names), "postconf"))
        missing = [name for name in names if name not in values]
        if missing:
            raise ProviderError(f"relay host {target.name}: postconf did not report {', '.join(missing)}")
        return values

    def _set(self, target: RelayTarget, name: str, values: list[str]) -> None:
        if any(":" in value for value in values):
            raise ManualStepRequired(f"relay host {target.name}: {name} uses a lookup table; this tool only "
                                     f"edits a plain list", [f"edit {name} on {target.name} by hand"])
        self._edit(target, name, ", ".join(values))

    def _edit(self, target: RelayTarget, name: str, value: str) -> None:
        self._run(target, target.relay.postconf("-e", f"{name}={value}"), f"postconf -e {name}")
        self._run(target, target.relay.postfix_reload_argv(), "postfix reload")

    def _lists(self, target: RelayTarget) -> dict[str, list[str]]:
        values = self._postconf(target, "relay_domains", "defer_transports", "relay_recipient_maps",
                                "relay_transport", "transport_maps")
        lists = {key: postfix_list(value) for key, value in values.items()}
        # "smtp:[primary]:587" -> "smtp": the master.cf service that delivers to the primary.
        lists["transport"] = [values["relay_transport"].split(":", 1)[0] or "relay"]
        lists["transport_maps_raw"] = [values["transport_maps"]]
        return lists

    def _where(self, targets: list[RelayTarget], what: str) -> str:
        return f"{what} on {', '.join(target.name for target in targets)}"

    # ---------------------------------------------------------------- reads

    def domain_facts(self, domain: str) -> ProviderFacts:
        targets = self.targets()
        try:
            lists = {target.name: self._lists(target) for target in targets}
        except BackupMXError as error:
            fact = Fact(None, "none", str(error))
            return ProviderFacts(domain, fact, fact, fact, fact, fact, (str(error),))
        present = Fact(True, SOURCE, self._where(targets, "postconf"))
        mode = Fact("secondary_mx", SOURCE, "store-and-forward relay (relayhost)")
        enabled_on = [name for name, values in lists.items() if domain in values["relay_domains"]]
        enabled = self._agreed(targets, enabled_on, "relay_domains")
        catch_all = [name for name, values in lists.items() if not values["relay_recipient_maps"]]
        table = self._agreed(targets, catch_all, "relay_recipient_maps empty")
        table = Fact("allow_any" if table.value else "deny", table.source, table.evidence) if table.known else table
        held_on = [name for name, values in lists.items() if values["transport"][0] in values["defer_transports"]]
        hold = self._agreed(targets, held_on, "defer_transports")
        return ProviderFacts(domain, present, mode, enabled, table, hold)

    def _agreed(self, targets: list[RelayTarget], true_on: list[str], what: str) -> Fact:
        """One yes/no for all relays; relays that disagree are a fact nobody can state (a half-done change)."""
        if len(true_on) in (0, len(targets)):
            return Fact(bool(true_on), SOURCE, self._where(targets, what))
        return Fact(None, "none", f"the relays disagree on {what}: yes on {', '.join(true_on)} only")

    def relay_cidrs(self) -> Fact:
        networks = [str(network) for target in self.targets() for network in target.relay.relay_cidrs]
        return Fact(networks, SOURCE, self._where(self.targets(), "relayhost.public_addresses"))

    def overage(self) -> Fact:
        # A self-hosted relay has no volume cap to overrun; that it answers only 4xx
        # is proven by the relay host's own G2 row (operations.relayhost).
        return Fact("4xx", SOURCE, "self-hosted relay: no provider cap (4xx-only checked on the relay, row G2)")

    def queue(self, domain: str) -> list[QueuedMessage]:
        messages = []
        for target in self.targets():
            lists = self._lists(target)
            held_all = lists["transport"][0] in lists["defer_transports"]
            entries, unreadable = parse_postqueue_json("\n".join(self._run(target, target.relay.postqueue("-j"),
                                                                           "postqueue -j")))
            if unreadable:
                raise ProviderError(f"relay host {target.name}: postqueue -j printed a line that is not JSON")
            for entry in entries:
                message = queued_message(entry, domain, held_all, target.name)
                if message is not None:
                    messages.append(message)
        return messages

    def bounces(self, domain: str) -> list[BouncedMessage]:
        """From each relay host's own mail log (``backupmx.providers.relaylog``): Postfix keeps no bounced message."""
        found = []
        for target in self.targets():
            ok, lines, stderr = target.run(relaylog.read_argv(target.relay.postfix_config_dir))
            if not ok:
                why = (stderr.strip().splitlines() or ["no error output"])[-1]
                raise ProviderError(f"relay host {target.name}: cannot read its mail log ({why}); give its Postfix "
                                    f"a maillog_file, or log to /var/log/mail.log or the journal")
            found += relaylog.bounces_in(lines, domain, target.name)
        return found

    # --------------------------------------------------------------- writes

    def set_enabled(self, domain: str, enabled: bool) -> Fact:
        targets = self.targets()
        for target in targets:
            lists = self._lists(target)
            domains = lists["relay_domains"]
            wanted = (domains + [domain] if domain not in domains else domains) if enabled else \
                [name for name in domains if name != domain]
            if not enabled:
                self._keep_route(target, lists, domain)
            if wanted != domains:
                self._set(target, "relay_domains", wanted)
        after = self.domain_facts(domain).enabled
        if after.value is not enabled:
            raise ProviderError(f"relay hosts: {domain} still {'disabled' if enabled else 'enabled'} after the "
                                f"change ({after.evidence})")
        return after

    def set_hold(self, domain: str, on: bool) -> Fact:
        targets = self.targets()
        for target in targets:
            lists = self._lists(target)
            deferred, transport = lists["defer_transports"], lists["transport"][0]
            wanted = (deferred + [transport] if transport not in deferred else deferred) if on else \
                [name for name in deferred if name != transport]
            if wanted != deferred:
                self._set(target, "defer_transports", wanted)
            if not on:
                # Released mail goes now, not at the next queue run.
                self._run(target, target.relay.postqueue("-f"), "postqueue -f")
        return self.domain_facts(domain).hold

    def _keep_route(self, target: RelayTarget, lists: dict[str, list[str]], domain: str) -> None:
        """Before a domain leaves relay_domains: route it to the primary by transport_maps.

        relay_transport applies only to relay_domains; mail already queued for a
        domain taken out would fall back to an MX lookup (the relay itself, or port
        25 a cloud VM cannot use) and bounce at the end of the queue lifetime. An
        inline transport map keeps it going to the primary. An operator's own
        transport_maps is never overwritten: then the route is theirs to keep.
        """
        value = with_route(lists["transport_maps_raw"][0], domain, target.relay.nexthop)
        if value is not None:
            self._edit(target, "transport_maps", value)

    def manual_steps(self, change: str, domain: str) -> list[str]:
        return manual_steps(self.settings, change, domain, self._targets)


def queued_message(entry: dict, domain: str, held_all: bool, relay: str) -> QueuedMessage | None:
    """One ``postqueue -j`` message as a ``QueuedMessage`` if it has a recipient in ``domain``."""
    recipients = entry.get("recipients") or []
    mine = [r for r in recipients if str(r.get("address", "")).lower().endswith("@" + domain.lower())]
    if not mine:
        return None
    reasons = [r.get("delay_reason") for r in mine if r.get("delay_reason")]
    arrival = entry.get("arrival_time")
    queued_at = (datetime.datetime.fromtimestamp(arrival, datetime.timezone.utc).isoformat(timespec="seconds")
                 if isinstance(arrival, (int, float)) else None)
    queue_name = entry.get("queue_name")
    return QueuedMessage(
        id=f"{relay}:{entry.get('queue_id')}",
        sender=entry.get("sender", ""),
        recipients=tuple(r.get("address", "") for r in mine),
        size=entry.get("message_size"),
        queued_at=queued_at,
        # postqueue does not count attempts: a deferred message was tried at least once.
        attempts=1 if queue_name == "deferred" or reasons else 0,
        held=queue_name == "hold" or held_all,
        last_error=reasons[0] if reasons else None,
    )


def manual_steps(settings: Settings, change: str, domain: str, targets: list[RelayTarget] | None = None) -> list[str]:
    """The shell commands to run on each relay host for ``change`` (disable, enable, hold_on, hold_off)."""
    if targets is None:
        try:
            targets = inventory_targets(settings)
        except BackupMXError:
            targets = []
    if not targets:
        return [f"on each relay host ({', '.join(settings.relay_hosts) or 'the relay group'}): "
                + MANUAL_GENERIC[change].format(domain=domain, config="/etc/postfix", transport="smtp")]
    return [f"on {target.name}: " + MANUAL_GENERIC[change].format(
        domain=domain, config=target.relay.postfix_config_dir, transport="smtp") for target in targets]


MANUAL_GENERIC = {
    "disable": "take {domain} out of relay_domains (postconf -c {config} -h relay_domains; postconf -c {config} -e "
               "'relay_domains=<the rest>'), then postfix -c {config} reload; its queue still drains to the primary",
    "enable": "add {domain} to relay_domains (postconf -c {config} -e 'relay_domains=<list>, {domain}'), then "
              "postfix -c {config} reload",
    "hold_on": "add {transport} to defer_transports (postconf -c {config} -e 'defer_transports={transport}'), then "
               "postfix -c {config} reload",
    "hold_off": "remove {transport} from defer_transports (postconf -c {config} -e 'defer_transports='), then "
                "postfix -c {config} reload; postqueue -c {config} -f",
}
