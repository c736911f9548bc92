"""Test helper: put the stage-3 whitelist and exemption on the sandbox mail host (no gates, no DNS).

Used by tests/cli/test_rollback.py to make the state ``revert_mailhost`` takes away.
"""

from pyinfra import host

from backupmx.core.settings import load_settings
from operations.mailhost import mailhost_settings, postscreen_whitelist, rspamd_exemption

if "mailhosts" in host.groups:
    settings = load_settings(host.data)
    mailhost = mailhost_settings(host)
    rspamd_exemption(name="test: rspamd exemption", mailhost=mailhost, relay_cidrs=settings.relay_cidrs)
    postscreen_whitelist(name="test: postscreen whitelist", mailhost=mailhost, relay_cidrs=settings.relay_cidrs)
