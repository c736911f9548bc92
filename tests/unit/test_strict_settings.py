"""Strict settings: an unknown key stops stage 0 with one line naming its path and the known keys.

Below each top-level key of ours every key is ours, so an unknown one is refused.
At the top level, pyinfra's host data also holds pyinfra's keys (``ssh_*``, ``_sudo``),
other tools' group data and ``--data`` flags: there only a near miss of one of ours
(``backup-mx``, ``relay_cidr``) is refused (docs/configuration.md, "Strict keys").
"""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyinfra.api import Inventory
from pyinfra.api.arguments import all_global_arguments
from pyinfra.api.connectors import get_all_connectors

from backupmx.core.errors import ConfigError
from backupmx.core.keys import (
    BACKUP_MX_KEYS,
    DOMAIN_KEYS,
    MTA_STS_KEYS,
    PRIMARY_MX_KEYS,
    TOP_LEVEL_KEYS,
    VAULT_KEYS,
    check_inventory_keys,
    check_top_level_keys,
)
from backupmx.core.relayhost import RELAYHOST_KEYS, load_relayhost
from backupmx.core.settings import load_settings
from backupmx.core.validate import command, hostname
from backupmx.lifecycle.drill.settings import KNOWN as FAILOVER_KEYS
from backupmx.lifecycle.canary.settings import load_canary
from backupmx.lifecycle.drill.settings import load_failover
from backupmx.mailhost.model import MAILHOST_KEYS, load_mailhost
from backupmx.monitoring.settings import MONITORING_KEYS, load_monitoring
from backupmx_sandbox import seed

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))

GOOD = {
    "domains": [{"name": "viktorbarzin.me", "primary_mx": [{"host": "mail.viktorbarzin.me", "priority": 1}]}],
    "backup_mx": {"provider": "rollernet", "hosts": ["mail.rollernet.us", "mail2.rollernet.us"], "priority": 20},
    "relay_cidrs": ["162.216.242.0/24", "72.51.58.0/24"],
    "vault": {"addr": "https://vault.example.net:8200", "secret_path": "secret/viktor"},
}
RELAYHOST = {"hostname": "relay1.example.org", "public_addresses": ["198.51.100.7"], "primary": "mail.example.org"}
NATIVE = load_mailhost({"flavour": "native", "proxy_service": "127.0.0.1:2525/inet"})
FAILOVER = {"stop_command": ["systemctl", "stop", "postfix"], "start_command": ["systemctl", "start", "postfix"],
            "maildir": "/var/mail/catchall", "sender_domain": "probe.example", "dkim_key": "/k", "dkim_selector": "s"}


def refused(load, *args) -> str:
    with pytest.raises(ConfigError) as caught:
        load(*args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def with_key(path: str, key: str, value=1) -> dict:
    """GOOD with ``key`` added to the mapping at ``path`` (dotted; digits index lists; "" = the top)."""
    data = copy.deepcopy(GOOD)
    target = data
    for part in filter(None, path.split(".")):
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    target[key] = value
    return data


# --------------------------------------------------------- below our own keys


SETTINGS_LEVELS = [
    # (where the key goes, the mistyped key, the path the line names, the known keys it lists)
    ("domains.0", "nmae", "domains[0].nmae", DOMAIN_KEYS),
    ("domains.0.primary_mx.0", "prio", "domains[0].primary_mx[0].prio", PRIMARY_MX_KEYS),
    ("backup_mx", "smtp_endpoint", "backup_mx.smtp_endpoint", BACKUP_MX_KEYS),
    ("vault", "token_fiel", "vault.token_fiel", VAULT_KEYS),
    ("cloudflare", "api", "cloudflare.api", ("api_base", "record_quota", "read_timeout")),
    ("mta_sts", "connect", "mta_sts.connect", MTA_STS_KEYS),
    ("provider", "usr", "provider.usr", ("name", "backend", "api_base", "user")),
    ("provider.api", "modul", "provider.api.modul", ("module", "actions", "facts")),
    ("gate_ledger", "overag", "gate_ledger.overag", ("overage", "relay_cidrs", "domains")),
    ("providers.selfhosted", "backupmx", "providers.selfhosted.backupmx",
     ("backup_mx", "relay_cidrs", "provider", "gate_ledger")),
]


@pytest.mark.parametrize("path,key,field,known", SETTINGS_LEVELS, ids=[case[2] for case in SETTINGS_LEVELS])
def test_an_unknown_settings_key_is_one_line_naming_its_path_and_the_known_keys(path, key, field, known):
    data = with_key(path, key)
    if path.startswith("provider.") or path == "provider":
        data["provider"] = {"name": "rollernet", **data["provider"]}
    message = refused(load_settings, data)
    assert message.startswith(f"inventory data {field}: is not a known key; "), message
    assert "known keys: " + ", ".join(known) in message, message


def test_a_close_key_gets_a_did_you_mean():
    message = refused(load_settings, with_key("backup_mx", "smtp_endpoint", {}))
    assert "did you mean smtp_endpoints? known keys: provider, hosts, priority" in message, message
    # Nothing close: only the known keys.
    message = refused(load_settings, with_key("vault", "colour"))
    assert "did you mean" not in message and "known keys: addr, secret_path" in message, message


def test_an_entry_of_providers_not_chosen_is_checked_too():
    # provider is a profile here, so `providers` is not chosen from; its typo is still refused.
    data = {**GOOD, "providers": {"selfhosted": {"backup_mx": {"provider": "selfhosted", "priority": 20},
                                                 "relaycidrs": []}}}
    message = refused(load_settings, data)
    assert message.startswith("inventory data providers.selfhosted.relaycidrs: is not a known key; "
                              "did you mean relay_cidrs?"), message


def test_the_chosen_providers_entry_is_checked_to_the_bottom():
    data = {**GOOD, "provider": "selfhosted",
            "providers": {"selfhosted": {"backup_mx": {"provider": "selfhosted", "priority": 20, "hots": []}}}}
    message = refused(load_settings, data, {"relay-a": RELAYHOST})
    assert message.startswith("inventory data backup_mx.hots: is not a known key; did you mean hosts?"), message


def test_a_profile_of_the_wrong_type_in_providers_is_one_line():
    data = {**GOOD, "provider": "selfhosted", "providers": {"selfhosted": {"provider": ["selfhosted"]}}}
    assert refused(load_settings, data, {"relay-a": RELAYHOST}).startswith(
        "inventory data providers.selfhosted.provider: must be a mapping")


HOST_LEVELS = [
    # (loader, its data with a mistyped key, the path, its known keys)
    (lambda data: load_mailhost(data), {"flavour": "native", "proxy_service": "2525", "flavor": "native"},
     "mailhost.flavor", MAILHOST_KEYS),
    (lambda data: load_relayhost(data), {**RELAYHOST, "primary_prot": 587}, "relayhost.primary_prot",
     RELAYHOST_KEYS),
    (lambda data: load_monitoring(data, load_settings(GOOD)), {"dir": "/srv/m", "dns_target": ["1.1.1.1:53"]},
     "monitoring.dns_target", MONITORING_KEYS),
    (lambda data: load_failover(data, NATIVE, "example.org"), {**FAILOVER, "probe": 3}, "failover.probe",
     FAILOVER_KEYS),
]


@pytest.mark.parametrize("load,data,field,known", HOST_LEVELS, ids=[case[2] for case in HOST_LEVELS])
def test_an_unknown_host_key_is_one_line_naming_its_path_and_the_known_keys(load, data, field, known):
    message = refused(load, data)
    assert message.startswith(f"inventory data {field}: is not a known key; did you mean "), message
    assert message.endswith("known keys: " + ", ".join(known)), message


# ---------------------------------------------------------------- top level


@pytest.mark.parametrize("key,meant", [
    ("backup-mx", "backup_mx"),
    ("relay_cidr", "relay_cidrs"),
    ("domain", "domains"),
    ("Vault", "vault"),
    ("mail_host", "mailhost"),
    ("monitor", "monitoring"),
    ("dns_server", "dns_servers"),
])
def test_a_near_miss_of_one_of_our_top_level_keys_is_refused(key, meant):
    message = refused(load_settings, {**GOOD, key: {}})
    assert message.startswith(f"inventory data {key}: is not a known key; did you mean {meant}? "
                              "backupmx's top-level keys: domains, backup_mx"), message
    assert "(other keys are left to pyinfra and other tools)" in message


def test_other_top_level_keys_are_left_to_pyinfra_and_other_tools():
    pyinfra_keys = [name for name, _ in all_global_arguments()]
    for connector in get_all_connectors().values():
        pyinfra_keys += list(getattr(connector, "data_meta", None) or {})
    others = ["app_dir", "nginx_sites", "timezone", "users", "packages", "hostname", "env", "old"]
    data = {**GOOD, **{key: "x" for key in pyinfra_keys + others}}
    assert load_settings(data).domains[0].name == "viktorbarzin.me"


def test_every_key_the_code_reads_from_host_data_is_a_top_level_key():
    # A key read by name somewhere but missing from TOP_LEVEL_KEYS would be taken for a typo's target
    # never, and its own near misses would pass unseen.
    read = set()
    pattern = re.compile(r"""(?:host|target|current_host)\.data(?:\.get\(\s*["'](\w+)["']|\.(\w+)\b(?!\())""")
    for folder in ("deploys", "operations", "facts", "backupmx"):
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                read.add(match.group(1) or match.group(2))
    pyinfra_keys = {key for key in read if key.startswith("ssh_")}
    assert read - pyinfra_keys <= set(TOP_LEVEL_KEYS), sorted(read - pyinfra_keys - set(TOP_LEVEL_KEYS))
    assert {"mailhost", "relayhost", "monitoring", "failover", "hold"} <= read


def test_every_host_of_the_inventory_is_checked_and_named():
    class Target:
        def __init__(self, name, data):
            self.name, self.data = name, data

    check_inventory_keys([Target("@local", GOOD)])
    with pytest.raises(ConfigError) as caught:
        check_inventory_keys([Target("@local", GOOD), Target("mx1", {**GOOD, "mailhost ": {}, "mail-host": {}})])
    assert str(caught.value).startswith("inventory data mail-host: is not a known key (host mx1); "
                                        "did you mean mailhost?"), caught.value


def test_pyinfra_host_data_is_checked_with_all_its_layers():
    # The near miss is in the group data, not in the host's own: HostData merges them.
    inventory = Inventory((["@local"], {}), override_data={"hold": "on"},
                          controller=([("@local", {"ssh_user": "root"})], {"domain": "viktorbarzin.me"}))
    (target,) = list(inventory)
    with pytest.raises(ConfigError, match=r"^inventory data domain: is not a known key; did you mean domains\?"):
        check_top_level_keys(target.data)


# ------------------------------------------------------ the sandbox inventory


def fake_world(root: Path, selfhosted: bool) -> dict:
    """What ``backupmx-sandbox up`` writes to world.json, with made-up ports and paths: no daemon."""
    ssh = {"host": "127.0.0.1", "port": 2222, "user": "root", "key": str(root / "key"),
           "known_hosts": str(root / "known_hosts")}
    world = {
        "root": str(root), "zone": seed.DOMAIN,
        "primary_mx": {"host": seed.PRIMARY_MX, "priority": seed.PRIMARY_PRIORITY},
        "backup_priority": seed.BACKUP_PRIORITY,
        "relays": [{"host": host, "smtp": f"127.0.0.1:{2525 + index}"} for index, host in enumerate(seed.BACKUP_MX)],
        "ca_cert": str(root / "ca.pem"), "relay_cidrs": seed.RELAY_CIDRS,
        "vault_addr": "http://127.0.0.1:8200", "vault_secret_path": seed.VAULT_SECRET_PATH,
        "vault_token_file": str(root / "token"), "cloudflare_api_base": "http://127.0.0.1:8443/client/v4",
        "record_quota": seed.RECORD_QUOTA, "dns": "127.0.0.1:5353", "acc_api_base": "http://127.0.0.1:8081/api",
        "acc_user": seed.ACC_USER, "ssh": ssh, "sender_domain": seed.SENDER_DOMAIN,
        "dkim_key": str(root / "dkim.key"), "dkim_selector": seed.SENDER_DKIM_SELECTOR,
        "mailhost": {"flavour": "native", "proxy_service": "127.0.0.1:2526/inet",
                     "postfix_config_dir": str(root / "postfix"), "rspamd_local_dir": str(root / "rspamd"),
                     "rspamadm_args": [f"--var=LOCAL_CONFDIR={root}/rspamd"], "rspamd_controller": "127.0.0.1:11334",
                     "rspamd_reload": [str(root / "rspamd-reload")]},
        "maildir": str(root / "Maildir"),
        "failover": {"stop_command": [str(root / "postfix-service"), "stop"],
                     "start_command": [str(root / "postfix-service"), "start"], "maildir": str(root / "Maildir")},
    }
    if selfhosted:
        world["selfhosted"] = {
            "host": f"relay1.{seed.DOMAIN}", "smtp": "127.0.0.1:2600", "ssh": {**ssh, "port": 2223},
            "relayhost": {"hostname": f"relay1.{seed.DOMAIN}", "public_addresses": ["127.0.0.66"],
                          "primary": "127.0.0.1", "primary_port": 2700, "primary_tls_match": seed.PRIMARY_MX,
                          "listen_service": "127.0.0.1:2600", "postfix_config_dir": str(root / "relay-postfix")},
        }
    return world


def inventory_of(path: Path, override_data: dict) -> Inventory:
    """The inventory file's groups as pyinfra's ``Inventory``, as the CLI builds it (its group per file name aside)."""
    spec = importlib.util.spec_from_file_location("strict_settings_inventory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    groups = {name: (hosts, {}) for name, hosts in vars(module).items()
              if not name.startswith("_") and isinstance(hosts, list)}
    names = list(dict.fromkeys(host for hosts, _ in groups.values() for host, _data in hosts))
    return Inventory((names, {}), override_data=override_data, **groups)


@pytest.mark.parametrize("override", [{}, {"provider": "selfhosted"}], ids=["rollernet", "selfhosted"])
def test_the_sandbox_inventory_still_loads(tmp_path, monkeypatch, override):
    world = fake_world(tmp_path, selfhosted=True)
    monkeypatch.setattr("backupmx_sandbox.world.load_world", lambda *args: copy.deepcopy(world))
    inventory = inventory_of(PROJECT_ROOT / "inventory" / "sandbox.py", override)
    check_inventory_keys(inventory)
    relays = {target.name: target.data.get("relayhost") for target in inventory.get_group("relay", [])}
    for target in inventory:
        settings = load_settings(target.data, relays)
        assert settings.domains[0].name == seed.DOMAIN and settings.selfhosted == bool(override)
        if target.data.get("mailhost") is not None:
            load_failover(target.data.get("failover"), load_mailhost(target.data.get("mailhost")), seed.DOMAIN)
            load_canary(target.data.get("canary"), settings)
        if target.data.get("monitoring") is not None:
            load_monitoring(target.data.get("monitoring"), settings)
        if target.data.get("relayhost") is not None:
            load_relayhost(target.data.get("relayhost"))


# ------------------------------------------------ one argv and one host name


@pytest.mark.parametrize("value,words", [
    ("systemctl reload postfix", "must be a command as a list of strings"),
    (["systemctl", 1], "must be a command as a list of strings"),
    ([], "is empty"),
    (["systemctl", "", "postfix"], "has an empty argument"),
])
def test_one_argv_validator_for_every_command(value, words):
    assert words in refused(command, value, "mailhost.postfix_reload")
    assert words in refused(load_relayhost, {**RELAYHOST, "postfix_reload": value})
    assert words in refused(load_failover, {**FAILOVER, "stop_command": value}, NATIVE, "example.org")
    assert words in refused(load_monitoring, {"dir": "/srv/m", "dns_targets": ["1.1.1.1:53"], "reload": [value]},
                            load_settings(GOOD))


@pytest.mark.parametrize("value,words", [
    ("Relay1.Example.org", "write 'relay1.example.org'"),
    ("relay1.example.org.", "write 'relay1.example.org'"),
    ("relay_1.example.org", "not a valid host name"),
    ("relay1", "not a valid host name"),
    ("relay1.example.123", "not a valid host name"),
    ("relay1.example.o", "not a valid host name"),
    ("192.0.2.1", "is an IP address"),
])
def test_one_host_name_validator(value, words):
    assert words in refused(hostname, value, "backup_mx.hosts[0]")
    assert words in refused(load_relayhost, {**RELAYHOST, "hostname": value})
    assert words in refused(load_failover, {**FAILOVER, "sender_domain": value}, NATIVE, "example.org")


def test_relayhost_primary_is_an_ip_address_or_a_canonical_host_name():
    assert load_relayhost({**RELAYHOST, "primary": "[2001:db8::1]"}).primary == "2001:db8::1"
    assert load_relayhost({**RELAYHOST, "primary": "mail.example.org"}).primary == "mail.example.org"
    message = refused(load_relayhost, {**RELAYHOST, "primary": "not a host"})
    assert message == ("inventory data relayhost.primary: 'not a host' is not a valid host name; the primary's "
                       "public SMTP endpoint (a host name or IP address), e.g. mail.example.org")


# ------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("data,field", [
    ({**GOOD, "backup-mx": GOOD["backup_mx"]}, "backup-mx"),
    ({**GOOD, "backup_mx": {**GOOD["backup_mx"], "smtp_endpoint": {}}}, "backup_mx.smtp_endpoint"),
])
def test_the_cli_stops_with_one_line_and_contacts_nothing(tmp_path, data, field):
    state_dir = tmp_path / "state"
    # Every endpoint is a closed loopback port: were anything contacted, the run would say so.
    data = {**data, "state_dir": str(state_dir), "cloudflare": {"api_base": "http://127.0.0.1:9/client/v4"},
            "vault": {"addr": "http://127.0.0.1:9", "secret_path": "secret/viktor"}}
    inventory_file = tmp_path / "inventory.py"
    inventory_file.write_text(f"controller = [('@local', {data!r})]\n")
    result = subprocess.run([PYINFRA, "-y", str(inventory_file), "deploys/backupmx.py"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1 and f"inventory data {field}: is not a known key" in errors[0], text
    assert "did you mean" in errors[0], errors[0]
    assert "Starting operation" not in text and "gate report" not in text, text
    assert not state_dir.exists()


def test_bad_data_names_the_inventory_line_and_stops_before_any_connection(tmp_path):
    # A provider kind that does not exist, written on line 3 of the inventory file; a mail host
    # reached over SSH at a closed loopback port: were it connected to, pyinfra would say so.
    from support.providers import dead_port

    data = {**GOOD, "backup_mx": {**GOOD["backup_mx"], "provider": "self-hosted"},
            "provider": {"name": "self-hosted"}, "state_dir": str(tmp_path / "state")}
    inventory_file = tmp_path / "production.py"
    inventory_file.write_text(
        "_settings = {\n"
        f"    'backup_mx': {data['backup_mx']!r},\n"
        f"    'provider': {data['provider']!r},\n"
        + "".join(f"    {key!r}: {value!r},\n" for key, value in data.items() if key not in ("backup_mx", "provider"))
        + "}\n"
        f"mailhosts = [('127.0.0.1', {{**_settings, 'ssh_port': {dead_port()}, 'mailhost': {{'flavour': 'native'}}}})]\n"
        "controller = [('@local', _settings)]\n")
    result = subprocess.run([PYINFRA, "-y", str(inventory_file), "deploys/backupmx.py"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert errors == [f"--> pyinfra error: {inventory_file} line 2: inventory data backup_mx.provider: "
                      "'self-hosted' is not a provider kind; did you mean selfhosted? The kinds: rollernet, "
                      "selfhosted"], text
    assert "context.py" not in text and "Connecting to hosts" not in text and "127.0.0.1" not in text, text
    assert not (tmp_path / "state").exists()


def test_a_pinned_host_needs_its_known_hosts_file(tmp_path):
    from backupmx.core.ssh_pins import check_host_key_pin

    missing = tmp_path / "known_hosts"
    data = {"ssh_strict_host_key_checking": "yes", "ssh_known_hosts_file": str(missing), "ssh_port": 2222}
    message = refused(check_host_key_pin, data, "mail.example.org")
    assert message.startswith(f"inventory data ssh_known_hosts_file: {missing} does not exist"), message
    assert f"ssh-keyscan -p 2222 mail.example.org >> {missing}" in message
    missing.write_text("")
    check_host_key_pin(data, "mail.example.org")
    check_host_key_pin({**data, "ssh_known_hosts_file": str(tmp_path / "other"),
                        "ssh_strict_host_key_checking": "accept-new"}, "mail.example.org")


def test_the_production_inventory_stops_at_stage_0_until_its_known_hosts_file_exists(monkeypatch):
    # production.py pins its hosts' keys in inventory/known_hosts, which the operator creates.
    from backupmx.core.context import stage_zero

    assert not (PROJECT_ROOT / "inventory" / "known_hosts").exists()
    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setattr(sys, "argv", ["pyinfra", "inventory/production.py", "deploys/backupmx.py"])
    loaded = inventory_of(Path("inventory/production.py"), {})
    # As the CLI makes it: a group named after the file, which says which file it is.
    inventory = Inventory(([target.name for target in loaded], {}), production=([t.name for t in loaded], {}),
                          **{name: ([(t.name, t.data.dict()) for t in hosts], {})
                             for name, hosts in loaded.groups.items()})
    with pytest.raises(Exception) as caught:
        stage_zero(inventory)
    message = str(caught.value)
    assert re.match(r"inventory/production\.py line \d+: mail\.viktorbarzin\.me: inventory data "
                    r"ssh_known_hosts_file: \S*inventory/known_hosts does not exist", message), message
    assert re.search(r"ssh-keyscan mail\.viktorbarzin\.me >> \S*inventory/known_hosts", message), message
