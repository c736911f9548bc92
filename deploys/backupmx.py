"""Add the backup MX, stage by stage; the gate sequence is the code's order.

    pyinfra inventory/production.py deploys/backupmx.py --dry   # review: gates + diff
    pyinfra inventory/production.py deploys/backupmx.py         # go live

Review runs are ``--dry`` without ``-y``: with ``-y`` pyinfra skips change
detection and would show no diff.
"""

from backupmx.run import current_run

# Stages 0 (inventory data) and 1 (secrets): once per run, whatever the host.
run = current_run()

# Stage 2: gates G1-G4, read-only.
if not run.reported:
    run.pending("G1", "provider domain: Secondary MX, allow any")
    run.pending("G2", "overage answers 4xx (ledger)")
    run.pending("G3", "STARTTLS on backup MX hosts")
    run.pending("G4", "relay CIDRs match the provider")
    run.pending("3", "mail host: whitelist + exemption")
    run.pending("4", "verify live on every mail host")
    run.pending("5", "DNS: backup MX records")
    run.pending("6", "monitoring and runbook")
run.print_report_once()
