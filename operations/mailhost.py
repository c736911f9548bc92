"""Operations of the mail host stage (stages 3 and 4 of deploys/backupmx.py).

- ``rspamd_exemption``: the settings rule that drops SPF and DMARC scoring for the
  relay networks only (seed change 3).
- ``postscreen_whitelist``: ``postscreen_access.cidr`` and the PROXY-v2 listener's
  own ``postscreen_access_list`` and cache map (seed change 2).
- ``relay_access``: both, in the one safe order for going in (stage 3) or out (rollback step 4).
- ``verify_live``: stage 4, the proof, at execution time, that both are in force.

Each change is one transaction on the mail host (``backupmx.postfix.transaction.transaction_script``):
files swapped atomically, validated before any reload, the previous files put back
byte for byte on any failure. The plan is data (``backupmx.mailhost.plan``), made from
the state the facts read (``operations.mailhost_state``), so the deploy file can show
it in the gate report before anything runs.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, TypeVar

from pyinfra.api import DeployError, FunctionCommand, operation

from backupmx.core.context import deploy_error, run_value
from backupmx.core.errors import BackupMXError
from backupmx.core.validate import cidr_strings
from backupmx.mailhost.model import MailHost, load_mailhost
from backupmx.postfix.apply import apply_host_plan
from operations.mailhost_proof import SETTLE_SECONDS, prove_live_settled, run_proof
from operations.mailhost_state import exemption_plan, whitelist_plan

T = TypeVar("T")




@operation()
def postscreen_whitelist(mailhost: MailHost, relay_cidrs, present: bool = True):
    """
    Let the backup MX provider's relays through postscreen on the PROXY-v2 listener only.

    + mailhost: the host's ``backupmx.mailhost.model.MailHost`` (``load_mailhost(host.data.mailhost)``)
    + relay_cidrs: the provider's relay networks (IPv4 and IPv6), already validated
    + present: ``False`` takes our table out of the listener's access list and removes the file

    Writes ``postscreen_access.cidr`` (``permit`` per network) and sets, on the
    listener only (a per-service override, never main.cf), ``postscreen_access_list``
    to its current list plus ``cidr:<file>`` and, unless it has its own already,
    a ``postscreen_cache_map`` of its own. native: in master.cf; docker-mailserver:
    a marked block at the end of ``user-patches.sh`` (run at every container
    start) and, now, ``postconf -P`` in the container. Refuses while
    docker-mailserver's policyd-spf or OpenDMARC would judge relayed mail first.

    Validates before reloading: ``postfix check`` (its warnings count), and
    ``postmap -q`` answers ``permit`` for an address in each relay network and
    nothing for one outside them all. Any failure restores the previous files byte
    for byte and reloads nothing.

    **Example:**

    .. code:: python

        postscreen_whitelist(
            name="Stage 3: postscreen whitelist on the PROXY-v2 listener",
            mailhost=load_mailhost(host.data.mailhost),
            relay_cidrs=settings.relay_cidrs,
        )
    """
    plan = whitelist_plan(mailhost, relay_cidrs, present)
    yield from apply_host_plan(plan)


@operation()
def rspamd_exemption(mailhost: MailHost, relay_cidrs, present: bool = True):
    """
    Exempt mail from the relay networks from rspamd's SPF and DMARC scoring, and never reject it.

    + mailhost: the host's ``backupmx.mailhost.model.MailHost``
    + relay_cidrs: the provider's relay networks
    + present: ``False`` removes the rule (and the file, if it held nothing else)

    A settings rule ``backupmx_relay_exempt { priority = high; ip = [...]; apply {
    groups_disabled = ["spf", "dmarc"]; actions { reject = null; } } }`` (a reject would
    make the relay bounce: the worst relayed mail gets is "add header") in a marked block of
    ``local.d/settings.conf`` (native) or the mounted ``rspamd/override.d/settings.conf``
    (docker-mailserver, also copied into the running container). Other rules in
    that file are kept byte for byte. Content, antivirus, Bayes and DKIM checks
    stay active. Validated with ``rspamadm configtest`` (any new output counts)
    before rspamd is reloaded; on failure the previous file is restored.

    ``mailhost.relay_scoring: external_relay`` (native only) writes instead a rule
    capping the relay networks' action (``reject = null``) in the same block, plus
    marked blocks in ``local.d/external_relay.conf`` (a ``count`` rule taking the
    sending address from the relay's own Received header) and ``local.d/rspamd.lua``
    (the condition that limits that rule to relay addresses). The mode is switched
    in one transaction over the three files (docs/mailhost.md, "Relay scoring").

    **Example:**

    .. code:: python

        rspamd_exemption(
            name="Stage 3: rspamd SPF/DMARC exemption for the relays",
            mailhost=load_mailhost(host.data.mailhost),
            relay_cidrs=settings.relay_cidrs,
        )
    """
    plan = exemption_plan(mailhost, relay_cidrs, present)
    yield from apply_host_plan(plan)


# The operations' names in the two directions (the deploys' stage and step lists name them so).
STAGE_3_NAMES = ("Stage 3: rspamd SPF/DMARC exemption for the relay networks",
                 "Stage 3: postscreen whitelist on the PROXY-v2 listener")
ROLLBACK_4_NAMES = ("Rollback 4: remove the rspamd SPF/DMARC exemption",
                    "Rollback 4: remove the postscreen whitelist")


def relay_access(mailhost: MailHost, relay_cidrs, present: bool = True,
                 names: tuple[str, str] = STAGE_3_NAMES, **global_arguments) -> None:
    """
    Stage 3 (``present``) or rollback step 4 (not): ``rspamd_exemption`` and
    ``postscreen_whitelist`` in the one order that never lets relayed mail in unprotected.

    Going in, the exemption first: alone it only changes how relayed mail is scored,
    while a lone whitelist would let relayed mail in to be judged on SPF and DMARC.
    Going out, the whitelist first: relayed mail meets postscreen again before its
    SPF and DMARC scoring comes back.

    + names: (the exemption's operation name, the whitelist's)
    + global_arguments: pyinfra's, given to both operations (e.g. ``_if``)

    **Example:**

    .. code:: python

        relay_access(mailhost=mailhost_settings(host), relay_cidrs=settings.relay_cidrs)
    """
    exemption, whitelist = names
    if present:
        rspamd_exemption(name=exemption, mailhost=mailhost, relay_cidrs=relay_cidrs, **global_arguments)
        postscreen_whitelist(name=whitelist, mailhost=mailhost, relay_cidrs=relay_cidrs, **global_arguments)
    else:
        postscreen_whitelist(name=whitelist, mailhost=mailhost, relay_cidrs=relay_cidrs, present=False,
                             **global_arguments)
        rspamd_exemption(name=exemption, mailhost=mailhost, relay_cidrs=relay_cidrs, present=False,
                         **global_arguments)


def _verify(state, host, mailhost, relay_cidrs, domain, record, timeout):  # (state, host): pyinfra passes them to a FunctionCommand
    return run_proof(host, lambda: prove_live_settled(mailhost, relay_cidrs, domain, timeout, target=host), record,
                     "stage 4", "stage 4: whitelist and exemption proven", "backupmx: stage 4",
                     "check the services and re-run")


@operation(is_idempotent=False)
def verify_live(mailhost: MailHost, relay_cidrs, domain: str,
                record: Callable[[str, bool, str], None], timeout: float = SETTLE_SECONDS):
    """
    Stage 4: prove, when it runs, that the whitelist and the exemption are in force.

    + mailhost: the host's ``backupmx.mailhost.model.MailHost``
    + relay_cidrs: the provider's relay networks
    + domain: the protected domain (the rspamc and SMTP probes use its postmaster)
    + record: called as ``record(host_name, live, evidence)`` (``run.mailhost_proofs.record``)
    + timeout: seconds to wait for reloads to take effect

    Runs the checks of ``prove_live`` at execution time, after stage 3. Not live:
    the operation fails and the host stops, so nothing later (the DNS stage) runs
    for it. Under ``--dry`` it shows as a pending check.

    **Example:**

    .. code:: python

        verify_live(
            name="Stage 4: prove the whitelist and exemption are live",
            mailhost=mailhost,
            relay_cidrs=settings.relay_cidrs,
            domain="example.org",
            record=run.mailhost_proofs.record,
        )
    """
    yield FunctionCommand(_verify, (mailhost, tuple(cidr_strings(relay_cidrs)), domain, record, timeout), {})


def is_mailhost(target) -> bool:
    """A host of the inventory's ``mailhosts`` group, or any host with ``mailhost`` data."""
    return "mailhosts" in (target.groups or []) or target.data.get("mailhost") is not None


def one_mailhost_run(name: str, what: str, target, start: Callable[[object], T]) -> T:
    """The run's value ``name`` (a drill, a canary: ``start(target)`` makes it on first use), which
    works on one mail host: another host in the same run is refused, naming both."""
    value = run_value(name, partial(start, target))
    if value.host_name != target.name:
        raise DeployError(f"{what} ({value.host_name}, {target.name}): use --limit")
    return value


def mailhost_settings(target) -> MailHost:
    """Stage 0 for one mail host: its ``mailhost`` data validated, or one ``DeployError`` line."""
    try:
        return load_mailhost(target.data.get("mailhost"))
    except BackupMXError as error:
        raise deploy_error(error, target.name) from None
