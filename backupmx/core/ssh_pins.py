"""A host whose SSH key is pinned (``ssh_strict_host_key_checking: yes``) needs its known_hosts file.

pyinfra trusts a host on first use unless told otherwise; production pins each host's
key in a known_hosts file (PYINFRA-NOTES.md). A file that is not there would fail the
connection with a host-key error naming nothing in the inventory: stage 0 says instead
which file to create, and how.
"""

from __future__ import annotations

from pathlib import Path

from backupmx.core.errors import ConfigError
from backupmx.core.validate import lookup


def check_host_key_pin(data, host_name: str) -> None:
    """The known_hosts file of host ``host_name`` (its ``data``) exists when its key is pinned; else one
    ``ConfigError``."""
    if str(lookup(data, "ssh_strict_host_key_checking")).lower() != "yes":
        return
    known_hosts = lookup(data, "ssh_known_hosts_file")
    if not known_hosts or Path(str(known_hosts)).expanduser().is_file():
        return
    target = lookup(data, "ssh_hostname") or host_name
    port = lookup(data, "ssh_port")
    scan = f"ssh-keyscan{f' -p {port}' if port and str(port) != '22' else ''} {target}"
    raise ConfigError("ssh_known_hosts_file", f"{known_hosts} does not exist, and the host's key is pinned "
                      "(ssh_strict_host_key_checking yes)",
                      f"create it: {scan} >> {known_hosts}, then compare `ssh-keygen -lf {known_hosts}` with the "
                      f"fingerprint the host shows (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub, on its console)")
