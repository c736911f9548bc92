"""Test helper: put the stage-3 whitelist and exemption on the sandbox mail host (no gates, no DNS),
or take them off with ``--data present=false``; with them on, stage 4's proof runs after them.

Used by tests/cli/test_rollback.py to make the state ``revert_mailhost`` takes away, and by
tests/cli/test_dms_changedetector.py to switch docker-mailserver's config dir back and forth.
"""

from pyinfra import host

from backupmx.core.settings import load_settings
from operations.mailhost import mailhost_settings, relay_access, verify_live

if "mailhosts" in host.groups:
    settings = load_settings(host.data)
    mailhost = mailhost_settings(host)
    present = host.data.get("present", True)
    relay_access(mailhost=mailhost, relay_cidrs=settings.relay_cidrs, present=present,
                 names=("test: rspamd exemption", "test: postscreen whitelist"))
    if present and host.data.get("prove", False):
        verify_live(name="test: stage 4 proof", mailhost=mailhost, relay_cidrs=settings.relay_cidrs,
                    domain=settings.domains[0].name, record=lambda *proof: None)
