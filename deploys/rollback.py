"""Emergency rollback: the backup MX records out of DNS first, then the provider.

    pyinfra inventory/production.py deploys/rollback.py --dry                   # review: what would go
    pyinfra -y inventory/production.py deploys/rollback.py --limit controller   # roll back (mail host untouched)
    pyinfra -y inventory/production.py deploys/rollback.py --data revert_mailhost=true   # ... and revert it

1. delete the backup MX records in Cloudflare (only those; the primary stays),
2. wait until the zone's authoritative servers no longer list them,
3. disable the domain at the provider (a warning with the manual steps if the
   provider cannot be reached or the backend is the ledger),
4. only with ``--data revert_mailhost=true``: take the postscreen whitelist and the
   rspamd exemption off every mail host (inert without the MX records anyway).

``--data disable_domain=false`` leaves step 3 for a later run (resolver caches).

No gates. Steps 1-3 run on the control machine (the inventory's ``controller``
group, ``@local``) and need neither the mail host nor Vault: with Vault down the
Cloudflare token comes from ``$CLOUDFLARE_API_TOKEN`` (the ACC key from
``$ROLLERNET_API_KEY``). Running it again is harmless. See docs/rollback.md.

With provider selfhosted (``--data provider=selfhosted``, docs/provider-selfhosted.md)
step 3 takes the domain out of ``relay_domains`` on every relay host, over SSH
(a relay host outside ``--limit`` is connected for it); its queue still drains.
"""

from pyinfra import host, inventory
from pyinfra.api import DeployError

from backupmx.core.context import deploy_error
from backupmx.core.errors import ConfigError
from backupmx.core.report import SKIP
from operations.mailhost import ROLLBACK_4_NAMES, mailhost_settings, relay_access
from operations.rollback import backup_mx_removed, current_rollback, dns_without_backups, provider_domain_disabled

revert_mailhost = host.data.get("revert_mailhost", False)
disable_domain = host.data.get("disable_domain", True)
for flag, value in (("revert_mailhost", revert_mailhost), ("disable_domain", disable_domain)):
    if value not in (True, False):
        raise deploy_error(ConfigError(flag, f"{value!r} is not true or false", f"--data {flag}=true or false"))

if not inventory.get_group("controller", []):
    raise DeployError("the inventory has no `controller` group: add controller = [(\"@local\", _settings)]")

controller = "controller" in host.groups
reverting = revert_mailhost and "mailhosts" in host.groups

if controller or reverting:
    rollback = current_rollback(host.data)
    if revert_mailhost:
        rollback.revert_mailhosts = [mailhost.name for mailhost in inventory.get_group("mailhosts", [])]
    # Steps 1-3, in this order for every domain. They act on the controller only
    # (the operations do nothing elsewhere); a mail host being reverted takes
    # them too, only so that pyinfra orders its step 4 after them. A failed
    # step fails the controller, which then runs no later step: the provider is
    # never touched while DNS may still point at it.
    for domain in rollback.settings.domains:
        backup_mx_removed(
            name=f"Rollback 1: remove the backup MX records of {domain.name}",
            rollback=rollback,
            domain=domain,
        )
    for domain in rollback.settings.domains:
        dns_without_backups(
            name=f"Rollback 2: wait until the authoritative DNS of {domain.name} drops them",
            rollback=rollback,
            domain=domain,
        )
    for domain in rollback.settings.domains:
        if not disable_domain:
            rollback.add("3", f"disable {domain.name} at {rollback.settings.provider.name}", SKIP,
                         "left enabled on request (--data disable_domain=false)",
                         "run again without it once resolvers have dropped the old MX set")
            continue
        provider_domain_disabled(
            name=f"Rollback 3: disable {domain.name} at the provider",
            rollback=rollback,
            domain=domain,
        )

if reverting:
    mailhost = mailhost_settings(host)
    # The reverse of stage 3: the whitelist, then the exemption. Only once steps
    # 1-2 proved DNS clear in this run: while senders can still reach the backup,
    # its relays must stay whitelisted and exempt.
    relay_access(mailhost=mailhost, relay_cidrs=rollback.settings.relay_cidrs, present=False,
                 names=ROLLBACK_4_NAMES, _if=rollback.dns_all_clear)
