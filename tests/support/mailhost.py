"""Sandbox mail host helpers shared by the stage 3 tests, the drill and the fault matrix.

The files stage 3 manages, their snapshot, putting a state back (and reloading
what changed), the same for any set of files (their bytes, their staged copies, put
back byte for byte), the sandbox's pristine configuration, checks that both
daemons still answer and that the listener is up, one operation through
pyinfra's API on a sandbox SSH host, and a primary that refuses one recipient.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path
from typing import Iterator

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from backupmx.mailhost.layers import RELAY_SMTPD_SERVICE, SERVICE_NAME_OPTION
from backupmx.mailhost.model import ACCESS_LIST, RELAY_SMTPD_BLOCK, RSPAMD_BLOCK, load_mailhost
from backupmx.mailhost.render import main_cf_with_hook
from backupmx.postfix.blocks import with_block
from backupmx.postfix.mastercf import remove_service_options
from backupmx_sandbox import mailhost, seed
from backupmx_sandbox.smtp_client import build_message, send_mail
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import Sandbox
from support.mailpath import endpoint, fresh_ipv4
from support.postfix_reload import postconf_value, reload_and_wait

SENDER = f"someone@{seed.SENDER_DOMAIN}"  # SPF -all (not the relays), DMARC p=reject
# A sender with a mail server and no SPF/DMARC: what a healthy primary takes from an
# outside client (SENDER spoofed from outside scores past docker-mailserver's reject = 11).
NEUTRAL_SENDER = f"someone@{seed.NEUTRAL_SENDER_DOMAIN}"


def managed_paths(world) -> dict[str, Path]:
    m = load_mailhost(world["mailhost"])
    return {"cidr": Path(m.cidr_host_path), "master.cf": Path(m.master_cf_path), "main.cf": Path(m.main_cf_path),
            "settings.conf": Path(m.rspamd_settings_host_path)}


def file_contents(paths: dict[str, Path]) -> dict[str, bytes | None]:
    """Each file's bytes by name (None: absent): what a byte-for-byte comparison after a run takes, or a put-back."""
    return {name: path.read_bytes() if path.exists() else None for name, path in paths.items()}


def staged_copies(paths: dict[str, Path]) -> list[Path]:
    """The staged or set-aside copies (``<file>.backupmx-*``) beside ``paths``: a transaction leaves none."""
    return [found for path in paths.values() for found in path.parent.glob(f"{path.name}.backupmx-*")]


def put_back_files(paths: dict[str, Path], state: dict[str, bytes | None]) -> list[str]:
    """Each file of ``paths`` byte for byte as ``state`` has it (None: removed); the names that had to change."""
    current = file_contents(paths)
    changed = [name for name in paths if current[name] != state[name]]
    for name in changed:
        if state[name] is None:
            paths[name].unlink()
        else:
            paths[name].write_bytes(state[name])
    return changed


def snapshot(world) -> dict[str, bytes | None]:
    return file_contents(managed_paths(world))


def leftovers(world) -> list[Path]:
    """Staged or set-aside files a transaction must never leave behind."""
    return staged_copies(managed_paths(world))


def reload_postfix(world) -> None:
    """The sandbox primary's Postfix reloaded, and serving with its new configuration."""
    reload_and_wait(world["postfix_config_dir"])


def reload_rspamd(world) -> None:
    subprocess.run(world["mailhost"]["rspamd_reload"], check=True, capture_output=True, timeout=90)


def restore(world, state: dict[str, bytes | None]) -> None:
    """Put the managed files back as ``state`` has them and reload what changed."""
    changed = put_back_files(managed_paths(world), state)
    if {"cidr", "master.cf", "main.cf"} & set(changed):
        reload_postfix(world)
    if "settings.conf" in changed:
        reload_rspamd(world)


@contextlib.contextmanager
def put_back_after(world) -> Iterator[dict[str, bytes | None]]:
    """The managed files as they were before the block (its snapshot, yielded) put back after it, reloaded."""
    before = snapshot(world)
    try:
        yield before
    finally:
        restore(world, before)


def pristine_state(world) -> dict[str, bytes | None]:
    """The sandbox's own configuration: master.cf as `backupmx-sandbox up` writes it, no table, no rule."""
    master_cf = managed_paths(world)["master.cf"]
    settings = managed_paths(world)["settings.conf"]
    text = master_cf.read_text()
    listener = world["mailhost"]["proxy_service"].split("/")[0]
    ours = {ACCESS_LIST: f"permit_mynetworks,cidr:{managed_paths(world)['cidr']}",
            SERVICE_NAME_OPTION: RELAY_SMTPD_SERVICE}
    original = with_block(remove_service_options(text, listener, "inet", ours), RELAY_SMTPD_BLOCK, None)
    foreign = with_block(settings.read_text(), RSPAMD_BLOCK, None) if settings.exists() else None
    main_cf = main_cf_with_hook(managed_paths(world)["main.cf"].read_text(), load_mailhost(world["mailhost"]), None)
    return {"cidr": None, "master.cf": original.encode(), "main.cf": main_cf.encode(),
            "settings.conf": foreign.encode() if foreign else None}


def services_answer(world, recipient: str) -> None:
    """Postfix (through postscreen on the PROXY-v2 listener) accepts mail and rspamd's controller answers."""
    host, port = endpoint(world["proxy_listener"])
    result = send_mail(host, port, NEUTRAL_SENDER, recipient, build_message(NEUTRAL_SENDER, recipient)[0],
                       proxy_source=fresh_ipv4())  # waits for the greeting, as a good client does
    assert result.accepted, str(result)
    ping = subprocess.run(["rspamc", "-h", world["rspamd_controller"], "stat"], capture_output=True, timeout=30,
                          check=False)
    assert ping.returncode == 0, ping.stderr


def start_postfix_if_down(world, sandbox) -> None:
    """Never leave the mail host down for the next test: the drill stops its Postfix."""
    if not listener_up(world):
        Supervisor(sandbox).start(mailhost.postfix_daemon(mailhost.mailhost_paths(sandbox), mailhost.mailhost_ports(sandbox)))


def run_api_operation(ssh: dict, host_name: str, operation, caplog, **arguments) -> tuple[bool, str]:
    """One operation through pyinfra's API on a sandbox SSH host (``world["ssh"]`` or the relay's);
    (succeeded, what pyinfra logged)."""
    data = {"ssh_hostname": ssh["host"], "ssh_port": ssh["port"], "ssh_user": ssh["user"], "ssh_key": ssh["key"],
            "ssh_known_hosts_file": ssh["known_hosts"], "ssh_strict_host_key_checking": "yes"}
    state = State(inventory=Inventory(([(host_name, data)], {})), config=Config())
    connect_all(state)
    try:
        caplog.clear()
        add_op(state, operation, name=f"{operation.__name__} through the API", **arguments)
        try:
            run_ops(state)
        except PyinfraError:
            pass
        return state.inventory.get_host(host_name) not in state.failed_hosts, caplog.text
    finally:
        disconnect_all(state)


def worker_pids(world) -> set[int]:
    """The rspamd main process's children: a reload replaces them."""
    main = Supervisor(Sandbox()).pid("rspamd")
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(main)], capture_output=True, text=True).stdout
    return {int(pid) for pid in children.split()}


def listener_up(world) -> bool:
    """The mail host's PROXY-v2 listener accepts connections."""
    try:
        socket.create_connection(endpoint(world["proxy_listener"]), timeout=2).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def primary_refuses(world, recipient: str) -> Iterator[str]:
    """The primary answers ``RCPT TO:<recipient>`` with 554 (an access rule planted first in main.cf's
    smtpd_recipient_restrictions, as an operator's slip in an access map would); main.cf put back after.
    Yields the reply's text as a relay records it."""
    main_cf = Path(world["postfix_config_dir"], "main.cf")
    before = main_cf.read_bytes()
    current = postconf_value(world["postfix_config_dir"], "smtpd_recipient_restrictions")
    planted = f"check_recipient_access inline:{{{recipient}=REJECT}}"
    subprocess.run(["postconf", "-c", world["postfix_config_dir"], "-e", f"smtpd_recipient_restrictions={planted}, {current}"], check=True,
                   capture_output=True, timeout=30)
    reload_postfix(world)
    try:
        yield f"said: 554 5.7.1 <{recipient}>: Recipient address rejected: Access denied"
    finally:
        main_cf.write_bytes(before)
        reload_postfix(world)
