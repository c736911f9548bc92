"""One mail host's ``mailhost`` inventory data, validated (docs/mailhost.md): the flavour,
where Postfix and rspamd keep their files, the PROXY-v2 listener, the reloads, and
the argv of every command the stages run there.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from backupmx.core.errors import ConfigError
from backupmx.core.settings import MAILHOST_FLAVOURS
from backupmx.core.validate import command, host_path, host_port, hostname, known_keys
from backupmx.postfix.shell import in_target

NATIVE, DMS = MAILHOST_FLAVOURS  # "native", "docker-mailserver"


CIDR_FILE_NAME = "postscreen_access.cidr"
ACCESS_LIST = "postscreen_access_list"
CACHE_MAP = "postscreen_cache_map"
RSPAMD_RULE = "backupmx_relay_exempt"
EXEMPT_GROUPS = ("spf", "dmarc")
RSPAMD_BLOCK = "rspamd-relay-exemption"
# How rspamd scores relayed mail (docs/mailhost.md, "Relay scoring"): ``exempt``
# drops SPF and DMARC for the relay networks (the seed's approach); ``external_relay``
# scores them against the original sender address from the relay's Received header
# and caps the action of relayed mail at "add header".
EXEMPT, EXTERNAL_RELAY = RELAY_SCORING = ("exempt", "external_relay")
RSPAMD_CAP_RULE = "backupmx_relay_cap"
RSPAMD_RELAY_SYMBOL = "BACKUPMX_EXTERNAL_RELAY"
EXTERNAL_RELAY_BLOCK = "rspamd-external-relay"
# rspamd's Received list starts with an artificial header for its own hop (Postfix
# hands the milter no Received header of its own; rspamc neither); the module's
# ``count`` strategy takes it off, so 3 is the second real header: the relay's own.
# Verified with rspamd 3.4 through rspamc and through postscreen -> smtpd -> milter.
EXTERNAL_RELAY_COUNT = 3
# Below the settings check (priority 10): the settings rule must still see the
# relay's address, not the original one the module puts in its place.
EXTERNAL_RELAY_PRIORITY = 9
USER_PATCHES_BLOCK = "postscreen-relay-whitelist"
# docker-mailserver: the config dir's folder for files of the watched rspamd/ tree in transit.
STAGE_DIR_NAME = ".backupmx-stage"
# docker-mailserver's changedetector polls the config dir (every 2 s) and, on a change
# under rspamd/, copies it into the container and restarts rspamd. It is idle when the
# checksums it last applied (its CHKSUM_FILE) are those of the monitored files now, as
# its own helpers compute them (the test suite of docker-mailserver waits the same way).
# Exit 0: idle, or no changedetector runs, or this is no docker-mailserver we know.
CHANGEDETECTOR_SETTLED = (
    "supervisorctl status changedetector 2>/dev/null | grep -q RUNNING || exit 0; "
    "source /usr/local/bin/helpers/index.sh >/dev/null 2>&1 && [ -f /etc/dms-settings ] || exit 0; "
    "source /etc/dms-settings; _rspamd_get_envs; "
    "_monitored_files_checksums 2>/dev/null | cmp -s - \"${CHKSUM_FILE:-/tmp/docker-mailserver-config-chksum}\""
)
# master.cf (native): the relay smtpd service (backupmx.mailhost.layers).
RELAY_SMTPD_BLOCK = "relay-smtpd"
# main.cf (native): the definition of the hook the relay smtpd service sets.
RELAY_HOOK_BLOCK = "relay-exception"
# Postfix's default when main.cf does not set postscreen_access_list.
POSTFIX_DEFAULT_ACCESS_LIST = "permit_mynetworks"


_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")
_SERVICE_TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
_CONTAINER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


MAILHOST_KEYS = ("config_dir", "container", "docker", "flavour", "host_config_dir", "postfix_config_dir",
                 "postfix_reload", "proof_helo", "proof_sender", "proxy_service", "relay_scoring", "rspamadm_args",
                 "rspamd_controller", "rspamd_local_dir", "rspamd_reload", "smtp_probe", "mail_log")

# Stage 4's relayed envelope (docs/mailhost.md, "Every layer of the primary"): a
# foreign sender whose domain publishes SPF ending in -all that does not list the
# relays (policyd-spf refuses exactly that), and the relay's HELO name. The probe
# stops at RCPT: nothing is delivered.
DEFAULT_PROOF_SENDER = "postmaster@microsoft.com"
DEFAULT_PROOF_HELO = "mail.rollernet.us"


# --- the settings model -------------------------------------------------------


@dataclass(frozen=True)
class MailHost:
    """One mail host's ``mailhost`` inventory data, validated (docs/mailhost.md)."""

    flavour: str
    proxy_service: str  # master.cf service name of the PROXY-v2 postscreen listener
    proxy_service_type: str = "inet"
    # Where Postfix reads its configuration (native: on the host; docker-mailserver:
    # inside the container).
    postfix_config_dir: str = "/etc/postfix"
    # rspamd's LOCAL_CONFDIR (native); docker-mailserver: /etc/rspamd in the container.
    rspamd_local_dir: str = "/etc/rspamd"
    rspamadm_args: tuple[str, ...] = ()
    rspamd_controller: str = "127.0.0.1:11334"
    postfix_reload: tuple[str, ...] = ()
    rspamd_reload: tuple[str, ...] = ()
    # docker-mailserver only.
    container: str | None = None
    config_dir: str = "/tmp/docker-mailserver"  # inside the container
    host_config_dir: str | None = None  # the same directory on the docker host
    docker: str = "docker"
    # Stage 4's SMTP probe of the listener, as reachable on the mail host ("ip:port");
    # derived from the service name when it names an address; "" = no SMTP probe.
    smtp_probe: str = ""
    # How rspamd scores relayed mail: ``exempt`` or ``external_relay`` (RELAY_SCORING).
    relay_scoring: str = EXEMPT
    # Stage 4's relayed envelope: MAIL FROM and HELO.
    proof_sender: str = DEFAULT_PROOF_SENDER
    proof_helo: str = DEFAULT_PROOF_HELO
    # Postfix's log, where it runs (the gate report's outage coverage); "": maillog_file, else the
    # flavour's default (backupmx.mailhost.maillog).
    mail_log: str = ""

    # -- where things are ----------------------------------------------------

    @property
    def service_key(self) -> str:
        return f"{self.proxy_service}/{self.proxy_service_type}"

    @property
    def is_docker(self) -> bool:
        return self.flavour == DMS

    @property
    def cidr_path(self) -> str:
        """The CIDR file as Postfix opens it (in the container for docker-mailserver)."""
        base = self.config_dir if self.is_docker else self.postfix_config_dir
        return f"{base}/{CIDR_FILE_NAME}"

    @property
    def cidr_host_path(self) -> str:
        """The CIDR file as written on the host pyinfra connects to."""
        return f"{self.host_config_dir}/{CIDR_FILE_NAME}" if self.is_docker else self.cidr_path

    @property
    def master_cf_path(self) -> str:
        return f"{self.postfix_config_dir}/master.cf"

    @property
    def main_cf_path(self) -> str:
        return f"{self.postfix_config_dir}/main.cf"

    def postfix_host_paths(self) -> tuple[str, ...]:
        """The files stage 3's whitelist plan writes on the host (docker-mailserver: user-patches.sh
        does the rest at each start)."""
        if self.is_docker:
            return (self.cidr_host_path, self.user_patches_host_path)
        return (self.cidr_host_path, self.master_cf_path, self.main_cf_path)

    @property
    def user_patches_host_path(self) -> str:
        return f"{self.host_config_dir}/user-patches.sh"

    @property
    def rspamd_settings_host_path(self) -> str:
        """Our settings file on the host: local.d (native) or the mounted override.d (docker-mailserver)."""
        if self.is_docker:
            return f"{self.host_config_dir}/rspamd/override.d/settings.conf"
        return f"{self.rspamd_local_dir}/local.d/settings.conf"

    @property
    def rspamd_external_relay_host_path(self) -> str:
        """external_relay mode: the module's settings (native only)."""
        return f"{self.rspamd_local_dir}/local.d/external_relay.conf"

    @property
    def rspamd_lua_host_path(self) -> str:
        """external_relay mode: the Lua file rspamd loads from local.d (the condition on our rule)."""
        return f"{self.rspamd_local_dir}/local.d/rspamd.lua"

    @property
    def rspamd_settings_mounted_path(self) -> str:
        """docker-mailserver: the mounted copy, as the container sees it."""
        return f"{self.config_dir}/rspamd/override.d/settings.conf"

    @property
    def rspamd_settings_live_path(self) -> str:
        """docker-mailserver: where its startup copies override.d, and rspamd reads it."""
        return f"{self.rspamd_local_dir}/override.d/settings.conf"

    @property
    def stage_dir(self) -> str | None:
        """docker-mailserver: where a file of the watched ``rspamd/`` tree waits while a transaction
        runs (outside that tree, on the same filesystem, so putting it in place is one rename)."""
        return f"{self.host_config_dir}/{STAGE_DIR_NAME}" if self.is_docker else None

    def changedetector_settled(self) -> list[str]:
        """docker-mailserver: a command that succeeds once its changedetector has applied every change."""
        return self.in_target(["bash", "-c", CHANGEDETECTOR_SETTLED])

    def read_only_refusal(self, paths) -> str:
        """Stage 3's one line when docker-mailserver's config dir is mounted read-only (a Kubernetes ConfigMap)."""
        names = ", ".join(dict.fromkeys(str(path).removeprefix(f"{self.host_config_dir}/") for path in paths))
        return (f"docker-mailserver's config dir {self.config_dir} is read-only in container {self.container} "
                f"(a Kubernetes ConfigMap?): stage 3 would change {names} there; nothing was changed: put them into "
                "its source and roll the pod out (docs/mailhost.md, \"Kubernetes\"), or mount it writable, then re-run")

    def managed_host_paths(self) -> list[str]:
        return [*self.postfix_host_paths(), self.rspamd_settings_host_path]

    def cache_map(self) -> str:
        """The listener's own postscreen cache, so two postscreen services never share one file."""
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.proxy_service).strip("_")
        return f"btree:$data_directory/postscreen_{slug}_cache"

    # -- commands ------------------------------------------------------------

    def in_target(self, argv: Sequence[str], stdin: bool = False) -> list[str]:
        """``argv`` as run where Postfix and rspamd live (``docker exec`` for docker-mailserver)."""
        return in_target(str(self.container) if self.is_docker else None, self.docker, argv, stdin)

    def postfix(self, *args: str) -> list[str]:
        return self.in_target(["postfix", "-c", self.postfix_config_dir, *args])

    def postconf(self, *args: str) -> list[str]:
        return self.in_target(["postconf", "-c", self.postfix_config_dir, *args])

    def postmap_query(self, address: str) -> list[str]:
        return self.in_target(["postmap", "-c", self.postfix_config_dir, "-q", address, f"cidr:{self.cidr_path}"])

    def rspamadm(self, *args: str) -> list[str]:
        return self.in_target(["rspamadm", *self.rspamadm_args, *args])

    def postfix_check(self) -> list[str]:
        """``postfix check`` under ``script``: Postfix prints its warnings only to a terminal."""
        return self.in_target(["script", "-qec", shlex.join(["postfix", "-c", self.postfix_config_dir, "check"]),
                               "/dev/null"])

    def postfix_reload_argv(self) -> list[str]:
        return self.in_target(self.postfix_reload) if self.postfix_reload else self.postfix("reload")

    def rspamd_reload_argv(self) -> list[str]:
        return self.in_target(self.rspamd_reload)


def load_mailhost(data: Any) -> MailHost:
    """Validate ``host.data.mailhost`` (a mapping) into ``MailHost``; ``ConfigError`` names the field."""
    if data is None:
        raise ConfigError("mailhost", "missing", "set `mailhost` for every mail host (see docs/mailhost.md)")
    if not isinstance(data, Mapping):
        raise ConfigError("mailhost", f"must be a mapping, got {type(data).__name__}")
    known_keys(data, "mailhost", MAILHOST_KEYS)
    flavour = data.get("flavour")
    if flavour not in MAILHOST_FLAVOURS:
        raise ConfigError("mailhost.flavour", f"{flavour!r} is not a mail host flavour",
                          f"use one of {', '.join(MAILHOST_FLAVOURS)}")
    service, service_type = _proxy_service(data.get("proxy_service"))
    docker = flavour == DMS
    values: dict[str, Any] = {"flavour": flavour, "proxy_service": service, "proxy_service_type": service_type}
    for key in ("postfix_config_dir", "rspamd_local_dir", "config_dir", "host_config_dir", "mail_log"):
        if data.get(key) is not None:
            values[key] = host_path(data[key], f"mailhost.{key}")
    if docker:
        container = data.get("container")
        if not isinstance(container, str) or not _CONTAINER.match(container):
            raise ConfigError("mailhost.container", f"{container!r} is not a container name",
                              "name the docker-mailserver container, e.g. mailserver")
        values["container"] = container
        if "host_config_dir" not in values:
            raise ConfigError("mailhost.host_config_dir", "missing",
                              "the docker host's directory mounted at config_dir (/tmp/docker-mailserver)")
        docker_bin = data.get("docker", "docker")
        if not isinstance(docker_bin, str) or not re.match(r"^[A-Za-z0-9_./-]+$", docker_bin):
            raise ConfigError("mailhost.docker", f"{docker_bin!r} is not a command name")
        values["docker"] = docker_bin
    else:
        for key in ("container", "host_config_dir"):
            if data.get(key) is not None:
                raise ConfigError(f"mailhost.{key}", "is only for the docker-mailserver flavour")
    values["rspamadm_args"] = command(data.get("rspamadm_args", []), "mailhost.rspamadm_args", allow_empty=True)
    controller = data.get("rspamd_controller", "127.0.0.1:11334")
    values["rspamd_controller"] = host_port(controller, "mailhost.rspamd_controller")
    if data.get("postfix_reload") is not None:
        values["postfix_reload"] = command(data["postfix_reload"], "mailhost.postfix_reload")
    default_rspamd_reload = ["supervisorctl", "signal", "HUP", "rspamd"] if docker else ["systemctl", "reload", "rspamd"]
    values["rspamd_reload"] = command(data.get("rspamd_reload", default_rspamd_reload), "mailhost.rspamd_reload")
    values["smtp_probe"] = _smtp_probe(data.get("smtp_probe", True), service)
    values["relay_scoring"] = _relay_scoring(data.get("relay_scoring", EXEMPT), docker)
    values["proof_sender"] = _address(data.get("proof_sender", DEFAULT_PROOF_SENDER), "mailhost.proof_sender")
    values["proof_helo"] = _helo(data.get("proof_helo", DEFAULT_PROOF_HELO))
    return MailHost(**values)


def _address(value: Any, field_name: str) -> str:
    local, _, domain = value.rpartition("@") if isinstance(value, str) else ("", "", "")
    fix = "an address whose domain publishes SPF ending in -all, e.g. postmaster@microsoft.com"
    if not re.match(r"^[A-Za-z0-9._+-]+$", local):
        raise ConfigError(field_name, f"{value!r} is not a mail address", fix)
    hostname(domain, field_name, fix)
    return value


def _helo(value: Any) -> str:
    return hostname(value, "mailhost.proof_helo", "the relay's HELO name, e.g. mail.rollernet.us")


def _relay_scoring(value: Any, docker: bool) -> str:
    if value not in RELAY_SCORING:
        raise ConfigError("mailhost.relay_scoring", f"{value!r} is not a relay scoring mode",
                          f"use one of {', '.join(RELAY_SCORING)} (docs/mailhost.md)")
    if value == EXTERNAL_RELAY and docker:
        # docker-mailserver copies only rspamd/override.d into the container; the
        # Lua condition lives in local.d/rspamd.lua, which it does not manage.
        raise ConfigError("mailhost.relay_scoring", "external_relay is not supported for docker-mailserver yet",
                          "use exempt")
    return value


def _proxy_service(value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or not value:
        raise ConfigError("mailhost.proxy_service", f"{value!r} is not a master.cf service",
                          "name the PROXY-v2 postscreen listener as `postconf -P` shows it, e.g. 2525/inet")
    name, _, service_type = value.partition("/")
    service_type = service_type or "inet"
    if not _SERVICE_NAME.match(name) or service_type not in _SERVICE_TYPES:
        raise ConfigError("mailhost.proxy_service", f"{value!r} is not a master.cf service name/type",
                          "e.g. 2525/inet or 127.0.0.1:2525/inet")
    return name, service_type





def _smtp_probe(value: Any, service: str) -> str:
    if value is False or value == "":
        return ""
    if value is True or value is None:
        # "127.0.0.1:2525" probes that address; "2525" listens everywhere: loopback.
        host, _, port = service.rpartition(":")
        if not port.isdigit():
            return ""
        return f"{host or '127.0.0.1'}:{port}"
    return host_port(value, "mailhost.smtp_probe", what="host:port, true or false")



# docker-mailserver policies that judge relayed mail at SMTP time, before rspamd, and
# that stage 3 cannot make an exception for. (policyd-spf, ENABLE_POLICYD_SPF, is one
# it can: backupmx.mailhost.layers.)
DMS_POLICIES = {
    "ENABLE_OPENDMARC": "OpenDMARC rejects or tags relayed mail for failing DMARC as a milter",
}


def dms_policy_conflicts(env: Mapping[str, str | None], restrictions: str = "", milters: str = "") -> list[str]:
    """docker-mailserver settings that would penalise relayed mail before rspamd's exemption applies.

    Both default to 1 when unset. The live Postfix settings count too: a policy
    that is wired in is active whatever the environment says.
    """
    conflicts = []
    for variable, why in DMS_POLICIES.items():
        value = env.get(variable)
        enabled = value is None or value.strip() != "0"
        wired = "dmarc" in milters
        if enabled or wired:
            shown = "unset, default 1" if value is None else value.strip()
            conflicts.append(f"{variable}={shown}: {why}; set {variable}=0 in mailserver.env and recreate the container")
    return conflicts



