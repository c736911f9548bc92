"""The sandbox mail host as the real docker-mailserver (``backupmx-sandbox up --primary docker-mailserver``).

The same machine as the native mail host (its sshd, keys and ``world["ssh"]``), but
Postfix, rspamd, Dovecot and the changedetector run in the real docker-mailserver
15.1.0 container (``dms_image``), configured the way the seed configures its own:
through the mounted config dir (``user-patches.sh`` defines the :2525 PROXY-v2
listener, ``postfix-main.cf``, ``rspamd/override.d``) and the environment
(``mailserver.env``, shaped after the seed's: rspamd on, OpenDMARC/OpenDKIM/ClamAV/
Amavis/Postgrey/Fail2ban off, policyd-spf and reject_unknown_client_hostname on).

Networking (``netfwd``): the container lives in a network namespace of its own, held
by the ``dms-net`` service, and every port it serves is reached through a forward
from a port of this sandbox on the host's 127.0.0.1: the PROXY-v2 listener, the plain
:25 and rspamd's controller. Inside, 127.0.0.53:53 reaches the sandbox resolver and
the unknown policy service's port reaches that service. Nothing binds beyond
loopback, and two sandboxes never share a port.

Every difference from a production docker-mailserver is listed in ``DIFFERENCES``
(the image's own: ``dms_image.DIFFERENCES``).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from backupmx_sandbox import dms_image, dms_switches, dnsapi, seed, unknown_policy
from backupmx_sandbox.hostfiles import install_file, listening, render_template, root_dir
from backupmx_sandbox.mailhost import HOSTNAME, control_service, mailhost_paths, mailhost_ports, sshd_service
from backupmx_sandbox.supervisor import Supervisor
from backupmx_sandbox.world import LOOPBACK, Sandbox, Service

SERVICE_NAMES = ["sshd", "dms-net", "dms"]
TEMPLATES = Path(__file__).parent / "templates" / "dms"
CONFIG_DIR = "/tmp/docker-mailserver"  # where DMS reads its config dir, in the container
PROXY_PORT, SMTP_PORT, CONTROLLER_PORT = 2525, 25, 11334  # inside the container
RESOLVER = "127.0.0.53"  # inside: forwarded to the sandbox resolver
MAILBOX = f"catchall@{seed.DOMAIN}"
MAILBOX_PASSWORD = "backupmx-sandbox"
READY_SECONDS = 240.0  # a cold start with a cold rspamd; a warm one takes 5-10 s

# What makes this primary unlike a production docker-mailserver, besides the image
# (dms_image.DIFFERENCES): (what, here, why).
DIFFERENCES = [
    ("network", "its own network namespace, ports reached through loopback forwards (netfwd)",
     "DMS binds fixed ports on every address; two sandboxes, or the machine's own services, would clash"),
    ("mynetworks", "127.0.0.1/32 [::1]/128 (postfix-main.cf), not 127.0.0.0/8",
     "127/8 stands in for other machines here: the self-hosted relay sends from 127.0.0.66"),
    ("postscreen_greet_wait", "1s (postfix-main.cf), not 6s", "tests of clients that wait for the greeting"),
    ("postscreen DNSBL", "ENABLE_DNSBL=1 with the sandbox's bl.sandbox-dnsbl.test (zen's weight and filter)",
     "no public DNSBL is reachable; the native sandbox primary has the same list"),
    ("outbound mail", "default_transport and relay_transport are error: (postfix-main.cf)",
     "nothing leaves the machine, bounces to remote senders included"),
    ("TLS", "SSL_TYPE=manual with a certificate of the sandbox CA", "the relays require STARTTLS"),
    ("accounts", f"one mailbox {MAILBOX} and a catch-all alias for {seed.DOMAIN} (postfix-virtual.cf)",
     "the seed's catch-all, to one Maildir the tests read"),
]


@dataclass(frozen=True)
class DmsPaths:
    """Where the docker-mailserver mail host keeps everything, below ``<sandbox>/dms``."""

    root: Path

    config = property(lambda self: self.root / "config")  # mounted at CONFIG_DIR
    mail = property(lambda self: self.root / "mail")  # /var/mail
    state = property(lambda self: self.root / "state")  # /var/mail-state (ONE_DIR)
    log = property(lambda self: self.root / "log")  # /var/log/mail
    env_file = property(lambda self: self.root / "mailserver.env")
    netns_spec = property(lambda self: self.root / "netfwd.json")
    run_spec = property(lambda self: self.root / "container.json")
    ready_file = property(lambda self: self.root / "ready")
    bin = property(lambda self: self.root / "bin")
    docker = property(lambda self: self.bin / "docker")  # podman with the sandbox's containers.conf
    service = property(lambda self: self.bin / "dms-service")  # stop | start | recreate
    maildir = property(lambda self: self.mail / seed.DOMAIN / MAILBOX.split("@")[0])


def dms_paths(sandbox: Sandbox) -> DmsPaths:
    return DmsPaths(sandbox.dir("dms"))


def container_name(sandbox: Sandbox) -> str:
    return f"bmx-dms-{hashlib.sha256(str(sandbox.root).encode()).hexdigest()[:10]}"


# --- the contract -------------------------------------------------------------------


def services(sandbox: Sandbox) -> list[Service]:
    paths, ports = dms_paths(sandbox), mailhost_ports(sandbox)
    image = dms_image.ensure_image(log=lambda line: print(line, file=sys.stderr, flush=True))
    write_config_dir(sandbox, paths)
    write_switches(sandbox, image)
    _write_scripts(paths)
    _write_netns_spec(sandbox, paths)
    mail = mailhost_paths(sandbox)
    return [
        sshd_service("sshd", mail.ssh, ports.ssh, mail.client_key, "backupmx sandbox mail host"),
        Service(name="dms-net", argv=[sys.executable, "-m", "backupmx_sandbox.netfwd", str(paths.netns_spec)],
                ready=lambda: listening(ports.smtp_proxy) and listening(ports.smtp), ready_timeout=20),
        container_service(sandbox),
    ]


def container_service(sandbox: Sandbox) -> Service:
    paths = dms_paths(sandbox)
    return Service(name="dms", argv=[sys.executable, "-m", "backupmx_sandbox.dms_runner", str(paths.run_spec)],
                   env={"BACKUPMX_SANDBOX_DIR": str(sandbox.root)}, ready=paths.ready_file.exists,
                   ready_timeout=READY_SECONDS)


def world(sandbox: Sandbox) -> dict:
    paths, ports = dms_paths(sandbox), mailhost_ports(sandbox)
    mail = mailhost_paths(sandbox)
    name = container_name(sandbox)
    docker = str(paths.docker)
    return {
        "ssh": {"host": LOOPBACK, "port": ports.ssh, "user": "root", "key": str(mail.client_key),
                "known_hosts": str(mail.known_hosts)},
        "proxy_listener": f"{LOOPBACK}:{ports.smtp_proxy}",
        "smtp_listener": f"{LOOPBACK}:{ports.smtp}",
        "maildir": str(paths.maildir),
        # In the container, as `exec` reaches them.
        "postfix_config_dir": "/etc/postfix",
        "postfix_proxy_service": str(PROXY_PORT),
        "rspamd_local_dir": "/etc/rspamd",
        "rspamd_controller": f"{LOOPBACK}:{ports.rspamd_controller}",
        "rspamd_var_args": [],
        # The inventory's `mailhost` data for docker-mailserver (docs/mailhost.md).
        "mailhost": {
            "flavour": "docker-mailserver",
            "container": name,
            "docker": docker,
            "host_config_dir": str(paths.config),
            "proxy_service": f"{PROXY_PORT}/inet",
        },
        # The drill takes the whole container down and recreates it (a pod scaled to 0 and back).
        "failover": {
            "stop_command": [str(paths.service), "stop"],
            "start_command": [str(paths.service), "start"],
            # As the mail host's commands see it: in the container.
            "maildir": f"/var/mail/{seed.DOMAIN}/{MAILBOX.split('@')[0]}",
        },
        "primary": {
            "flavour": "docker-mailserver",
            "container": name,
            "image": json.loads(paths.run_spec.read_text())["image"],
            "exec": [docker, "exec", "-i", name],
            "recreate": [str(paths.service), "recreate"],
            "config_dir": str(paths.config),
            "mail_log": str(paths.log / "mail.log"),
            "differences": [list(row) for row in DIFFERENCES + dms_image.DIFFERENCES],
        },
    }


# --- the config dir, the environment, the container -----------------------------------


def write_config_dir(sandbox: Sandbox, paths: DmsPaths) -> None:
    """The config dir as the sandbox wants it (a file the product changed is left alone: ``install_file``)."""
    for directory in (paths.root, paths.config, paths.config / "rspamd", paths.config / "rspamd" / "override.d",
                      paths.mail, paths.state, paths.log, paths.bin):
        root_dir(directory)
    install_file(paths.config / "postfix-accounts.cf", f"{MAILBOX}|{_password_hash(paths)}\n")
    install_file(paths.config / "postfix-virtual.cf", f"@{seed.DOMAIN} {MAILBOX}\n")
    install_file(paths.config / "user-patches.sh", (TEMPLATES / "user-patches.sh").read_text(), 0o755)
    install_file(paths.config / "postfix-main.cf", render_template("postfix-main.cf.j2", TEMPLATES,
                                                                   dnsbl_zone=seed.DNSBL_ZONE))
    install_file(paths.config / "rspamd" / "override.d" / "fuzzy_check.conf",
                 (TEMPLATES / "fuzzy_check.conf").read_text())


def _password_hash(paths: DmsPaths) -> str:
    """The mailbox's password in DMS's format, made once (a new salt would rewrite the file each ``up``)."""
    kept = paths.root / ".password-hash"
    if not kept.exists():
        digest = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=MAILBOX_PASSWORD, capture_output=True,
                                text=True, check=True).stdout.strip()
        kept.write_text("{SHA512-CRYPT}" + digest + "\n")
    return kept.read_text().strip()


def environment(sandbox: Sandbox) -> dict[str, str]:
    """mailserver.env: the seed's production values where it sets them, then the sandbox's own."""
    return {
        "ENABLE_RSPAMD": "1", "ENABLE_RSPAMD_REDIS": "0", "ENABLE_OPENDKIM": "0", "ENABLE_OPENDMARC": "0",
        "ENABLE_POSTGREY": "0", "ENABLE_FAIL2BAN": "0", "ENABLE_CLAMAV": "0", "ENABLE_AMAVIS": "0",
        "ENABLE_SRS": "0", "SPOOF_PROTECTION": "1", "ONE_DIR": "1", "POSTSCREEN_ACTION": "enforce",
        "ENABLE_DNSBL": "1", "PERMIT_DOCKER": "none", "ENABLE_UPDATE_CHECK": "0", "NETWORK_INTERFACE": "lo",
        "SSL_TYPE": "manual", "SSL_CERT_PATH": "/etc/dms-sandbox/cert.pem", "SSL_KEY_PATH": "/etc/dms-sandbox/key.pem",
        "LOG_LEVEL": "info",
        **dms_switches.environment(sandbox),
    }


def write_switches(sandbox: Sandbox, image: str | None = None) -> None:
    """What the switches (``dms_switches``) decide: the environment, ``sandbox-layers.sh`` and the
    config dir's mount; ``image`` None keeps the one of the last ``up``. A new container applies them."""
    paths = dms_paths(sandbox)
    image = image or json.loads(paths.run_spec.read_text())["image"]
    install_file(paths.config / "sandbox-layers.sh", dms_switches.layers_script(sandbox), 0o755)
    install_file(paths.env_file, "".join(f"{name}={value}\n" for name, value in environment(sandbox).items()), 0o600)
    cert, key = sandbox.ca.issue(HOSTNAME, [HOSTNAME])
    args = [
        "--hostname", HOSTNAME, f"--add-host={HOSTNAME}:127.0.0.1", f"--dns={RESOLVER}",
        f"--env-file={paths.env_file}",
        "-v", f"{paths.config}:{CONFIG_DIR}{':ro' if dms_switches.read_only(sandbox) else ''}",
        "-v", f"{paths.mail}:/var/mail", "-v", f"{paths.state}:/var/mail-state", "-v", f"{paths.log}:/var/log/mail",
        "-v", f"{cert}:/etc/dms-sandbox/cert.pem:ro", "-v", f"{key}:/etc/dms-sandbox/key.pem:ro",
    ]
    # What a container started from this spec runs with: the runner puts it in the ready file, so a
    # running container is known to follow the switches (``DmsSwitches``) or not.
    applied = hashlib.sha256(json.dumps([image, args, environment(sandbox), dms_switches.layers_script(sandbox)],
                                        sort_keys=True).encode()).hexdigest()[:16]
    spec = {"name": container_name(sandbox), "image": image, "netns_service": "dms-net",
            "ready_file": str(paths.ready_file), "applied": applied, "args": args,
            "listening": [PROXY_PORT, SMTP_PORT, CONTROLLER_PORT]}
    install_file(paths.run_spec, json.dumps(spec, indent=2) + "\n", 0o600)


def follows_switches(sandbox: Sandbox) -> bool:
    """Whether the running container was started with what the switches say now."""
    paths = dms_paths(sandbox)
    if not paths.ready_file.exists():
        return False
    return paths.ready_file.read_text().strip() == json.loads(paths.run_spec.read_text())["applied"]


def _write_netns_spec(sandbox: Sandbox, paths: DmsPaths) -> None:
    ports = mailhost_ports(sandbox)
    policy_port = sandbox.port(unknown_policy.PORT_NAME)
    resolver = dnsapi.resolver_address(sandbox)
    spec = {
        "outward": [[ports.smtp_proxy, PROXY_PORT], [ports.smtp, SMTP_PORT],
                    [ports.rspamd_controller, CONTROLLER_PORT]],
        "inward": [[RESOLVER, 53, resolver, 53, "udp"], [RESOLVER, 53, resolver, 53, "tcp"],
                   [LOOPBACK, policy_port, LOOPBACK, policy_port, "tcp"]],
    }
    install_file(paths.netns_spec, json.dumps(spec, indent=2) + "\n")


def _write_scripts(paths: DmsPaths) -> None:
    conf = dms_image.podman_env()["CONTAINERS_CONF"]
    install_file(paths.docker, "#!/bin/sh\n# podman as the sandbox runs it (written by backupmx_sandbox.dmshost).\n"
                 f"CONTAINERS_CONF={shlex.quote(conf)} exec podman \"$@\"\n", 0o755)
    code = "import sys; from backupmx_sandbox.dmshost import container_control; sys.exit(container_control(sys.argv[1]))"
    install_file(paths.service, "#!/bin/sh\n# Stop, start or recreate the sandbox's docker-mailserver container "
                 "(written by backupmx_sandbox.dmshost).\nset -eu\n"
                 f"export BACKUPMX_SANDBOX_DIR={shlex.quote(str(paths.root.parent))}\n"
                 f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} \"$1\"\n", 0o755)


def container_control(action: str, sandbox: Sandbox | None = None) -> int:
    """``stop``, ``start`` or ``recreate`` (stop, then start: a new container from the image)."""
    if action == "recreate":
        control_service("stop", "dms", container_service, sandbox)
        action = "start"
    return control_service(action, "dms", container_service, sandbox)


class DmsSwitches:
    """The layers of the docker-mailserver primary (``dms_switches``), read and switched; a switch
    rewrites the environment and ``sandbox-layers.sh`` and recreates a running container."""

    names = dms_switches.NAMES

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def is_on(self, name: str) -> bool:
        return self.status()[self._known(name)]

    def status(self) -> dict[str, bool]:
        return dict(dms_switches.state(self.sandbox)["layers"])

    def switch(self, name: str, on: bool) -> bool:
        return self.set({self._known(name): on})

    def set(self, wanted: dict[str, bool]) -> bool:
        """Switch several layers with one recreate; True if anything changed."""
        return self._apply(dms_switches.save(self.sandbox, layers=wanted))

    def read_only(self, on: bool) -> bool:
        """Mount the config dir read-only (a Kubernetes ConfigMap), or writable again."""
        return self._apply(dms_switches.save(self.sandbox, read_only=on))

    def _apply(self, changed: bool) -> bool:
        write_switches(self.sandbox)
        if Supervisor(self.sandbox).pid("dms") and not follows_switches(self.sandbox):
            container_control("recreate", self.sandbox)
        return changed

    def _known(self, name: str) -> str:
        if name not in self.names:
            raise ValueError(f"no layer {name!r}; layers: {', '.join(self.names)}")
        return name
