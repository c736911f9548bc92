"""The mail host stage's files and commands against the real Postfix and rspamd tools
(``postconf``, ``postmap``, ``rspamadm``) on a scratch configuration: no daemon runs.

The docker-mailserver flavour cannot be tested against a real container here (no
Docker daemon, no image registry on this machine). Its files, its commands and the
transaction that applies them are tested with a stand-in ``docker`` that runs the
``docker exec`` command line locally (``support.scratch.docker_mailserver``), against real
``postconf`` and ``postmap`` on a scratch Postfix configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import OperationError, PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from support.scratch import (
    MASTER_CF,
    RELAYS,
    USER_PATCHES,
    calls,
    docker_mailserver,
    listeners,
    native,
    run_fact,
    run_script,
    scratch_main_cf,
    stand_ins,
)

from backupmx.mailhost.listener import wanted_listener_options
from backupmx.mailhost.model import (
    ACCESS_LIST,
    CACHE_MAP,
    RSPAMD_CAP_RULE,
    RSPAMD_RELAY_SYMBOL,
    RSPAMD_RULE,
    USER_PATCHES_BLOCK,
    MailHost,
)
from backupmx.mailhost.probes import probe_addresses
from backupmx.mailhost.proof import settings_rule_in_dump
from backupmx.mailhost.render import (
    render_postscreen_access,
    render_rspamd_block,
    render_user_patches_block,
    rspamd_files,
)
from backupmx.postfix.blocks import find_block, with_block
from backupmx.postfix.mastercf import set_service_options
from backupmx.postfix.transaction import FileChange, Transaction, transaction_script
from facts import mailhost as facts
from operations.mailhost import postscreen_whitelist, rspamd_exemption


@pytest.fixture
def bin_dir(tmp_path):
    return stand_ins(tmp_path)


@pytest.fixture
def fake_docker(tmp_path, bin_dir):
    return docker_mailserver(tmp_path, bin_dir)


def test_postscreen_access_table_works_with_postmap(tmp_path):
    scratch_main_cf(tmp_path)
    table = tmp_path / "postscreen_access.cidr"
    table.write_text(render_postscreen_access(RELAYS))

    def query(address):
        result = subprocess.run(["postmap", "-c", str(tmp_path), "-q", address, f"cidr:{table}"],
                                capture_output=True, text=True)
        return result.stdout.strip(), result.stderr

    probes = probe_addresses(RELAYS)
    assert all(query(address) == ("permit", "") for _, address in probes.inside)
    assert all(query(address) == ("", "") for address in probes.outside)


def test_rspamd_rule_passes_configtest_and_configdump_shows_it(tmp_path):
    (tmp_path / "local.d").mkdir()
    (tmp_path / "local.d" / "settings.conf").write_text(render_rspamd_block(RELAYS))
    args = [f"--var=LOCAL_CONFDIR={tmp_path}"]
    test = subprocess.run(["rspamadm", *args, "configtest"], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and test.stdout.strip() == "syntax OK", test.stdout + test.stderr
    dump = subprocess.run(["rspamadm", *args, "configdump", "-j", "settings"], capture_output=True, text=True,
                          timeout=60)
    rule = json.loads(dump.stdout)[RSPAMD_RULE]
    assert rule["ip"] == RELAYS and rule["apply"]["groups_disabled"] == ["spf", "dmarc"]
    assert rule["apply"]["actions"] == {"reject": None}  # relayed mail is never rejected


def test_master_cf_edits_check_out_with_postconf(tmp_path):
    scratch_main_cf(tmp_path)
    m = native(postfix_config_dir=str(tmp_path))
    (tmp_path / "master.cf").write_text(set_service_options(
        MASTER_CF, "2525", "inet", {ACCESS_LIST: f"permit_mynetworks,cidr:{m.cidr_path}", CACHE_MAP: m.cache_map()}))
    overrides = subprocess.run(["postconf", "-c", str(tmp_path), "-P"], capture_output=True, text=True).stdout
    assert f"2525/inet/postscreen_access_list = permit_mynetworks,cidr:{m.cidr_path}" in overrides
    assert not any(line.startswith("smtp/inet/postscreen_access_list") for line in overrides.splitlines())


def test_docker_mailserver_facts_run_through_docker_exec(tmp_path, bin_dir, fake_docker):
    m = fake_docker
    found = run_fact(facts.PostscreenListeners, bin_dir, config_dir=m.postfix_config_dir, **facts.facts_args(m))
    assert found["postconf"] and found["services"]["2525/inet"].params == {
        "syslog_name": "postfix/smtpd-proxyprotocol", "postscreen_upstream_proxy_protocol": "haproxy"}
    # Every read of the fact ran in the container, through one exec of one script.
    execs = [call for call in calls(tmp_path) if call.startswith("docker ")]
    assert len(execs) == 1 and execs[0].startswith("docker exec mailserver sh -c "), execs
    assert f"postconf -c {m.postfix_config_dir} -P" in "\n".join(calls(tmp_path))
    env = {"ENABLE_OPENDMARC": "0"}
    policies = run_fact(facts.DockerMailserverPolicies, bin_dir, container="mailserver", docker=m.docker)
    assert policies["ok"] and policies["env"]["ENABLE_OPENDMARC"] is None  # unset: docker-mailserver's default 1
    os.environ.update(env)
    try:
        policies = run_fact(facts.DockerMailserverPolicies, bin_dir, container="mailserver", docker=m.docker)
    finally:
        del os.environ["ENABLE_OPENDMARC"]
    assert policies["env"]["ENABLE_OPENDMARC"] == "0"
    files = run_fact(facts.MailhostFiles, bin_dir, paths=(m.user_patches_host_path, m.cidr_host_path))
    assert files == {m.user_patches_host_path: {"content": USER_PATCHES, "error": None},
                     m.cidr_host_path: {"content": None, "error": None}}


def docker_plan_transaction(m: MailHost, listener_params: dict, user_patches: str | None) -> Transaction:
    """What operations.mailhost builds for docker-mailserver, from the same pure pieces."""
    services = listeners(listener_params)
    options = wanted_listener_options(m, services, {ACCESS_LIST: "permit_mynetworks"})
    block = render_user_patches_block(m, options)
    new_patches = with_block(user_patches, USER_PATCHES_BLOCK, block, header="#!/bin/bash\n")
    probes = probe_addresses(RELAYS)
    return Transaction(
        label="postscreen_whitelist 2525/inet",
        files=(FileChange(m.cidr_host_path, None, render_postscreen_access(RELAYS)),
               FileChange(m.user_patches_host_path, user_patches, new_patches)),
        live_files=(tuple(m.in_target([m.master_cf_path])),),
        live_commands=tuple((f"postconf -P {name}", tuple(m.postconf("-P", f"{m.service_key}/{name}={value}")))
                            for name, value in options.items()),
        postfix_check=tuple(m.postfix_check()),
        probes=tuple((tuple(m.postmap_query(a)), "permit") for _, a in probes.inside)
        + tuple((tuple(m.postmap_query(a)), "") for a in probes.outside),
        reloads=(tuple(m.postfix_reload_argv()),),
    )


def test_docker_mailserver_whitelist_applies_live_in_the_container(tmp_path, bin_dir, fake_docker):
    m = fake_docker
    tx = docker_plan_transaction(m, {"syslog_name": "postfix/smtpd-proxyprotocol",
                                     "postscreen_upstream_proxy_protocol": "haproxy"}, USER_PATCHES)
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 0, result.stderr
    overrides = subprocess.run(["postconf", "-c", m.postfix_config_dir, "-P"], capture_output=True, text=True).stdout
    assert f"2525/inet/postscreen_access_list = permit_mynetworks,cidr:{m.cidr_path}" in overrides
    assert Path(m.user_patches_host_path).read_text().startswith(USER_PATCHES)
    log = calls(tmp_path)
    assert f"docker exec mailserver postconf -c {m.postfix_config_dir} -P 2525/inet/postscreen_access_list=" \
           f"permit_mynetworks,cidr:{m.cidr_path}" in log
    assert f"docker exec mailserver postfix -c {m.postfix_config_dir} reload" in log
    assert any(line.startswith("docker exec mailserver postmap") for line in log)
    assert not list(Path(m.postfix_config_dir).glob("*.backupmx-*"))


def test_docker_mailserver_failure_restores_the_container_and_the_host(tmp_path, bin_dir, fake_docker):
    m = fake_docker
    master_before = Path(m.master_cf_path).read_bytes()
    tx = docker_plan_transaction(m, {}, USER_PATCHES)
    tx = Transaction(**{**tx.__dict__, "live_commands": tx.live_commands + (
        ("postconf -P a misspelled one", tuple(m.postconf("-P", "2525/inet/postscren_greet_action=enforce"))),)})
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 1
    assert "postfix check warns after the change" in result.stderr or "unused parameter" in result.stderr, result.stderr
    assert Path(m.master_cf_path).read_bytes() == master_before
    assert Path(m.user_patches_host_path).read_text() == USER_PATCHES and not Path(m.cidr_host_path).exists()
    assert not any("reload" in line for line in calls(tmp_path))


def local_state():
    state = State(inventory=Inventory(([("@local", {})], {})), config=Config())
    connect_all(state)
    return state, state.inventory.get_host("@local")


def add_and_run(operations, **kwargs):
    state, host = local_state()
    metas = [add_op(state, operation, name=operation.__name__, **kwargs)[host] for operation in operations]
    changes = [meta.will_change for meta in metas]
    try:
        run_ops(state)
    except PyinfraError:
        pass
    return changes, host not in state.failed_hosts


def test_docker_mailserver_operations_apply_and_converge(tmp_path, bin_dir, fake_docker, monkeypatch):
    m = fake_docker
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ENABLE_POLICYD_SPF", "0")
    monkeypatch.setenv("ENABLE_OPENDMARC", "0")
    master_before = Path(m.master_cf_path).read_text()

    changes, ok = add_and_run([rspamd_exemption, postscreen_whitelist], mailhost=m, relay_cidrs=RELAYS)

    assert changes == [True, True] and ok
    patches = Path(m.user_patches_host_path).read_text()
    assert patches.startswith(USER_PATCHES) and find_block(patches, USER_PATCHES_BLOCK)
    assert Path(m.cidr_host_path).read_text() == render_postscreen_access(RELAYS)
    assert Path(m.rspamd_settings_live_path).read_text() == Path(m.rspamd_settings_host_path).read_text()
    overrides = subprocess.run(["postconf", "-c", m.postfix_config_dir, "-P"], capture_output=True, text=True).stdout
    assert f"2525/inet/postscreen_access_list = permit_mynetworks,cidr:{m.cidr_path}" in overrides
    assert f"2525/inet/postscreen_cache_map = {m.cache_map()}" in overrides
    assert Path(m.master_cf_path).read_text() != master_before
    log = calls(tmp_path)
    assert "docker exec mailserver supervisorctl signal HUP rspamd" in log
    assert f"docker exec mailserver postfix -c {m.postfix_config_dir} reload" in log

    # Second run: nothing to change, on the host or in the "container".
    (tmp_path / "calls.log").unlink()
    changes, ok = add_and_run([rspamd_exemption, postscreen_whitelist], mailhost=m, relay_cidrs=RELAYS)
    assert changes == [False, False] and ok
    assert not any("reload" in line or "HUP" in line for line in calls(tmp_path))

    # The container was recreated from its image: user-patches.sh is right, the live master.cf is not.
    Path(m.master_cf_path).write_text(master_before)
    changes, ok = add_and_run([postscreen_whitelist], mailhost=m, relay_cidrs=RELAYS)
    assert changes == [True] and ok
    assert Path(m.user_patches_host_path).read_text() == patches
    assert "postscreen_access_list" in Path(m.master_cf_path).read_text()


def test_docker_mailserver_with_policyd_spf_gets_the_relay_smtpd_service(tmp_path, bin_dir, fake_docker, monkeypatch):
    """ENABLE_POLICYD_SPF on (its default): no global change asked for; the PROXY-v2 listener hands
    its clients to a copy of smtpd/pass that lets the relay networks past policyd-spf only."""
    m = fake_docker
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("ENABLE_POLICYD_SPF", raising=False)  # unset: docker-mailserver's default, 1
    monkeypatch.setenv("ENABLE_OPENDMARC", "0")
    dms_recipient = ("permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination, "
                     "check_policy_service unix:private/policyd-spf, reject_unknown_recipient_domain")
    subprocess.run(["postconf", "-c", m.postfix_config_dir, "-e", f"smtpd_recipient_restrictions = {dms_recipient}"],
                   check=True)

    main_before, master_before = Path(m.main_cf_path).read_text(), Path(m.master_cf_path).read_text()

    changes, ok = add_and_run([postscreen_whitelist], mailhost=m, relay_cidrs=RELAYS)

    assert changes == [True] and ok
    live = _relay_state(m)
    assert live["overrides"] >= {"2525/inet/smtpd_service_name = backupmx-relay",
                                 f"backupmx-relay/pass/backupmx_relay_exception = check_client_access,cidr:{m.cidr_path}"}
    assert live["recipient"] == ("permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination, "
                                 "$backupmx_relay_exception, check_policy_service unix:private/policyd-spf, "
                                 "reject_unknown_recipient_domain")
    patches = Path(m.user_patches_host_path).read_text()
    assert "postconf -M 'backupmx-relay/pass=backupmx-relay pass - - y - - smtpd'" in patches
    # A recreated container: docker-mailserver's main.cf and master.cf anew, then user-patches.sh
    # (run here with bash, as docker-mailserver does) puts the same state back.
    Path(m.main_cf_path).write_text(main_before)
    Path(m.master_cf_path).write_text(master_before)
    env = {**os.environ, "MAIL_CONFIG": m.postfix_config_dir}
    ran = subprocess.run(["bash", m.user_patches_host_path], capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr
    restarted = _relay_state(m)
    assert restarted["recipient"].replace(",", " ").split() == live["recipient"].replace(",", " ").split()
    assert restarted["overrides"] == live["overrides"]
    # ... and a second run of the deploy finds nothing to change.
    changes, ok = add_and_run([postscreen_whitelist], mailhost=m, relay_cidrs=RELAYS)
    assert changes == [False] and ok


def _relay_state(m) -> dict:
    def postconf(*args):
        return subprocess.run(["postconf", "-c", m.postfix_config_dir, *args], capture_output=True, text=True,
                              check=True).stdout
    ours = ("backupmx-relay/", "2525/inet/smtpd_service_name", "2525/inet/postscreen_access_list")
    return {"overrides": {line for line in postconf("-P").splitlines() if line.startswith(ours)},
            "recipient": postconf("-h", "smtpd_recipient_restrictions").strip()}


def test_docker_mailserver_with_opendmarc_on_is_refused_before_anything_changes(tmp_path, bin_dir, fake_docker,
                                                                               monkeypatch):
    m = fake_docker
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ENABLE_POLICYD_SPF", "1")
    monkeypatch.delenv("ENABLE_OPENDMARC", raising=False)  # unset: docker-mailserver's default, 1
    with pytest.raises(OperationError) as error:
        add_and_run([postscreen_whitelist], mailhost=m, relay_cidrs=RELAYS)
    assert "ENABLE_OPENDMARC=unset, default 1" in str(error.value)
    assert "ENABLE_POLICYD_SPF" not in str(error.value)
    assert Path(m.user_patches_host_path).read_text() == USER_PATCHES and not Path(m.cidr_host_path).exists()


def test_external_relay_files_pass_configtest_and_configdump_shows_them(tmp_path):
    """The real rspamadm: no new output (a condition on a missing symbol only warns), the rules as rendered."""
    mailhost = native(relay_scoring="external_relay", rspamd_local_dir=str(tmp_path))
    (tmp_path / "local.d").mkdir()
    for path, (name, comment, block) in rspamd_files(mailhost, RELAYS).items():
        Path(path).write_text(with_block(None, name, block, comment=comment))
    args = [f"--var=LOCAL_CONFDIR={tmp_path}"]
    test = subprocess.run(["rspamadm", *args, "configtest"], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and test.stdout.strip() == "syntax OK", test.stdout + test.stderr
    assert "condition" not in test.stderr and "external_relay" not in test.stderr, test.stderr  # fuzzy noise only

    def dump(section):
        result = subprocess.run(["rspamadm", *args, "configdump", "-j", section], capture_output=True, text=True,
                                timeout=60)
        return json.loads(result.stdout)

    rule = dump("external_relay")["rules"][RSPAMD_RELAY_SYMBOL]
    assert rule == {"strategy": "count", "count": 3, "priority": 9}
    settings = dump("settings")
    assert settings_rule_in_dump(mailhost, settings, RELAYS) == (True, RSPAMD_CAP_RULE)
    assert settings_rule_in_dump(native(), settings, RELAYS)[0] is False  # not the exempt rule
