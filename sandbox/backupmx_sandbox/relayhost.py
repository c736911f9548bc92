"""The sandbox's self-hosted relay: a second "VM" with its own sshd and Postfix, and the
primary's public port (a real HAProxy sending PROXY v2 to the mail host's postscreen).

Everything lives under ``<sandbox>/relayhost/``. The relay's Postfix starts as a
freshly installed one (smtpd listening directly, Debian's loopback ``mynetworks``);
making it a store-and-forward backup MX is the product's job
(``operations/relayhost.py``), over SSH, exactly as on a real VM. ``up`` never
undoes that work: files are written through ``hostfiles.install_file``, which leaves a
file alone once someone else has changed it.

What stands in for the network:

- the relay's public address is ``RELAY_ADDRESS`` (127.0.0.66): its Postfix binds
  outgoing SMTP to it, so the mail host's postscreen sees it through HAProxy's
  PROXY v2 header; ``RELAY_ADDRESS/32`` is the run's relay CIDR;
- the primary's public SMTP port is HAProxy on loopback (``relayhost.primary``),
  forwarding to the mail host's PROXY listener (``mailhost.proxy``), where the mail
  host offers STARTTLS with a certificate for ``seed.PRIMARY_MX`` from the sandbox CA.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from backupmx_sandbox import mailhost, postfix_runner, seed
from backupmx_sandbox.hostfiles import install_file, listening, private_dir, render_template, root_dir
from backupmx_sandbox.world import LOOPBACK, Sandbox, Service

SERVICE_NAMES = ["relay-sshd", "relay-postfix", "haproxy"]

TEMPLATES = Path(__file__).parent / "templates" / "relayhost"
HOSTNAME = f"relay1.{seed.DOMAIN}"
# The relay VM's public address; any 127/8 address is local on Linux, so Postfix
# can bind to it without touching the machine's interfaces.
RELAY_ADDRESS = "127.0.0.66"
LISTEN_SERVICE_PREFIX = LOOPBACK  # master.cf service "127.0.0.1:PORT"
GREET_WAIT = "1s"
# Queue retries (queue_run_delay, minimal/maximal_backoff_time), seconds.
RETRY_MIN, RETRY_MAX = 2, 5


@dataclass(frozen=True)
class Paths:
    root: Path

    ssh = property(lambda self: self.root / "ssh")
    known_hosts = property(lambda self: self.ssh / "known_hosts")
    postfix_config = property(lambda self: self.root / "postfix")
    postfix_queue = property(lambda self: self.root / "postfix-queue")
    postfix_data = property(lambda self: self.root / "postfix-data")
    log = property(lambda self: self.root / "log")
    haproxy_config = property(lambda self: self.root / "haproxy.cfg")
    postfix_service = property(lambda self: self.root / "bin" / "postfix-service")


@dataclass(frozen=True)
class Ports:
    ssh: int
    smtp: int
    primary: int  # HAProxy: the primary's public SMTP port
    mailhost_proxy: int


def relay_paths(sandbox: Sandbox) -> Paths:
    return Paths(sandbox.dir("relayhost"))


def relay_ports(sandbox: Sandbox) -> Ports:
    return Ports(
        ssh=sandbox.port("relayhost.ssh"),
        smtp=sandbox.port("relayhost.smtp"),
        primary=sandbox.port("relayhost.primary"),
        mailhost_proxy=sandbox.port("mailhost.proxy"),
    )


def listen_service(ports: Ports) -> str:
    """The relay's SMTP listener as master.cf (and ``postconf -M``) names it."""
    return f"{LISTEN_SERVICE_PREFIX}:{ports.smtp}"


# --- the contract -------------------------------------------------------------


def services(sandbox: Sandbox) -> list[Service]:
    paths, ports = relay_paths(sandbox), relay_ports(sandbox)
    return [_sshd(sandbox, paths, ports), haproxy_service(paths, ports), relay_postfix_daemon(paths, ports)]


def world(sandbox: Sandbox) -> dict:
    paths, ports = relay_paths(sandbox), relay_ports(sandbox)
    cert, key = sandbox.ca.issue(HOSTNAME, [HOSTNAME])
    client_key = mailhost.mailhost_paths(sandbox).client_key
    return {
        "selfhosted": {
            "host": HOSTNAME,
            "ssh": {
                "host": LOOPBACK,
                "port": ports.ssh,
                "user": "root",
                "key": str(client_key),
                "known_hosts": str(paths.known_hosts),
            },
            # Where MX clients (senders) reach the relay.
            "smtp": f"{LOOPBACK}:{ports.smtp}",
            "addresses": [RELAY_ADDRESS],
            "relay_cidrs": [f"{RELAY_ADDRESS}/32"],
            # The primary's public port: HAProxy -> PROXY v2 -> the mail host's postscreen.
            "primary": f"{LOOPBACK}:{ports.primary}",
            "ca_cert": str(sandbox.ca.cert_path),
            "postfix_config_dir": str(paths.postfix_config),
            "log": str(paths.log / "postfix.log"),
            # How often the relay retries deferred mail (seconds, min and max backoff).
            "retry": [RETRY_MIN, RETRY_MAX],
            # The inventory's `relayhost` data (docs/selfhosted-relay.md).
            "relayhost": {
                "hostname": HOSTNAME,
                "public_addresses": [RELAY_ADDRESS],
                "primary": LOOPBACK,
                "primary_port": ports.primary,
                "primary_tls_match": seed.PRIMARY_MX,
                "primary_tls_ca": str(sandbox.ca.cert_path),
                "postfix_config_dir": str(paths.postfix_config),
                "listen_service": listen_service(ports),
                "tls_cert": str(cert),
                "tls_key": str(key),
            },
            # Stop/start only the relay's Postfix (queue-survives-restart, drills).
            "failover": {
                "stop_command": [str(paths.postfix_service), "stop"],
                "start_command": [str(paths.postfix_service), "start"],
            },
        }
    }


# --- writing files ------------------------------------------------------------


def _render(template: str, **values) -> str:
    return render_template(template, TEMPLATES, **values)


def _sshd(sandbox: Sandbox, paths: Paths, ports: Ports) -> Service:
    # The same client key as the mail host: one key for the sandbox's operator.
    return mailhost.sshd_service("relay-sshd", paths.ssh, ports.ssh, mailhost.mailhost_paths(sandbox).client_key,
                                 "backupmx sandbox relay host")


def haproxy_service(paths: Paths, ports: Ports) -> Service:
    config = _render("haproxy.cfg.j2", listen=LOOPBACK, port=ports.primary, mailhost=LOOPBACK,
                     mailhost_port=ports.mailhost_proxy)
    install_file(paths.haproxy_config, config, 0o644)
    return Service(
        name="haproxy",
        # -db: stay in the foreground (no daemon), so the supervisor's pid is HAProxy's.
        argv=["/usr/sbin/haproxy", "-db", "-f", str(paths.haproxy_config)],
        ready=lambda: listening(ports.primary),
        ready_timeout=20,
    )


def relay_postfix_daemon(paths: Paths, ports: Ports) -> Service:
    _write_postfix_config(paths, ports)
    return Service(
        name="relay-postfix",
        # The mail host's wrapper: stops all of this Postfix on the supervisor's signal.
        argv=[sys.executable, "-m", postfix_runner.__name__, str(paths.postfix_config)],
        ready=lambda: listening(ports.smtp),
        ready_timeout=30,
    )


def _write_postfix_config(paths: Paths, ports: Ports) -> None:
    _write_postfix_service(paths)
    root_dir(paths.postfix_config)
    root_dir(paths.postfix_queue)
    root_dir(paths.log)
    private_dir(paths.postfix_data, "postfix", "postfix", 0o700)
    main_cf = _render(
        "main.cf.j2",
        config_dir=paths.postfix_config,
        queue_dir=paths.postfix_queue,
        data_dir=paths.postfix_data,
        maillog_file=paths.log / "postfix.log",
        log_dir=paths.log,
        hostname=HOSTNAME,
        domain=seed.DOMAIN,
        bind_address=RELAY_ADDRESS,
        greet_wait=GREET_WAIT,
        retry_min=f"{RETRY_MIN}s",
        retry_max=f"{RETRY_MAX}s",
    )
    install_file(paths.postfix_config / "main.cf", main_cf)
    install_file(paths.postfix_config / "master.cf", _render("master.cf.j2", listen_service=listen_service(ports)))


# --- stop/start the relay's Postfix only ----------------------------------------------


def _write_postfix_service(paths: Paths) -> None:
    mailhost.write_postfix_service(paths.postfix_service, paths.root.parent, __name__)


def postfix_service(action: str) -> int:
    """``stop`` or ``start`` the relay's Postfix (start waits until it listens)."""
    return mailhost.control_service(action, "relay-postfix",
                                    lambda sandbox: relay_postfix_daemon(relay_paths(sandbox), relay_ports(sandbox)))
