"""Relay scoring (``mailhost.relay_scoring``) in the sandbox: the external_relay inventory, the files
stage 3 writes in either mode, and the way back to the seeded world.

Used by tests/cli/test_external_relay.py (the modes against the real rspamd and Postfix) and
tests/cli/test_canary_scoring.py (the canary's external_relay verdict).
"""

from __future__ import annotations

from pathlib import Path

from backupmx.mailhost.model import load_mailhost
from support.mailhost import file_contents, leftovers, pristine_state, put_back_files, reload_rspamd, restore, snapshot
from support.providers import PROJECT_ROOT, admin, cloudflare_admin

# The sandbox inventory with the mail host switched to external_relay (``--data`` would
# set it on every host).
EXTERNAL_INVENTORY = '''
import runpy
_inventory = runpy.run_path({sandbox!r})
mailhosts = [(name, {{**data, "mailhost": {{**data["mailhost"], "relay_scoring": "external_relay"}}}})
             for name, data in _inventory["mailhosts"]]
controller = _inventory["controller"]
monitoring = _inventory["monitoring"]
'''


def external_relay_inventory(directory: Path) -> str:
    """Write the external_relay inventory into ``directory``; its path."""
    path = directory / "sandbox_external_relay.py"
    path.write_text(EXTERNAL_INVENTORY.format(sandbox=str(PROJECT_ROOT / "inventory" / "sandbox.py")))
    return str(path)


def rspamd_paths(world) -> dict[str, Path]:
    m = load_mailhost(world["mailhost"])
    return {"external_relay.conf": Path(m.rspamd_external_relay_host_path), "rspamd.lua": Path(m.rspamd_lua_host_path)}


def files(world) -> dict[str, bytes | None]:
    """Every file stage 3 may write, in both modes."""
    return {**snapshot(world), **file_contents(rspamd_paths(world))}


def back_to_seed(world) -> None:
    """The mail host as `backupmx-sandbox up` left it (no external_relay file either), both fakes reset."""
    pristine = pristine_state(world)
    restore(world, pristine)
    if put_back_files(rspamd_paths(world), dict.fromkeys(rspamd_paths(world))):
        reload_rspamd(world)
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    assert files(world) == {**pristine, "external_relay.conf": None, "rspamd.lua": None}
    assert leftovers(world) == []
