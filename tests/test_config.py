"""Stage 0: inventory data is validated into one model; bad input names its field."""

from __future__ import annotations

import copy
import ipaddress

import pytest

from backupmx.config import load_settings
from backupmx.errors import ConfigError

GOOD = {
    "domains": [{"name": "viktorbarzin.me", "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
    "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us", "mail2.rollernet.us"], "priority": 20},
    "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24", "2001:db8:2::/48"],
    "vault": {"addr": "https://vault.example.net:8200", "secret_path": "secret/viktor"},
}


def with_change(path: str, value):
    data = copy.deepcopy(GOOD)
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return data


def test_seed_values_load():
    settings = load_settings(GOOD)
    assert [d.name for d in settings.domains] == ["viktorbarzin.me"]
    assert settings.domains[0].zone == "viktorbarzin.me"
    assert settings.backup_mx.priority == 20
    assert settings.relay_cidrs[0] == ipaddress.ip_network("162.216.242.0/24")
    assert settings.vault.mount == "secret" and settings.vault.path == "viktor"
    assert settings.cloudflare.record_quota == 200


BAD = [
    # (change path, value, field named in the error, words in the error)
    ("relay_cidrs.0", "162.216.242.1/24", "relay_cidrs[0]", "did you mean 162.216.242.0/24"),
    ("relay_cidrs.0", "162.216.242.0/33", "relay_cidrs[0]", "not an IP network"),
    ("relay_cidrs.0", "banana", "relay_cidrs[0]", "not a network"),
    ("relay_cidrs.0", "0.0.0.0/0", "relay_cidrs[0]", "wider than /16"),
    ("relay_cidrs.0", "10.0.0.0/8", "relay_cidrs[0]", "wider than /16"),
    ("relay_cidrs.2", "2001::/16", "relay_cidrs[2]", "wider than /32"),
    ("relay_cidrs.1", "162.216.242.0/24", "relay_cidrs[1]", "listed twice"),
    ("relay_cidrs", [], "relay_cidrs", "empty"),
    ("relay_cidrs", "162.216.242.0/24", "relay_cidrs", "must be a list"),
    ("relay_cidrs", KeyError, "relay_cidrs", "missing"),
    ("backup_mx.priority", 1, "backup_mx.priority", "not worse than primary preference 1"),
    ("backup_mx.priority", 0, "backup_mx.priority", "not worse"),
    ("backup_mx.priority", 70000, "backup_mx.priority", "0-65535"),
    ("backup_mx.priority", "20", "backup_mx.priority", "whole number"),
    ("backup_mx.priority", True, "backup_mx.priority", "whole number"),
    ("backup_mx.hosts.0", "mail.viktorbarzin.me", "primary_mx", "also a backup MX host"),
    ("backup_mx.hosts.1", "mail.rollernet.us", "backup_mx.hosts", "twice"),
    ("backup_mx.hosts.0", "MAIL.rollernet.us", "backup_mx.hosts[0]", "write 'mail.rollernet.us'"),
    ("backup_mx.hosts.0", "mail.rollernet.us.", "backup_mx.hosts[0]", "write 'mail.rollernet.us'"),
    ("backup_mx.hosts.0", "162.216.242.10", "backup_mx.hosts[0]", "IP address"),
    ("backup_mx.hosts.0", "mail_relay.example", "backup_mx.hosts[0]", "not a valid host name"),
    ("backup_mx.provider", "", "backup_mx.provider", "provider profile"),
    ("domains.0.name", "bücher.example", "domains[0].name", "xn--bcher-kva.example"),
    ("domains.0.name", "localhost", "domains[0].name", "not a valid host name"),
    ("domains.0.primary_mx", [], "domains[0].primary_mx", "empty"),
    ("domains.0.primary_mx.0.priority", -1, "domains[0].primary_mx[0].priority", "0-65535"),
    ("domains.0.zone", "other.example", "domains[0].zone", "not inside zone"),
    ("vault.secret_path", "viktor", "vault.secret_path", "<mount>/<path>"),
    ("vault.addr", "vault.example.net", "vault.addr", "not a Vault URL"),
    ("vault", KeyError, "vault", "missing"),
    ("domains", KeyError, "domains", "missing"),
]


@pytest.mark.parametrize("path,value,field,words", BAD, ids=[f"{p}={v!r}" for p, v, _, _ in BAD])
def test_bad_input_names_the_field(path, value, field, words):
    with pytest.raises(ConfigError) as caught:
        load_settings(with_change(path, value))
    message = str(caught.value)
    assert field in message
    assert words in message
    assert "\n" not in message


def test_duplicate_domain_refused():
    data = copy.deepcopy(GOOD)
    data["domains"].append(copy.deepcopy(data["domains"][0]))
    with pytest.raises(ConfigError, match="'viktorbarzin.me' is listed twice"):
        load_settings(data)


def test_backup_must_be_worse_than_every_primary_of_every_domain():
    data = copy.deepcopy(GOOD)
    data["domains"].append({"name": "example.org", "primary_mx": [{"host": "mx.example.org", "priority": 30}]})
    with pytest.raises(ConfigError, match="not worse than primary preference 30 of example.org"):
        load_settings(data)
