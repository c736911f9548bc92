"""Accept-and-Hold at the backup provider, for planned maintenance of the mail host.

    pyinfra inventory/production.py deploys/maintenance.py --data hold=status
    pyinfra -y inventory/production.py deploys/maintenance.py --data hold=on    # before maintenance
    pyinfra -y inventory/production.py deploys/maintenance.py --data hold=off   # after it

With hold on, the provider's relays keep accepting and queueing the domain's mail
but deliver none of it, even once the primary is back: turn it off when the
maintenance is over. Runs on the control machine (the inventory's ``controller``
group); ``--dry`` shows the current state and what would change.

With provider selfhosted (``--data provider=selfhosted``) the hold is the relay
hosts' ``defer_transports`` (docs/provider-selfhosted.md).
"""

from pyinfra import host, inventory
from pyinfra.api import DeployError

from backupmx.core.context import deploy_error
from backupmx.core.errors import BackupMXError
from backupmx.lifecycle.maintenance import parse_action
from operations.provider import accept_and_hold, current_maintenance, hold_status

try:
    action = parse_action(host.data.get("hold"))
except BackupMXError as error:
    raise deploy_error(error) from None
if not inventory.get_group("controller", []):
    raise DeployError("the inventory has no `controller` group: add controller = [(\"@local\", _settings)]")

if "controller" in host.groups:
    maintenance = current_maintenance(host.data)
    for domain in maintenance.settings.domains:
        if action == "status":
            hold_status(
                name=f"Accept-and-Hold status of {domain.name}",
                maintenance=maintenance,
                domain=domain,
            )
        else:
            accept_and_hold(
                name=f"Accept-and-Hold {action} for {domain.name}",
                maintenance=maintenance,
                domain=domain,
                on=action == "on",
            )
