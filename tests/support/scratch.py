"""The mail host stage without a mail host: a scratch Postfix configuration, stand-ins
for the daemons' commands, and a docker-mailserver layout on local disk.

Shared by tests/unit (stand-ins only) and tests/integration (real postconf, postmap
and rspamadm on the scratch configuration). A stand-in logs each call to
``<tmp>/calls.log``; its behaviour is set by files next to it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from backupmx.mailhost.model import MailHost, load_mailhost
from backupmx.postfix.mastercf import Listener

RELAYS = ["192.0.2.0/24", "198.51.100.0/24", "2001:db8:2::/48"]


# A scratch Postfix config: a fixed host name, so postconf/postmap never ask a resolver.
SCRATCH_MAIN_CF = "compatibility_level = 3.6\nmyhostname = mail.example.test\nmydomain = example.test\n"


def scratch_main_cf(directory: Path) -> None:
    """main.cf dated a minute back: Postfix waits for a main.cf younger than a second or two to settle."""
    path = directory / "main.cf"
    path.write_text(SCRATCH_MAIN_CF)
    os.utime(path, (path.stat().st_mtime - 60,) * 2)


MASTER_CF = """\
# a site's master.cf
smtp      inet  n       -       y       -       1       postscreen
2525      inet  n       -       y       -       1       postscreen
  -o syslog_name=postfix/smtpd-proxyprotocol
  -o postscreen_upstream_proxy_protocol=haproxy
smtpd     pass  -       -       y       -       -       smtpd
"""


def native(**overrides) -> MailHost:
    return load_mailhost({"flavour": "native", "proxy_service": "2525/inet", **overrides})


def dms(**overrides) -> MailHost:
    return load_mailhost({"flavour": "docker-mailserver", "container": "mailserver",
                             "host_config_dir": "/srv/mailserver/docker-data/dms/config",
                             "proxy_service": "2525/inet", **overrides})


def listeners(params_2525: dict, params_smtp: dict | None = None) -> dict:
    return {"smtp/inet": Listener("smtp", "inet", "postscreen", params_smtp or {}),
            "2525/inet": Listener("2525", "inet", "postscreen", params_2525),
            "smtpd/pass": Listener("smtpd", "pass", "smtpd", {})}


USER_PATCHES = """#!/bin/bash
# the site's own patches: the PROXY-v2 listener for HAProxy
postconf -M '2525/inet=2525 inet n - n - 1 postscreen'
postconf -P '2525/inet/postscreen_upstream_proxy_protocol=haproxy'
"""


def stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def stand_ins(tmp_path: Path) -> Path:
    """``tmp_path/bin``: stand-ins for the daemons' commands; each logs its call, behaviour set by files."""
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "calls.log"
    for name in ("reload-postfix", "reload-rspamd"):
        stub(directory, name, f'echo "{name} $*" >>{log}')
    # "postfix check": prints $tmp/postfix-check.out if it exists (after the swap, if armed).
    stub(directory, "postfix", f'echo "postfix $*" >>{log}; '
                               f'[ -f {tmp_path}/postfix-check.out ] && cat {tmp_path}/postfix-check.out; exit 0')
    stub(directory, "rspamadm", f'echo "rspamadm $*" >>{log}; if [ -f {tmp_path}/rspamd.bad ]; then '
                                'echo "syntax BAD" >&2; exit 1; fi; echo "syntax OK"')
    return directory


def run_script(script: str, bin_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def run_here(argv) -> tuple[bool, list[str], str]:
    """The drill's ``remote(argv)`` on this machine: (ok, stdout lines, stderr)."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    return done.returncode == 0, done.stdout.splitlines(), done.stderr


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def docker_mailserver(tmp_path: Path, bin_dir: Path) -> MailHost:
    """A docker-mailserver layout on local disk, and a `docker` in ``bin_dir`` that runs `docker exec` locally.

    The "container" and the host share the file system, so the mounted config
    directory is the same path on both sides, as a bind mount makes it.
    """
    config = tmp_path / "dms-config"
    (config / "rspamd" / "override.d").mkdir(parents=True)
    (config / "user-patches.sh").write_text(USER_PATCHES)
    postfix = tmp_path / "etc-postfix"
    postfix.mkdir()
    scratch_main_cf(postfix)
    (postfix / "master.cf").write_text(MASTER_CF)
    rspamd = tmp_path / "etc-rspamd"
    (rspamd / "override.d").mkdir(parents=True)
    log = tmp_path / "calls.log"
    stub(bin_dir, "docker", f'echo "docker $*" >>{log}; [ "$1" = exec ] || exit 99; shift; '
                            '[ "$1" = -i ] && shift; shift; exec "$@"')
    stub(bin_dir, "supervisorctl", f'echo "supervisorctl $*" >>{log}')
    # `postfix -c DIR check` reports master.cf/main.cf warnings the way postconf does.
    stub(bin_dir, "postfix", f'echo "postfix $*" >>{log}; if [ "$3" = check ]; then postconf -c "$2" -n >/dev/null; fi')
    return load_mailhost({"flavour": "docker-mailserver", "container": "mailserver", "proxy_service": "2525/inet",
                          "docker": str(bin_dir / "docker"), "config_dir": str(config), "host_config_dir": str(config),
                          "postfix_config_dir": str(postfix), "rspamd_local_dir": str(rspamd)})


def run_fact(fact_class, bin_dir: Path, **kwargs):
    """A fact's command run locally (as pyinfra would over SSH), its output processed."""
    fact = fact_class()
    command = fact.command(**kwargs).get_raw_value()
    result = run_script(command, bin_dir)
    assert result.returncode == 0, result.stderr
    return fact.process(result.stdout.splitlines()) if result.stdout else fact.default()
