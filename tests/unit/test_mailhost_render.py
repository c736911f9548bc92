"""The mail host stage without a mail host: settings, rendering, master.cf and
user-patches.sh edits, probe addresses, and the shell it runs, executed locally with
stand-ins for the daemons' commands (``support.scratch``). The same files against the real
postconf, postmap and rspamadm: tests/integration/test_mailhost_tools.py.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from support.scratch import (
    MASTER_CF,
    RELAYS,
    USER_PATCHES,
    calls,
    dms,
    docker_mailserver,
    listeners,
    native,
    run_fact,
    run_script,
    stand_ins,
    stub,
)

from backupmx.core.errors import BackupMXError, ConfigError
from backupmx.mailhost.listener import missing_listener_message, wanted_listener_options
from backupmx.mailhost.model import (
    ACCESS_LIST,
    CACHE_MAP,
    EXEMPT,
    EXTERNAL_RELAY,
    EXTERNAL_RELAY_BLOCK,
    RSPAMD_BLOCK,
    RSPAMD_CAP_RULE,
    RSPAMD_RELAY_SYMBOL,
    USER_PATCHES_BLOCK,
    dms_policy_conflicts,
    load_mailhost,
)
from backupmx.mailhost.probes import parse_rspamc_action, probe_addresses, probe_message, rspamc_argv, scan_message
from backupmx.mailhost.proof import judge_scans
from backupmx.mailhost.render import (
    parse_postscreen_access,
    render_external_relay_block,
    render_external_relay_lua,
    render_postscreen_access,
    render_relay_cap_block,
    render_rspamd_block,
    render_user_patches_block,
    rspamd_files,
)
from backupmx.postfix.blocks import block_begin, block_end, find_block, with_block
from backupmx.postfix.mastercf import MasterCfError, remove_service_options, set_service_options
from backupmx.postfix.shell import capture_script, in_target, parse_captures
from backupmx.postfix.transaction import INLINE_SCRIPT_LIMIT, FileChange, Transaction, transaction_script
from facts import mailhost as facts
from facts.mailhost_reads import MailhostReads

# --- the settings model ------------------------------------------------------------


def test_native_defaults_are_debians():
    m = native()
    assert (m.postfix_config_dir, m.rspamd_local_dir, m.rspamd_controller) == ("/etc/postfix", "/etc/rspamd",
                                                                            "127.0.0.1:11334")
    assert m.cidr_path == m.cidr_host_path == "/etc/postfix/postscreen_access.cidr"
    assert m.rspamd_settings_host_path == "/etc/rspamd/local.d/settings.conf"
    assert m.postfix_reload_argv() == ["postfix", "-c", "/etc/postfix", "reload"]
    assert m.rspamd_reload_argv() == ["systemctl", "reload", "rspamd"]
    assert m.smtp_probe == "127.0.0.1:2525"
    assert m.postfix_check() == ["script", "-qec", "postfix -c /etc/postfix check", "/dev/null"]


def test_docker_mailserver_paths_and_commands():
    m = dms()
    # Postfix reads the seed's path in the container; pyinfra writes the mounted directory on the host.
    assert m.cidr_path == "/tmp/docker-mailserver/postscreen_access.cidr"
    assert m.cidr_host_path == "/srv/mailserver/docker-data/dms/config/postscreen_access.cidr"
    assert m.user_patches_host_path == "/srv/mailserver/docker-data/dms/config/user-patches.sh"
    assert m.rspamd_settings_host_path == "/srv/mailserver/docker-data/dms/config/rspamd/override.d/settings.conf"
    assert m.rspamd_settings_mounted_path == "/tmp/docker-mailserver/rspamd/override.d/settings.conf"
    assert m.rspamd_settings_live_path == "/etc/rspamd/override.d/settings.conf"
    assert m.postmap_query("192.0.2.1") == ["docker", "exec", "mailserver", "postmap", "-c", "/etc/postfix", "-q",
                                            "192.0.2.1", "cidr:/tmp/docker-mailserver/postscreen_access.cidr"]
    assert m.postfix_check() == ["docker", "exec", "mailserver", "script", "-qec", "postfix -c /etc/postfix check",
                                 "/dev/null"]
    assert m.rspamadm("configtest") == ["docker", "exec", "mailserver", "rspamadm", "configtest"]
    assert m.rspamd_reload_argv() == ["docker", "exec", "mailserver", "supervisorctl", "signal", "HUP", "rspamd"]
    assert m.postfix_reload_argv() == ["docker", "exec", "mailserver", "postfix", "-c", "/etc/postfix", "reload"]
    assert rspamc_argv(m, "192.0.2.1", "postmaster@example.org")[:4] == ["docker", "exec", "-i", "mailserver"]


def test_production_shaped_data_keeps_the_seeds_path():
    # inventory/production.py's mailhost data (tests never load that inventory).
    m = load_mailhost({"flavour": "docker-mailserver", "container": "mailserver",
                          "config_dir": "/tmp/docker-mailserver",
                          "host_config_dir": "/srv/mailserver/docker-data/dms/config", "proxy_service": "2525/inet"})
    assert m.is_docker and m.service_key == "2525/inet"
    assert m.cidr_path == "/tmp/docker-mailserver/postscreen_access.cidr"  # the seed's own path


@pytest.mark.parametrize("data,field", [
    (None, "mailhost"),
    ({"flavour": "exim", "proxy_service": "2525"}, "mailhost.flavour"),
    ({"flavour": "native"}, "mailhost.proxy_service"),
    ({"flavour": "native", "proxy_service": "2525 inet"}, "mailhost.proxy_service"),
    ({"flavour": "native", "proxy_service": "2525/tcp"}, "mailhost.proxy_service"),
    ({"flavour": "native", "proxy_service": "2525", "postfix_config_dir": "etc/postfix"}, "mailhost.postfix_config_dir"),
    ({"flavour": "native", "proxy_service": "2525", "rspamd_local_dir": "/etc/rspamd dir"}, "mailhost.rspamd_local_dir"),
    ({"flavour": "native", "proxy_service": "2525", "rspamd_reload": "systemctl reload rspamd"}, "mailhost.rspamd_reload"),
    ({"flavour": "native", "proxy_service": "2525", "rspamd_controller": "localhost"}, "mailhost.rspamd_controller"),
    ({"flavour": "native", "proxy_service": "2525", "container": "x"}, "mailhost.container"),
    ({"flavour": "native", "proxy_service": "2525", "flavor": "native"}, "mailhost.flavor"),
    ({"flavour": "docker-mailserver", "proxy_service": "2525", "host_config_dir": "/srv/x"}, "mailhost.container"),
    ({"flavour": "docker-mailserver", "proxy_service": "2525", "container": "mailserver"}, "mailhost.host_config_dir"),
    ({"flavour": "docker-mailserver", "proxy_service": "2525", "container": "mail server", "host_config_dir": "/x"},
     "mailhost.container"),
])
def test_bad_mailhost_data_names_the_field(data, field):
    with pytest.raises(ConfigError) as error:
        load_mailhost(data)
    assert str(error.value).startswith(f"inventory data {field}:")
    assert "\n" not in str(error.value)


def test_smtp_probe_address():
    assert native(proxy_service="127.0.0.1:2525/inet").smtp_probe == "127.0.0.1:2525"
    assert native(proxy_service="smtpd-proxy/inet").smtp_probe == ""  # a name, no address: no probe
    assert native(smtp_probe=False).smtp_probe == ""
    assert native(smtp_probe="10.0.0.5:2525").smtp_probe == "10.0.0.5:2525"


# --- probe addresses ---------------------------------------------------------------


def test_probe_addresses_inside_each_network_and_outside_all():
    probes = probe_addresses(RELAYS)
    assert probes.inside == (("192.0.2.0/24", "192.0.2.1"), ("198.51.100.0/24", "198.51.100.1"),
                             ("2001:db8:2::/48", "2001:db8:2::1"))
    assert probes.outside == ("203.0.113.1", "2001:db8:ffff:ffff::1")
    networks = [ipaddress.ip_network(n) for n in RELAYS]
    for address in probes.outside:
        assert not any(ipaddress.ip_address(address) in network for network in networks)


def test_outside_probe_skips_candidates_inside_a_relay_network():
    probes = probe_addresses(["203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"])
    assert probes.outside == ("198.18.0.1",)
    assert probe_addresses(["162.216.242.0/24", "72.51.58.0/24"]).outside == ("203.0.113.1",)


# --- rendering ----------------------------------------------------------------------


def test_postscreen_access_table_permits_every_relay_network():
    text = render_postscreen_access(RELAYS)
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == ["192.0.2.0/24\tpermit", "198.51.100.0/24\tpermit", "2001:db8:2::/48\tpermit"]
    assert parse_postscreen_access(text) == (RELAYS, [])
    assert parse_postscreen_access("garbage here\n10.0.0.0/8 reject\n") == ([], ["garbage here"])


def test_rspamd_rule_disables_only_spf_dmarc_and_the_reject_action_for_the_relays():
    block = render_rspamd_block(RELAYS)
    assert block.startswith(block_begin(RSPAMD_BLOCK) + "\n") and block.endswith(block_end(RSPAMD_BLOCK) + "\n")
    assert "backupmx_relay_exempt {" in block and "priority = high;" in block
    assert 'groups_disabled = ["spf", "dmarc"];' in block
    assert "reject = null;" in block  # relayed mail is never rejected: the relay would bounce it
    for network in RELAYS:
        assert f'"{network}",' in block
    for kept in ("dkim", "bayes", "antivirus", "symbols_disabled", "add header", "greylist"):
        assert kept not in block.split("# END")[0].split("{", 1)[1]


# --- marked blocks -----------------------------------------------------------------------


FOREIGN_SETTINGS = """# the site's own rules
authenticated {
    priority = high;
    authenticated = yes;
    apply { groups_enabled = [dkim]; }
}"""  # no trailing newline on purpose


def test_marked_block_keeps_foreign_content_byte_for_byte():
    block = render_rspamd_block(RELAYS)
    once = with_block(FOREIGN_SETTINGS, RSPAMD_BLOCK, block)
    assert once.startswith(FOREIGN_SETTINGS + "\n\n") and once.endswith(block)
    assert with_block(once, RSPAMD_BLOCK, block) == once  # idempotent
    other = with_block(once, RSPAMD_BLOCK, render_rspamd_block(RELAYS[:1]))
    assert other.startswith(FOREIGN_SETTINGS + "\n\n") and '"198.51.100.0/24"' not in other
    assert with_block(once, RSPAMD_BLOCK, None) == FOREIGN_SETTINGS + "\n"
    assert find_block(once, RSPAMD_BLOCK) == block


def test_marked_block_alone_makes_and_removes_the_whole_file():
    block = render_rspamd_block(RELAYS)
    assert with_block(None, RSPAMD_BLOCK, block) == block
    assert with_block(block, RSPAMD_BLOCK, None) is None
    assert with_block(None, RSPAMD_BLOCK, None) is None


def test_damaged_markers_are_refused():
    block = render_rspamd_block(RELAYS)
    for damaged in (block.replace(block_end(RSPAMD_BLOCK), ""), block + block):
        with pytest.raises(BackupMXError, match="markers are damaged"):
            with_block(damaged, RSPAMD_BLOCK, block)


# --- master.cf -----------------------------------------------------------------------------


def test_options_go_on_the_listener_only_and_nothing_else_moves():
    m = native()
    options = {ACCESS_LIST: f"permit_mynetworks,cidr:{m.cidr_path}", CACHE_MAP: m.cache_map()}
    edited = set_service_options(MASTER_CF, "2525", "inet", options)
    added = [line for line in edited.splitlines() if line not in MASTER_CF.splitlines()]
    assert added == [f"  -o postscreen_access_list=permit_mynetworks,cidr:{m.cidr_path}",
                     "  -o postscreen_cache_map=btree:$data_directory/postscreen_2525_cache"]
    lines = edited.splitlines()
    assert lines.index(added[0]) == lines.index("  -o postscreen_upstream_proxy_protocol=haproxy") + 1
    assert set_service_options(edited, "2525", "inet", options) == edited
    changed = set_service_options(edited, "2525", "inet", {ACCESS_LIST: "permit_mynetworks"})
    assert changed.count("postscreen_access_list") == 1 and "  -o postscreen_access_list=permit_mynetworks\n" in changed
    assert remove_service_options(edited, "2525", "inet", options) == MASTER_CF


def test_master_cf_without_the_service_or_with_an_inline_option_is_refused():
    with pytest.raises(MasterCfError, match="no service 2526/inet"):
        set_service_options(MASTER_CF, "2526", "inet", {ACCESS_LIST: "x"})
    inline = MASTER_CF.replace("1       postscreen\n  -o syslog", "1       postscreen -o postscreen_access_list=x\n  -o syslog")
    with pytest.raises(MasterCfError, match="inline"):
        set_service_options(inline, "2525", "inet", {ACCESS_LIST: "y"})
    with pytest.raises(MasterCfError, match="whitespace"):
        set_service_options(MASTER_CF, "2525", "inet", {ACCESS_LIST: "permit_mynetworks, cidr:/x"})


def test_master_cf_without_a_final_newline():
    text = "smtp inet n - y - 1 postscreen\n2525 inet n - y - 1 postscreen"
    edited = set_service_options(text, "2525", "inet", {ACCESS_LIST: "permit_mynetworks"})
    assert edited == text + "\n  -o postscreen_access_list=permit_mynetworks\n"


def test_wanted_options_keep_the_sites_entries_and_give_the_listener_its_own_cache():
    m = native()
    ours = f"cidr:{m.cidr_path}"
    main = {ACCESS_LIST: "permit_mynetworks", CACHE_MAP: "btree:$data_directory/postscreen_cache"}
    assert wanted_listener_options(m, listeners({}), main) == {
        ACCESS_LIST: f"permit_mynetworks,{ours}", CACHE_MAP: m.cache_map()}
    # Its own cache already: left alone.
    own = {CACHE_MAP: "btree:$data_directory/proxy_cache"}
    assert wanted_listener_options(m, listeners(own), main) == {ACCESS_LIST: f"permit_mynetworks,{ours}"}
    # The same file as the other postscreen service: ours instead.
    shared = {CACHE_MAP: "btree:$data_directory/x"}
    assert wanted_listener_options(m, listeners(shared, dict(shared)), main)[CACHE_MAP] == m.cache_map()
    # A site's blocklist stays first; ours is added once.
    site = {ACCESS_LIST: "cidr:/etc/postfix/block.cidr,permit_mynetworks", **own}
    assert wanted_listener_options(m, listeners(site), main)[ACCESS_LIST] == \
        f"cidr:/etc/postfix/block.cidr,permit_mynetworks,{ours}"
    done = {ACCESS_LIST: f"permit_mynetworks,{ours}", CACHE_MAP: m.cache_map()}
    assert wanted_listener_options(m, listeners(done), main) == done
    # The cache turned off in main.cf (the seed's `postscreen_cache_map =`): nothing shared, nothing set.
    assert wanted_listener_options(m, listeners({}), {**main, CACHE_MAP: ""}) == {
        ACCESS_LIST: f"permit_mynetworks,{ours}"}


def test_missing_listener_names_the_postscreen_services_that_exist():
    message = missing_listener_message(native(proxy_service="2526/inet"), listeners({}))
    assert "no service 2526/inet" in message and "postscreen services are: 2525/inet, smtp/inet" in message
    assert "runs smtpd, not postscreen" in missing_listener_message(native(proxy_service="smtpd/pass"), listeners({}))
    assert missing_listener_message(native(), listeners({})) is None


# --- docker-mailserver -------------------------------------------------------------------------


def test_docker_mailserver_opendmarc_is_detected_and_policyd_spf_is_not_a_conflict():
    both = dms_policy_conflicts({"ENABLE_POLICYD_SPF": None, "ENABLE_OPENDMARC": None})
    assert len(both) == 1 and "ENABLE_OPENDMARC=unset, default 1" in both[0] and "set ENABLE_OPENDMARC=0" in both[0]
    assert dms_policy_conflicts({"ENABLE_POLICYD_SPF": "1", "ENABLE_OPENDMARC": "0"}) == []
    wired = dms_policy_conflicts({"ENABLE_POLICYD_SPF": "0", "ENABLE_OPENDMARC": "0"},
                                    "permit_mynetworks, check_policy_service unix:private/policyd-spf",
                                    "$dkim_milter $dmarc_milter $rspamd_milter")
    assert [c.split("=")[0] for c in wired] == ["ENABLE_OPENDMARC"]


def test_user_patches_block_is_appended_marked_and_idempotent():
    m = dms()
    options = {ACCESS_LIST: f"permit_mynetworks,cidr:{m.cidr_path}", CACHE_MAP: m.cache_map()}
    block = render_user_patches_block(m, options)
    once = with_block(USER_PATCHES, USER_PATCHES_BLOCK, block)
    assert once == USER_PATCHES + "\n" + block, "after the lines that define the listener"
    assert with_block(once, USER_PATCHES_BLOCK, block) == once
    assert "postconf -P 2525/inet/postscreen_access_list=permit_mynetworks,cidr:/tmp/docker-mailserver/" \
           "postscreen_access.cidr" in block
    assert "postconf -P '2525/inet/postscreen_cache_map=btree:$data_directory/postscreen_2525_cache'" in block
    assert with_block(once, USER_PATCHES_BLOCK, None) == USER_PATCHES


def test_user_patches_block_runs_the_postconf_commands_it_shows(tmp_path):
    """Run the block under bash with a postconf that records its arguments."""
    m = dms()
    options = {ACCESS_LIST: f"permit_mynetworks,cidr:{m.cidr_path}", CACHE_MAP: m.cache_map()}
    log = tmp_path / "calls"
    stub = tmp_path / "postconf"
    stub.write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\"; done >>{log}\necho >>{log}\n")
    stub.chmod(0o755)
    script = tmp_path / "user-patches.sh"
    script.write_text(with_block(None, USER_PATCHES_BLOCK, render_user_patches_block(m, options),
                                    header="#!/bin/bash\n"))
    subprocess.run(["bash", str(script)], check=True, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert log.read_text().splitlines() == [
        "[-P][2525/inet/postscreen_access_list=permit_mynetworks,cidr:/tmp/docker-mailserver/postscreen_access.cidr]",
        "[-P][2525/inet/postscreen_cache_map=btree:$data_directory/postscreen_2525_cache]",
    ]


# --- the transaction, executed locally -----------------------------------------------------------


@pytest.fixture
def bin_dir(tmp_path):
    return stand_ins(tmp_path)


def scratch_files(tmp_path: Path) -> tuple[Path, Path]:
    old = tmp_path / "conf" / "settings.conf"
    old.parent.mkdir()
    old.write_bytes(b"old contents\r\nno final newline")
    old.chmod(0o640)
    return old, tmp_path / "conf" / "new.cidr"


def text_of(path: Path) -> str:
    """A file's text exactly (no newline translation), as the facts read it."""
    return path.read_bytes().decode()


def test_transaction_swaps_validates_reloads_and_cleans_up(tmp_path, bin_dir):
    old, new = scratch_files(tmp_path)
    tx = Transaction(
        label="test", files=(FileChange(str(old), text_of(old), "replaced\n"), FileChange(str(new), None, "x\n")),
        rspamd_configtest=("rspamadm", "configtest"), reloads=(("reload-rspamd",),))
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 0, result.stderr
    assert old.read_text() == "replaced\n" and stat.S_IMODE(old.stat().st_mode) == 0o640
    assert new.read_text() == "x\n" and stat.S_IMODE(new.stat().st_mode) == 0o644
    assert calls(tmp_path) == ["rspamadm configtest", "rspamadm configtest", "reload-rspamd "]
    assert sorted(p.name for p in old.parent.iterdir()) == ["new.cidr", "settings.conf"]


def test_transaction_failure_restores_byte_for_byte_and_reloads_nothing(tmp_path, bin_dir):
    old, new = scratch_files(tmp_path)
    before = old.read_bytes()
    tx = Transaction(
        label="test", files=(FileChange(str(old), text_of(old), "broken\n"), FileChange(str(new), None, "x\n")),
        rspamd_configtest=("sh", "-c", f"[ -f {tmp_path}/armed ] && rspamadm configtest; touch {tmp_path}/armed; "
                                       "echo 'syntax OK'"),
        reloads=(("reload-rspamd",),))
    (tmp_path / "rspamd.bad").touch()
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    # Exit 0, but a new complaint on its output: that is a failure too.
    assert line.startswith("backupmx: test: rspamadm configtest fails after the change (exit 0): syntax BAD")
    assert "previous files restored byte for byte (settings.conf, new.cidr), nothing reloaded" in line
    assert old.read_bytes() == before and stat.S_IMODE(old.stat().st_mode) == 0o640
    assert not new.exists() and "reload-rspamd " not in calls(tmp_path)
    assert sorted(p.name for p in old.parent.iterdir()) == ["settings.conf"]


def test_transaction_counts_only_new_postfix_check_warnings(tmp_path, bin_dir):
    old, _ = scratch_files(tmp_path)
    (tmp_path / "postfix-check.out").write_text("postfix/postfix-script: warning: an old complaint\n")
    tx = Transaction(label="test", files=(FileChange(str(old), text_of(old), "new\n"),),
                        postfix_check=("postfix", "check"), reloads=(("reload-postfix",),))
    assert run_script(transaction_script(tx), bin_dir).returncode == 0  # a warning that was there before
    (tmp_path / "new.out").write_text("postconf: warning: master.cf: unused parameter: postscren_x=1\n")
    # Before the swap: the old complaint; after it: the old one and a new one.
    check = f"postfix check; [ -f {tmp_path}/swapped ] && cat {tmp_path}/new.out; touch {tmp_path}/swapped"
    tx = Transaction(label="test", files=(FileChange(str(old), "new\n", "newer\n"),),
                        postfix_check=("sh", "-c", check), reloads=(("reload-postfix",),))
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 1 and old.read_text() == "new\n"
    assert "postfix check warns after the change: postconf: warning: master.cf: unused parameter: postscren_x=1;" \
           in result.stderr
    assert "an old complaint" not in result.stderr


def test_transaction_refuses_a_file_changed_since_the_plan(tmp_path, bin_dir):
    old, new = scratch_files(tmp_path)
    tx = Transaction(label="test", files=(FileChange(str(old), "what the plan saw\n", "new\n"),),
                        reloads=(("reload-postfix",),))
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 1 and "changed since it was read; re-run" in result.stderr
    assert old.read_bytes() == b"old contents\r\nno final newline" and calls(tmp_path) == []
    new.write_text("someone else's\n")
    tx = Transaction(label="test", files=(FileChange(str(new), None, "ours\n"),))
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 1 and "appeared since it was read" in result.stderr
    assert new.read_text() == "someone else's\n"


def test_transaction_probes_must_answer_as_expected(tmp_path, bin_dir):
    old, _ = scratch_files(tmp_path)
    before = old.read_bytes()
    tx = Transaction(label="test", files=(FileChange(str(old), text_of(old), "new\n"),),
                        probes=((("echo", "-q", "192.0.2.1", "cidr:x"), "permit"),),
                        reloads=(("reload-postfix",),))
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 1 and "postmap probe: 192.0.2.1 should answer permit, got '-q 192.0.2.1 cidr:x'" \
        in result.stderr
    assert old.read_bytes() == before and calls(tmp_path) == []


def test_transaction_with_staged_uploads_checks_them_and_always_removes_them(tmp_path, bin_dir):
    """Contents too large for one SSH command come uploaded (backupmx.postfix.apply); the script checks them."""
    old, new = scratch_files(tmp_path)
    big = "".join(f"192.0.{i // 256}.{i % 256}/32 permit\n" for i in range(8000))  # > MAX_ARG_STRLEN inline
    staged = {str(new): tmp_path / "upload-1"}
    staged[str(new)].write_text(big)
    tx = Transaction(label="test", files=(FileChange(str(new), None, big),), reloads=(("reload-postfix",),))
    script = transaction_script(tx, staged={path: str(upload) for path, upload in staged.items()})
    assert len(script) < INLINE_SCRIPT_LIMIT < len(transaction_script(tx))
    result = run_script(script, bin_dir)
    assert result.returncode == 0, result.stderr
    assert new.read_text() == big and not staged[str(new)].exists()
    assert calls(tmp_path) == ["reload-postfix "]
    # A truncated upload is refused before anything is swapped, and removed too.
    upload = tmp_path / "upload-2"
    upload.write_text("changed\n"[:4])
    tx = Transaction(label="test", files=(FileChange(str(old), text_of(old), "changed\n"),),
                        reloads=(("reload-postfix",),))
    result = run_script(transaction_script(tx, staged={str(old): str(upload)}), bin_dir)
    assert result.returncode == 1 and "uploaded new content" in result.stderr
    assert old.read_bytes() == b"old contents\r\nno final newline" and not upload.exists()
    assert calls(tmp_path) == ["reload-postfix "]

# --- docker-mailserver, with a stand-in docker ------------------------------------------------


@pytest.fixture
def fake_docker(tmp_path, bin_dir):
    return docker_mailserver(tmp_path, bin_dir)


def test_postconf_missing_is_not_an_absent_whitelist(tmp_path, bin_dir):
    stub(bin_dir, "postconf", "exit 127")  # shadows the real one, as if Postfix were not installed
    (bin_dir / "postconf").unlink()
    env_path = f"{bin_dir}:/usr/local/bin:/bin"  # /usr/sbin (postconf) left out
    command = facts.PostscreenListeners().command(config_dir="/etc/postfix").get_raw_value()
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env={"PATH": env_path})
    found = facts.PostscreenListeners().process(result.stdout.splitlines())
    assert found["postconf"] is False and "postconf not found" in found["error"]


def test_docker_mailserver_rspamd_settings_reach_the_container(tmp_path, bin_dir, fake_docker):
    m = fake_docker
    new = with_block(None, RSPAMD_BLOCK, render_rspamd_block(RELAYS))
    tx = Transaction(
        label="rspamd_exemption",
        files=(FileChange(m.rspamd_settings_host_path, None, new),),
        live_files=(tuple(m.in_target([m.rspamd_settings_live_path])),),
        live_commands=(("copy", tuple(m.in_target(["cp", m.rspamd_settings_mounted_path, m.rspamd_settings_live_path]))),),
        rspamd_configtest=tuple(m.rspamadm("configtest")),
        reloads=(tuple(m.rspamd_reload_argv()),))
    result = run_script(transaction_script(tx), bin_dir)
    assert result.returncode == 0, result.stderr
    assert Path(m.rspamd_settings_live_path).read_text() == new
    assert "docker exec mailserver supervisorctl signal HUP rspamd" in calls(tmp_path)
    found = run_fact(facts.RspamdExemption, bin_dir, settings_path=m.rspamd_settings_host_path,
                     live_path=m.rspamd_settings_live_path, dump=False, **facts.facts_args(m))
    assert found["block"] == render_rspamd_block(RELAYS) and found["live_file"] == new


# --- relay scoring: exempt | external_relay ------------------------------------------------


def test_relay_scoring_defaults_to_exempt_and_accepts_external_relay():
    assert native().relay_scoring == EXEMPT
    assert native(relay_scoring="external_relay").relay_scoring == EXTERNAL_RELAY


@pytest.mark.parametrize("value", ["spf_off", "EXEMPT", "", None, 1, ["exempt"]])
def test_unknown_relay_scoring_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError) as error:
        native(relay_scoring=value)
    assert error.value.field == "mailhost.relay_scoring"
    assert "\n" not in str(error.value) and "use one of exempt, external_relay" in str(error.value)


def test_external_relay_is_refused_for_docker_mailserver():
    with pytest.raises(ConfigError, match="mailhost.relay_scoring: external_relay is not supported for docker-mailserver"):
        dms(relay_scoring="external_relay")


def test_relay_cap_rule_disables_only_the_reject_action_for_the_relays():
    block = render_relay_cap_block(RELAYS)
    assert block.startswith(block_begin(RSPAMD_BLOCK) + "\n") and block.endswith(block_end(RSPAMD_BLOCK) + "\n")
    body = block.split("# END")[0].split("{", 1)[1]
    assert f"{RSPAMD_CAP_RULE} {{" in block and "priority = high;" in block and "reject = null;" in body
    for network in RELAYS:
        assert f'"{network}",' in block
    for untouched in ("groups_disabled", "symbols_disabled", "add header", "greylist"):
        assert untouched not in body


def test_external_relay_rule_takes_the_relays_own_received_header():
    block = render_external_relay_block()
    assert block.startswith(block_begin(EXTERNAL_RELAY_BLOCK) + "\n")
    for line in ("enabled = true;", f"  {RSPAMD_RELAY_SYMBOL} {{", 'strategy = "count";', "count = 3;",
                 "priority = 9;"):
        assert line in block


def test_external_relay_lua_is_limited_to_the_relay_networks():
    block = render_external_relay_lua(RELAYS)
    assert block.startswith(block_begin(EXTERNAL_RELAY_BLOCK, "--") + "\n")
    assert block.endswith(block_end(EXTERNAL_RELAY_BLOCK, "--") + "\n")
    assert "#" not in block  # not a Lua comment
    assert f'rspamd_config:add_condition("{RSPAMD_RELAY_SYMBOL}"' in block and '"radix"' in block
    for network in RELAYS:
        assert f'"{network}",' in block


def test_rspamd_files_per_mode():
    exempt, external = native(), native(relay_scoring="external_relay")
    paths = [exempt.rspamd_settings_host_path, exempt.rspamd_external_relay_host_path, exempt.rspamd_lua_host_path]
    assert list(rspamd_files(exempt, RELAYS)) == paths  # settings.conf first
    assert [block for _, _, block in rspamd_files(exempt, RELAYS).values()] == [render_rspamd_block(RELAYS),
                                                                                   None, None]
    assert [block for _, _, block in rspamd_files(external, RELAYS).values()] == [
        render_relay_cap_block(RELAYS), render_external_relay_block(), render_external_relay_lua(RELAYS)]
    assert [comment for _, comment, _ in rspamd_files(external, RELAYS).values()] == ["#", "#", "--"]
    for mailhost in (exempt, external):  # present=False: nothing of ours anywhere
        assert all(block is None for _, _, block in rspamd_files(mailhost, None).values())
    assert list(rspamd_files(dms(), RELAYS)) == [dms().rspamd_settings_host_path]


def test_lua_block_keeps_a_sites_rspamd_lua_byte_for_byte():
    site = "-- the site's own Lua\nrspamd_config:register_symbol({name = 'SITE', callback = function() end})\n"
    block = render_external_relay_lua(RELAYS)
    once = with_block(site, EXTERNAL_RELAY_BLOCK, block, comment="--")
    assert once == site + "\n" + block
    assert with_block(once, EXTERNAL_RELAY_BLOCK, block, comment="--") == once
    assert find_block(once, EXTERNAL_RELAY_BLOCK, comment="--") == block
    assert find_block(once, EXTERNAL_RELAY_BLOCK) is None  # '#' markers are another block
    assert with_block(once, EXTERNAL_RELAY_BLOCK, None, comment="--") == site


def test_stage_4_scan_message_per_mode():
    assert scan_message(native(), "example.org", "203.0.113.1") == probe_message("example.org")
    relayed = scan_message(native(relay_scoring="external_relay"), "example.org", "203.0.113.1")
    assert relayed.startswith("Received: from backupmx-probe.invalid (unknown [203.0.113.1])\r\n\tby ")
    assert relayed.endswith(probe_message("example.org"))


def test_parse_rspamc_action():
    assert parse_rspamc_action('{"action": "add header", "score": 9.0, "symbols": {}}') == "add header"
    assert parse_rspamc_action('Results for file: stdin\n{"default": {"action": "reject"}}') == "reject"
    assert parse_rspamc_action("connection refused") is None


def _scan(symbols, action="no action"):
    return {"symbols": symbols, "action": action}


def test_judge_scans_exempt_keeps_the_seed_proof():
    m = native()
    ok, detail = judge_scans(m, "192.0.2.1", "203.0.113.1", _scan(["MIME_GOOD"]), _scan(["R_SPF_FAIL"]))
    assert ok and detail == "relay 192.0.2.1 no R_SPF_*/DMARC_*, outside 203.0.113.1 R_SPF_FAIL"
    ok, detail = judge_scans(m, "192.0.2.1", "203.0.113.1", _scan(["R_SPF_FAIL"]), _scan(["R_SPF_FAIL"]))
    assert not ok and detail == "relay 192.0.2.1: R_SPF_FAIL; outside 203.0.113.1: R_SPF_FAIL"
    ok, detail = judge_scans(m, "192.0.2.1", "203.0.113.1", _scan([]), _scan([]))
    assert not ok and detail.endswith("no R_SPF_* (SPF not checked at all?)")


@pytest.mark.parametrize("relay,outside,live,fragment", [
    (_scan([RSPAMD_RELAY_SYMBOL, "R_SPF_SOFTFAIL"], "add header"), _scan(["R_SPF_SOFTFAIL"]), True,
     "scored as its Received header's 203.0.113.1"),
    (_scan(["R_SPF_SOFTFAIL"], "add header"), _scan(["R_SPF_SOFTFAIL"]), False, "external_relay did not take"),
    (_scan([RSPAMD_RELAY_SYMBOL]), _scan(["R_SPF_SOFTFAIL"]), False, "SPF not scored"),
    (_scan([RSPAMD_RELAY_SYMBOL, "R_SPF_FAIL"]), _scan(["R_SPF_SOFTFAIL"]), False, "203.0.113.1 directly"),
    (_scan([RSPAMD_RELAY_SYMBOL, "R_SPF_SOFTFAIL"], "reject"), _scan(["R_SPF_SOFTFAIL"]), False,
     "action reject"),
    (_scan([RSPAMD_RELAY_SYMBOL, "R_SPF_SOFTFAIL"]), _scan([RSPAMD_RELAY_SYMBOL, "R_SPF_SOFTFAIL"]), False,
     "fired for a client outside"),
])
def test_judge_scans_external_relay(relay, outside, live, fragment):
    ok, detail = judge_scans(native(relay_scoring="external_relay"), "192.0.2.1", "203.0.113.1", relay, outside)
    assert ok is live and fragment in detail, detail


def rendezvous(directory: Path, mine: str, theirs: str) -> list[str]:
    """A command that says "met" only if ``theirs`` started while it ran (each waits up to 10 s for the other)."""
    script = (f'touch {directory}/{mine}; i=0; while [ ! -e {directory}/{theirs} ] && [ $i -lt 200 ]; do '
              f'sleep 0.05; i=$((i+1)); done; [ -e {directory}/{theirs} ] && printf met || printf alone')
    return ["sh", "-c", script]


def test_capture_script_in_parallel_prints_what_the_serial_one_prints(tmp_path):
    """Stage 4's combined fact runs its reads concurrently; the captures must not differ or mix."""
    commands = [("slow", ["sh", "-c", "sleep 0.3; printf 'a\\nb'"]), ("fed", ["cat"]),
                ("fails", ["sh", "-c", "echo why >&2; exit 3"]), ("big", ["sh", "-c", "head -c 200000 /dev/zero"])]
    options = {"stdin": {"fed": "from stdin\n"}, "labels": {"slow": "first"}}
    serial = subprocess.run(["sh", "-c", capture_script(commands, **options)], capture_output=True, text=True)
    # Two commands that meet only if they run at the same time: they did overlap.
    meeting = [("meet1", rendezvous(tmp_path, "one", "two")), ("meet2", rendezvous(tmp_path, "two", "one"))]
    parallel = subprocess.run(["sh", "-c", capture_script(commands + meeting, parallel=True, **options)],
                              capture_output=True, text=True)
    assert serial.returncode == parallel.returncode == 0
    expected = parse_captures(serial.stdout.splitlines())
    got = parse_captures(parallel.stdout.splitlines())
    assert got.pop("meet1").out == got.pop("meet2").out == "met"
    assert got == expected
    assert expected["slow"].label == "first" and expected["fed"].out == "from stdin\n"
    assert expected["fails"].rc == 3 and expected["fails"].err == "why\n" and len(expected["big"].out) == 200000


@pytest.mark.parametrize("parallel", [False, True])
def test_capture_script_leaves_no_scratch_file(tmp_path, parallel):
    commands = [("empty", ["true"]), ("fed", ["cat"]), ("fails", ["sh", "-c", "echo why >&2; exit 3"])]
    done = subprocess.run(["sh", "-c", capture_script(commands, stdin={"fed": "x"}, parallel=parallel)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    captured = parse_captures(done.stdout.splitlines())
    assert (captured["empty"].rc, captured["empty"].out, captured["empty"].err) == (0, "", "")
    assert captured["fed"].out == "x" and captured["fails"].err == "why\n"
    assert list(tmp_path.iterdir()) == []


def fake_engine(tmp_path: Path, fail: str = "") -> Path:
    """A ``docker`` that runs ``exec [-i] CONTAINER argv...`` here, and logs each exec (or fails as told)."""
    engine = tmp_path / "docker"
    engine.write_text("#!/bin/sh\n"
                      f"echo \"$1 $2\" >>{tmp_path}/execs\n"
                      + (f"echo '{fail}' >&2; exit 125\n" if fail else "")
                      + "shift; [ \"$1\" = -i ] && shift; shift; exec \"$@\"\n")
    engine.chmod(0o755)
    return engine


@pytest.mark.parametrize("parallel", [False, True])
def test_a_containers_captures_run_through_one_exec_and_read_the_same(tmp_path, parallel):
    """docker-mailserver's reads are ``docker exec`` each: one exec runs them all, with the same captures."""
    engine = fake_engine(tmp_path)
    inside = [("fed", ["cat"]), ("fails", ["sh", "-c", "echo why >&2; exit 3"]), ("says", ["printf", "a\nb"])]
    commands = [("here", ["printf", "host"])] + [
        (name, in_target("mailserver", str(engine), argv, stdin=name == "fed")) for name, argv in inside]
    options = {"stdin": {"fed": "from stdin\n"}, "labels": {"says": "lab", "here": "host label"}}
    done = subprocess.run(["sh", "-c", capture_script(commands, parallel=parallel, **options)],
                          capture_output=True, text=True)
    direct = subprocess.run(["sh", "-c", capture_script([("here", ["printf", "host"])] + inside, **options)],
                            capture_output=True, text=True)
    assert parse_captures(done.stdout.splitlines()) == parse_captures(direct.stdout.splitlines())
    assert len((tmp_path / "execs").read_text().splitlines()) == 1


def test_a_failed_exec_is_each_captures_error(tmp_path):
    engine = fake_engine(tmp_path, fail="Error: no container with name or ID mailserver found")
    commands = [("here", ["printf", "host"]), ("a", in_target("mailserver", str(engine), ["postconf", "-n"])),
                ("b", in_target("mailserver", str(engine), ["cat"], stdin=True))]
    done = subprocess.run(["sh", "-c", capture_script(commands, stdin={"b": "x"}, parallel=True)],
                          capture_output=True, text=True)
    captured = parse_captures(done.stdout.splitlines())
    assert captured["here"].ok and captured["here"].out == "host"
    for name in ("a", "b"):
        assert (captured[name].rc, captured[name].out) == (125, "")
        assert captured[name].problem() == "exit 125: Error: no container with name or ID mailserver found"


def test_a_capture_name_is_used_once_per_script():
    with pytest.raises(ValueError, match="once per script"):
        capture_script([("a", ["true"]), ("a", ["false"])])


def test_a_combined_read_answers_for_a_part_with_nothing_to_read(tmp_path):
    """docker-mailserver reads no external_relay files (paths=()): the combined read must still be
    complete, or every fact is read again one by one (a no-op on DMS took 13 s instead of 3)."""
    target = tmp_path / "file"
    target.write_text("hello\n")
    fact = MailhostReads()
    command = fact.command(reads=(("MailhostFiles", (("paths", ()),)), ("MailhostFiles", (("paths", (str(target),)),))))
    done = subprocess.run(["sh", "-c", str(command)], capture_output=True, text=True, timeout=60, check=True)
    assert fact.process(done.stdout.splitlines()) == [{}, {str(target): {"content": "hello\n", "error": None}}]
