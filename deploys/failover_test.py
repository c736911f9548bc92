"""Gate G5: the live failover drill, as one deploy (docs/failover-drill.md).

    pyinfra inventory/sandbox.py deploys/failover_test.py --dry            # review: what it would stop, send, check
    pyinfra -y inventory/sandbox.py deploys/failover_test.py --limit mailhosts

On the one mail host of the ``mailhosts`` group (its ``failover`` data says how):
1. refuse unless the backup MX set is live in DNS and the whitelist is live;
2. stop the primary mail path (bounded window); 3. send N DKIM-signed probes to the
backup MX hosts; 4. confirm each is queued at the provider; 5. start the primary
again, always (also after a failure or Ctrl-C); 6. wait, bounded, for the queue to
drain; 7. check every probe in the mailbox; 8. print the report, exit 1 on any FAIL.
Other hosts of the inventory take no part. With ``--data provider=selfhosted`` the
backup MX is the relay host and step 4 reads its queue (``postqueue -j``) over SSH.
"""

from pyinfra import host, inventory
from pyinfra.api import DeployError

from operations.failover import (
    current_drill,
    drill_down_window,
    drill_preflight,
    drill_verify,
)

mailhosts = inventory.get_group("mailhosts", [])
if not mailhosts:
    raise DeployError("the inventory has no `mailhosts` group")

if "mailhosts" in host.groups:
    drill = current_drill(host)
    drill_preflight(name="Failover 1: backup MX live in DNS and whitelist live (else refuse)", drill=drill)
    drill_down_window(name="Failover 2-5: primary down, probes sent and queued, primary back", drill=drill)
    drill_verify(name="Failover 6-7: queue drained, probes verified in the mailbox", drill=drill)
