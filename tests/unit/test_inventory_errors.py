"""Bad inventory data names where its key is written: the inventory file and the line, or
``--data KEY``; never the code that found it (pyinfra names the innermost frame)."""

from __future__ import annotations

import pytest

from backupmx.core.errors import ConfigError, SecretError
from backupmx.core.inventory_errors import field_keys, key_line, locate, stop_message

INVENTORY = '''\
import os

_settings = {
    "domains": [
        {
            "name": "example.org",
            "primary_mx": [{"host": "mail.example.org", "priority": 1}],
        },
    ],
    "backup_mx": {
        "provider": "self-hosted",
        "hosts": ["mx1.example.net",
                  "mx2.example.net"],
    },
    "relay_cidrs": os.environ.get("CIDRS"),
}

mailhosts = [("mail.example.org", {**_settings, "mailhost": {"flavour": "exim"}})]
monitoring = [("mon.example.org", {**_settings, "mailhost": {"flavour": "native"}})]
'''


@pytest.mark.parametrize("field,keys", [
    ("backup_mx.provider", ["backup_mx", "provider"]),
    ("domains[0].primary_mx[1].host", ["domains", 0, "primary_mx", 1, "host"]),
    ("relay['relay1.example.org'].relayhost", ["relay", "relay1.example.org", "relayhost"]),
    ("gate_ledger.domains['example.org'].mode", ["gate_ledger", "domains", "example.org", "mode"]),
])
def test_a_field_is_its_key_path(field, keys):
    assert field_keys(field) == keys


@pytest.mark.parametrize("field,host,line", [
    ("backup_mx.provider", None, 11),
    ("backup_mx.hosts[1]", None, 13),
    ("domains[0].primary_mx[0].priority", None, 7),
    ("domains[0].name", None, 6),
    # A value built by code: the line of the key it is assigned to.
    ("relay_cidrs[2]", None, 15),
    # A host's own section: that host's line, not another host's same key.
    ("mailhost.flavour", "mail.example.org", 18),
    ("mailhost.flavour", "mon.example.org", 19),
    ("vault.addr", None, None),
])
def test_the_line_a_key_is_written_on(field, host, line):
    assert key_line(INVENTORY, field, host) == line


def test_where_names_the_file_and_line_or_the_command_line(tmp_path):
    path = tmp_path / "production.py"
    path.write_text(INVENTORY)
    assert locate("backup_mx.provider", str(path), ()) == f"{path} line 11"
    assert locate("backup_mx.provider", str(path), ("backup_mx",)) == "--data backup_mx"
    assert locate("vault.addr", str(path), ()) == str(path)
    assert locate("backup_mx.provider", None, ()) is None


def test_the_stop_line_puts_the_place_first(tmp_path):
    path = tmp_path / "production.py"
    path.write_text(INVENTORY)
    error = ConfigError("backup_mx.provider", "'self-hosted' is not a provider kind", "did you mean selfhosted?")
    assert stop_message(error, str(path)) == (f"{path} line 11: inventory data backup_mx.provider: 'self-hosted' "
                                             "is not a provider kind; did you mean selfhosted?")
    error = ConfigError("mailhost.flavour", "'exim' is not a mail host flavour")
    assert stop_message(error, str(path), (), "mail.example.org") == (
        f"{path} line 18: mail.example.org: inventory data mailhost.flavour: 'exim' is not a mail host flavour")
    # Not inventory data: the message alone.
    assert stop_message(SecretError("Vault: no token"), str(path)) == "Vault: no token"
