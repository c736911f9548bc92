"""The weekly canary: one message through each backup MX host, with the primary up (docs/canary.md).

    pyinfra inventory/production.py deploys/canary.py --dry     # review: what it would send, where
    pyinfra -y inventory/production.py deploys/canary.py        # send, wait, judge, delete; exit 1 naming the hop

On the one mail host of the ``mailhosts`` group (its ``canary`` data says how):
1. for each domain and each backup MX host, hand one uniquely tagged (DKIM-signed)
   message to that host directly, from the mail host (or ``canary.send_from``);
2. wait, bounded, for each in the mailbox; read the provider's queue meanwhile;
   judge each delivered copy (the relay's address whitelisted, DKIM, no SPF/DMARC
   penalty or, with ``external_relay``, the original sender scored), delete it;
3. print one row per host with the time from hand-off to delivery, write the
   metrics file (``canary.metrics_file``), exit 1 naming the failing hop.
With ``--data provider=selfhosted`` the backup MX is the relay host and its queue is
read over SSH. Each run costs one relayed message per backup MX host and domain.
"""

from pyinfra import host, inventory
from pyinfra.api import DeployError

from operations.canary import canary_send, canary_verify, current_canary

if not inventory.get_group("mailhosts", []):
    raise DeployError("the inventory has no `mailhosts` group")

if "mailhosts" in host.groups:
    canary = current_canary(host)
    canary_send(name="Canary 1: one message to each backup MX host", run=canary)
    canary_verify(name="Canary 2: each in the mailbox, judged and deleted (else the failing hop)", run=canary)
