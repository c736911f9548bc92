"""The sandbox mail host: a real sshd, Postfix (postscreen, PROXY-v2 listener) and rspamd.

Everything lives under ``<sandbox>/mailhost/``; the machine's own /etc/postfix,
/etc/rspamd (read only, as the stock base config) and sshd config are never
changed. The product manages this host over SSH exactly as it would a production
one: it edits ``postfix_config_dir`` (master.cf, postscreen_access.cidr) and
``rspamd_local_dir`` (local.d/settings.conf) and reloads.

``up`` is idempotent, and it never undoes the product's work: a config file is
rewritten only while it still holds exactly what this module last wrote there
(see ``hostfiles.install_file``). Delete the file to get the sandbox's version back.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backupmx_sandbox import dnsapi, postfix_runner, seed
from backupmx_sandbox.hostfiles import install_file, listening, private_dir, render_template, root_dir
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import LOOPBACK, Sandbox, Service

SERVICE_NAMES = ["sshd", "rspamd", "postfix"]

TEMPLATES = Path(__file__).parent / "templates" / "mailhost"
RSPAMD_STOCK_CONFIG = "/etc/rspamd/rspamd.conf"
RSPAMD_USER = "_rspamd"
# The Maildir's owner, as docker-mailserver's (uid/gid 5000); no passwd entry needed.
MAIL_UID = MAIL_GID = 5000
MAILDIR_NAME = "catchall"
GREET_WAIT = "1s"
# The base stack's anvil limits (main.cf); the `tight_anvil` layer puts these back when off.
BASE_ANVIL = {
    "smtpd_client_connection_count_limit": "50",
    "smtpd_client_connection_rate_limit": "300",
    "smtpd_client_message_rate_limit": "300",
}
HOSTNAME = seed.PRIMARY_MX



@dataclass(frozen=True)
class Paths:
    """Where the mail host keeps everything, below ``<sandbox>/mailhost``."""

    root: Path

    @property
    def ssh(self) -> Path:
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh / "known_hosts"

    @property
    def postfix_config(self) -> Path:
        return self.root / "postfix"

    @property
    def postfix_queue(self) -> Path:
        return self.root / "postfix-queue"

    @property
    def postfix_data(self) -> Path:
        return self.root / "postfix-data"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def mail_base(self) -> Path:
        return self.root / "mail"

    @property
    def maildir(self) -> Path:
        return self.mail_base / MAILDIR_NAME

    @property
    def resolv_conf(self) -> Path:
        # Bind-mounted over /etc/resolv.conf in the sandbox Postfix's own mount namespace.
        return self.root / "resolv.conf"

    @property
    def policyd_spf_conf(self) -> Path:
        return self.root / "policyd-spf.conf"

    @property
    def rspamd_local(self) -> Path:
        return self.root / "rspamd"

    @property
    def rspamd_db(self) -> Path:
        return self.root / "rspamd-db"

    @property
    def rspamd_run(self) -> Path:
        return self.root / "rspamd-run"

    @property
    def rspamd_log(self) -> Path:
        return self.root / "rspamd-log"

    @property
    def rspamd_reload(self) -> Path:
        return self.root / "bin" / "rspamd-reload"

    @property
    def postfix_service(self) -> Path:
        # Stops/starts only the sandbox Postfix (the failover drill's stop/start commands).
        return self.root / "bin" / "postfix-service"

    @property
    def rspamd_pidfile(self) -> Path:
        # Where the supervisor records rspamd's pid (<sandbox>/run, see supervisor.py).
        return self.root.parent / "run" / "rspamd.pid"


@dataclass(frozen=True)
class Ports:
    ssh: int
    smtp: int
    smtp_proxy: int
    rspamd_milter: int
    rspamd_normal: int
    rspamd_controller: int
    dns: int
    # The primary's resolver (port 53 of this address); Postfix asks it through resolv_conf.
    resolver: str


def mailhost_paths(sandbox: Sandbox) -> Paths:
    return Paths(sandbox.dir("mailhost"))


def mailhost_ports(sandbox: Sandbox) -> Ports:
    return Ports(
        ssh=sandbox.port("ssh"),
        smtp=sandbox.port("mailhost.smtp"),
        # The provider part's relays deliver here; they find it by this name.
        smtp_proxy=sandbox.port("mailhost.proxy"),
        rspamd_milter=sandbox.port("rspamd.milter"),
        rspamd_normal=sandbox.port("rspamd.normal"),
        rspamd_controller=sandbox.port("rspamd.controller"),
        # The DNS part's port (it serves UDP and TCP); allocated by name, so the
        # order in which the parts ask does not matter.
        dns=sandbox.port("dns", udp_too=True),
        resolver=dnsapi.resolver_address(sandbox),
    )


# --- the contract -------------------------------------------------------------


def services(sandbox: Sandbox) -> list[Service]:
    """Write the mail host's config (idempotently) and return its three services."""
    paths, ports = mailhost_paths(sandbox), mailhost_ports(sandbox)
    return [_sshd(paths, ports), _rspamd(paths, ports), postfix_daemon(paths, ports)]


def world(sandbox: Sandbox) -> dict:
    paths, ports = mailhost_paths(sandbox), mailhost_ports(sandbox)
    return {
        "ssh": {
            "host": LOOPBACK,
            "port": ports.ssh,
            "user": "root",
            "key": str(paths.client_key),
            "known_hosts": str(paths.known_hosts),
        },
        "proxy_listener": f"{LOOPBACK}:{ports.smtp_proxy}",
        "smtp_listener": f"{LOOPBACK}:{ports.smtp}",
        "maildir": str(paths.maildir),
        "postfix_config_dir": str(paths.postfix_config),
        "postfix_proxy_service": proxy_service_name(ports.smtp_proxy),
        "rspamd_local_dir": str(paths.rspamd_local),
        "rspamd_controller": f"{LOOPBACK}:{ports.rspamd_controller}",
        "rspamd_var_args": rspamd_var_args(paths),
        # The inventory's `mailhost` data (docs/mailhost.md): the native flavour, with
        # this instance's own directories, rspamadm arguments and reload command.
        "mailhost": {
            "flavour": "native",
            "proxy_service": f"{proxy_service_name(ports.smtp_proxy)}/inet",
            "postfix_config_dir": str(paths.postfix_config),
            "rspamd_local_dir": str(paths.rspamd_local),
            "rspamadm_args": rspamd_var_args(paths),
            "rspamd_controller": f"{LOOPBACK}:{ports.rspamd_controller}",
            "rspamd_reload": [str(paths.rspamd_reload)],
        },
        # The failover drill's `failover` data (docs/failover-drill.md): how to take
        # the primary mail path down and back, and where its Maildir is.
        "failover": {
            "stop_command": [str(paths.postfix_service), "stop"],
            "start_command": [str(paths.postfix_service), "start"],
            "maildir": str(paths.maildir),
        },
        # Which primary runs (backupmx_sandbox.dmshost has the docker-mailserver one):
        # here commands run on the host itself, and there is no container to recreate.
        "primary": {"flavour": "native", "container": None, "image": None, "exec": [], "recreate": None,
                    "config_dir": str(paths.postfix_config), "mail_log": str(paths.log / "postfix.log"),
                    "differences": []},
    }


def proxy_service_name(port: int) -> str:
    """The PROXY listener's master.cf service name, as ``postconf -P`` prints it."""
    return f"{LOOPBACK}:{port}"


# --- sshd -----------------------------------------------------------------------


def _sshd(paths: Paths, ports: Ports) -> Service:
    return sshd_service("sshd", paths.ssh, ports.ssh, paths.client_key, "backupmx sandbox mail host")


def sshd_service(name: str, ssh_dir: Path, port: int, client_key: Path, comment: str) -> Service:
    """An sshd of its own on ``LOOPBACK:port``: host key made once and kept, ``client_key``
    authorized, and a ``known_hosts`` for the clients; everything in ``ssh_dir``."""
    root_dir(ssh_dir, 0o700)
    host_key, authorized_keys = ssh_dir / "ssh_host_ed25519_key", ssh_dir / "authorized_keys"
    _keypair(host_key, comment)
    _keypair(client_key, "backupmx sandbox client")
    install_file(authorized_keys, _public_key(client_key), 0o600)
    host_public = " ".join(_public_key(host_key).split()[:2])
    install_file(ssh_dir / "known_hosts", f"[{LOOPBACK}]:{port} {host_public}\n", 0o644)
    config = render_template("sshd_config.j2", TEMPLATES, port=port, host_key=host_key, pid_file=ssh_dir / "sshd.pid",
                     authorized_keys=authorized_keys)
    install_file(ssh_dir / "sshd_config", config, 0o600)
    # sshd's privilege separation directory; the system normally makes it at boot.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return Service(
        name=name,
        argv=["/usr/sbin/sshd", "-D", "-e", "-f", str(ssh_dir / "sshd_config")],
        ready=lambda: listening(port),
        ready_timeout=20,
    )


def _keypair(private: Path, comment: str) -> None:
    """An ed25519 key pair made once and kept, so the host key never changes."""
    if private.exists():
        return
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
        check=True,
        capture_output=True,
    )


def _public_key(private: Path) -> str:
    return private.with_name(private.name + ".pub").read_text()


# --- rspamd ---------------------------------------------------------------------


def rspamd_var_args(paths: Paths) -> list[str]:
    """What rspamd and rspamadm (before the subcommand) need to see this instance's config."""
    return [
        f"--var=LOCAL_CONFDIR={paths.rspamd_local}",
        f"--var=DBDIR={paths.rspamd_db}",
        f"--var=RUNDIR={paths.rspamd_run}",
        f"--var=LOGDIR={paths.rspamd_log}",
    ]


def _rspamd(paths: Paths, ports: Ports) -> Service:
    _write_rspamd_config(paths, ports)
    argv = ["/usr/bin/rspamd", "-f", "-u", RSPAMD_USER, "-g", RSPAMD_USER, "-c", RSPAMD_STOCK_CONFIG]
    return Service(
        name="rspamd",
        argv=argv + rspamd_var_args(paths),
        ready=lambda: listening(ports.rspamd_milter) and _rspamd_pong(ports.rspamd_controller),
        # A cold start compiles the hyperscan cache (~11 s); DBDIR is kept so later starts take <1 s.
        ready_timeout=90,
    )


def _write_rspamd_config(paths: Paths, ports: Ports) -> None:
    local_d = root_dir(paths.rspamd_local / "local.d")
    override_d = root_dir(paths.rspamd_local / "override.d")
    for directory in (paths.rspamd_db, paths.rspamd_run, paths.rspamd_log):
        private_dir(directory, RSPAMD_USER, RSPAMD_USER)
    values = {
        "dns_port": ports.dns,
        "milter_port": ports.rspamd_milter,
        "normal_port": ports.rspamd_normal,
        "controller_port": ports.rspamd_controller,
    }
    install_file(local_d / "options.inc", render_template("rspamd/options.inc.j2", TEMPLATES, **values))
    install_file(local_d / "milter_headers.conf", render_template("rspamd/milter_headers.conf", TEMPLATES))
    install_file(local_d / "dkim.conf", render_template("rspamd/dkim.conf", TEMPLATES))
    install_file(local_d / "actions.conf", render_template("rspamd/actions.conf", TEMPLATES))
    install_file(override_d / "fuzzy_check.conf", render_template("rspamd/fuzzy_check.conf", TEMPLATES))
    for worker in ("worker-normal.inc", "worker-controller.inc", "worker-proxy.inc"):
        install_file(override_d / worker, render_template(f"rspamd/{worker}.j2", TEMPLATES, **values))
    # rspamd runs in the foreground without a pidfile: the product reloads it with
    # this script (the `rspamd_reload` command of the inventory's mailhost data).
    root_dir(paths.rspamd_reload.parent)
    install_file(paths.rspamd_reload, render_template("rspamd-reload.sh.j2", TEMPLATES, pidfile=paths.rspamd_pidfile,
                                           controller=f"{LOOPBACK}:{ports.rspamd_controller}"), 0o755)


def _rspamd_pong(port: int) -> bool:
    """The controller answers /ping once rspamd's workers run (not just its sockets)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an http_proxy from the env
    try:
        with direct.open(f"http://{LOOPBACK}:{port}/ping", timeout=1) as reply:
            return reply.read().strip() == b"pong"
    except OSError:
        return False


# --- postfix --------------------------------------------------------------------


def postfix_daemon(paths: Paths, ports: Ports) -> Service:
    _write_postfix_config(paths, ports)
    return Service(
        name="postfix",
        # Not `postfix start-fg` alone: its `master -s` calls setsid, so killpg of
        # the recorded pid would miss master and every Postfix daemon. The
        # wrapper (postfix_runner) turns the stop signal into `postfix stop` and
        # waits until master's whole process group is gone; it also gives Postfix
        # the sandbox resolver in a mount namespace of its own.
        argv=[sys.executable, "-m", postfix_runner.__name__, str(paths.postfix_config), str(paths.resolv_conf)],
        ready=lambda: listening(ports.smtp_proxy) and listening(ports.smtp),
        ready_timeout=30,
    )


def _write_postfix_config(paths: Paths, ports: Ports) -> None:
    _write_postfix_service(paths)
    root_dir(paths.postfix_config)
    root_dir(paths.postfix_queue)
    root_dir(paths.log)
    private_dir(paths.postfix_data, "postfix", "postfix", 0o700)
    private_dir(paths.mail_base, MAIL_UID, MAIL_GID, 0o700)
    for sub in ("", "new", "cur", "tmp"):
        private_dir(paths.maildir / sub, MAIL_UID, MAIL_GID, 0o700)
    # A certificate for the primary's name from the sandbox CA: relays require TLS.
    tls_cert, tls_key = Sandbox(paths.root.parent).ca.issue(HOSTNAME, [HOSTNAME])
    main_cf = render_template(
        "main.cf.j2",
        TEMPLATES,
        config_dir=paths.postfix_config,
        queue_dir=paths.postfix_queue,
        data_dir=paths.postfix_data,
        maillog_file=paths.log / "postfix.log",
        log_dir=paths.log,
        hostname=HOSTNAME,
        domain=seed.DOMAIN,
        mail_base=paths.mail_base,
        maildir_name=MAILDIR_NAME,
        mail_uid=MAIL_UID,
        mail_gid=MAIL_GID,
        milter_port=ports.rspamd_milter,
        greet_wait=GREET_WAIT,
        dnsbl_zone=seed.DNSBL_ZONE,
        anvil=BASE_ANVIL,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    install_file(paths.policyd_spf_conf, render_template("policyd-spf.conf", TEMPLATES))
    master_cf = render_template("master.cf.j2", TEMPLATES, smtp_port=ports.smtp, proxy_port=ports.smtp_proxy,
                                policyd_spf_conf=paths.policyd_spf_conf)
    install_file(paths.resolv_conf, render_template("resolv.conf.j2", TEMPLATES, resolver=ports.resolver))
    install_file(paths.postfix_config / "main.cf", main_cf)
    install_file(paths.postfix_config / "master.cf", master_cf)


def postfix_check(config_dir: str | Path) -> str:
    """``postfix check`` output; Postfix only prints to a terminal, hence ``script``."""
    result = subprocess.run(
        ["script", "-qec", f"postfix -c {shlex.quote(str(config_dir))} check", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip()


def _write_postfix_service(paths: Paths) -> None:
    """The failover drill's stop/start commands: the Supervisor stops or starts the sandbox Postfix only."""
    write_postfix_service(paths.postfix_service, paths.root.parent, __name__)


def write_postfix_service(script: Path, sandbox_dir: Path, module: str) -> None:
    """``script stop|start``: ``module.postfix_service`` through the Supervisor of ``sandbox_dir``."""
    root_dir(script.parent)
    # By module name, not `python -m`: the Postfix service's argv names the module by __name__.
    code = f"import sys; from {module} import postfix_service; sys.exit(postfix_service(sys.argv[1]))"
    text = (
        "#!/bin/sh\n"
        f"# Stop or start one sandbox Postfix through the sandbox Supervisor (written by {module}).\n"
        "set -eu\n"
        f"export BACKUPMX_SANDBOX_DIR={shlex.quote(str(sandbox_dir))}\n"
        f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} \"$1\"\n"
    )
    install_file(script, text, 0o755)


def postfix_service(action: str) -> int:
    """``stop`` or ``start`` the sandbox Postfix (start waits until both listeners accept)."""
    return control_service(action, "postfix", lambda sandbox: postfix_daemon(mailhost_paths(sandbox), mailhost_ports(sandbox)))


def control_service(action: str, name: str, make: Callable[[Sandbox], Service], sandbox: Sandbox | None = None) -> int:
    """``stop`` or ``start`` the supervised service ``name`` (``make`` builds it for a start)."""
    sandbox = sandbox or Sandbox()
    supervisor = Supervisor(sandbox)
    if action == "stop":
        supervisor.stop(name)
    elif action == "start":
        supervisor.start(make(sandbox))
    else:
        raise SystemExit(f"postfix-service: {action!r}: use stop or start")
    return 0
