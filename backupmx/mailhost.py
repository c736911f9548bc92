"""The mail host stage (seed changes 2 and 3) as plain Python.

Everything here is pure: data in, data out, no host contacted. ``facts.mailhost``
and ``operations.mailhost`` are thin layers that run the shell built here on the
mail host and hand the output back to the parsers here.

- ``MailHost``: the validated ``mailhost`` inventory data of one host (flavour,
  where Postfix and rspamd keep their files, the PROXY-v2 listener, reloads).
- Rendering: ``postscreen_access.cidr``, the rspamd settings rule, the marked
  ``user-patches.sh`` block (docker-mailserver), and a minimal master.cf edit that
  touches only the listener's own ``-o`` lines.
- Probe addresses: one inside every relay network, and outside addresses that are
  in none of them.
- Shell: the read-only capture script of the facts, the apply transaction of the
  operations (stage, swap, validate, restore on failure, reload), the stage 4
  probes, and parsers for what they print.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from backupmx.config import MAILHOST_FLAVOURS, IPNetwork
from backupmx.errors import BackupMXError, ConfigError

NATIVE, DMS = MAILHOST_FLAVOURS  # "native", "docker-mailserver"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

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
# Postfix's default when main.cf does not set postscreen_access_list.
POSTFIX_DEFAULT_ACCESS_LIST = "permit_mynetworks"

# Candidates for "an address no relay network contains": documentation and
# benchmarking ranges first (RFC 5737, 2544, 3849), so a probe never names a
# real network. Relay networks are at most /16 wide, so some candidate is free.
OUTSIDE_CANDIDATES = {
    4: ["203.0.113.1", "198.51.100.1", "192.0.2.1", "198.18.0.1", "100.64.0.1"],
    6: ["2001:db8:ffff:ffff::1", "2001:db8::1", "2001:db8:1::1", "3fff::1"],
}

_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")
_SERVICE_TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
_CONTAINER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SAFE_PATH = re.compile(r"^/[^\s'\"\\$`]*$")
_CONTROLLER = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$")


class MasterCfError(BackupMXError):
    """master.cf cannot be edited safely (service missing, option set inline)."""


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

    def managed_host_paths(self) -> list[str]:
        if self.is_docker:
            return [self.cidr_host_path, self.user_patches_host_path, self.rspamd_settings_host_path]
        return [self.cidr_host_path, self.master_cf_path, self.rspamd_settings_host_path]

    def cache_map(self) -> str:
        """The listener's own postscreen cache, so two postscreen services never share one file."""
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.proxy_service).strip("_")
        return f"btree:$data_directory/postscreen_{slug}_cache"

    # -- commands ------------------------------------------------------------

    def in_target(self, argv: Sequence[str], stdin: bool = False) -> list[str]:
        """``argv`` as run where Postfix and rspamd live (``docker exec`` for docker-mailserver)."""
        if not self.is_docker:
            return list(argv)
        return [self.docker, "exec", *(["-i"] if stdin else []), str(self.container), *argv]

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
        return self.in_target(["script", "-qec", shell_join(["postfix", "-c", self.postfix_config_dir, "check"]),
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
    known = {"flavour", "proxy_service", "postfix_config_dir", "rspamd_local_dir", "rspamadm_args",
             "rspamd_controller", "postfix_reload", "rspamd_reload", "container", "config_dir",
             "host_config_dir", "docker", "smtp_probe", "relay_scoring"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"mailhost.{unknown[0]}", "is not a known key",
                          f"known keys: {', '.join(sorted(known))}")
    flavour = data.get("flavour")
    if flavour not in MAILHOST_FLAVOURS:
        raise ConfigError("mailhost.flavour", f"{flavour!r} is not a mail host flavour",
                          f"use one of {', '.join(MAILHOST_FLAVOURS)}")
    service, service_type = _proxy_service(data.get("proxy_service"))
    docker = flavour == DMS
    values: dict[str, Any] = {"flavour": flavour, "proxy_service": service, "proxy_service_type": service_type}
    for key in ("postfix_config_dir", "rspamd_local_dir", "config_dir", "host_config_dir"):
        if data.get(key) is not None:
            values[key] = _path(data[key], f"mailhost.{key}")
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
    values["rspamadm_args"] = _argv(data.get("rspamadm_args", []), "mailhost.rspamadm_args", allow_empty=True)
    controller = data.get("rspamd_controller", "127.0.0.1:11334")
    if not isinstance(controller, str) or not _CONTROLLER.match(controller):
        raise ConfigError("mailhost.rspamd_controller", f"{controller!r} is not host:port")
    values["rspamd_controller"] = controller
    if data.get("postfix_reload") is not None:
        values["postfix_reload"] = _argv(data["postfix_reload"], "mailhost.postfix_reload")
    default_rspamd_reload = ["supervisorctl", "signal", "HUP", "rspamd"] if docker else ["systemctl", "reload", "rspamd"]
    values["rspamd_reload"] = _argv(data.get("rspamd_reload", default_rspamd_reload), "mailhost.rspamd_reload")
    values["smtp_probe"] = _smtp_probe(data.get("smtp_probe", True), service)
    values["relay_scoring"] = _relay_scoring(data.get("relay_scoring", EXEMPT), docker)
    return MailHost(**values)


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


def _path(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not _SAFE_PATH.match(value) or "//" in value:
        raise ConfigError(field_name, f"{value!r} is not an absolute path without spaces or quotes")
    return value.rstrip("/") or "/"


def _argv(value: Any, field_name: str, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(field_name, f"must be a command as a list of strings, got {value!r}")
    if not value and not allow_empty:
        raise ConfigError(field_name, "is empty")
    return tuple(value)


def _smtp_probe(value: Any, service: str) -> str:
    if value is False or value == "":
        return ""
    if value is True or value is None:
        # "127.0.0.1:2525" probes that address; "2525" listens everywhere: loopback.
        host, _, port = service.rpartition(":")
        if not port.isdigit():
            return ""
        return f"{host or '127.0.0.1'}:{port}"
    if not isinstance(value, str) or not _CONTROLLER.match(value):
        raise ConfigError("mailhost.smtp_probe", f"{value!r} is not host:port, true or false")
    return value


# --- probe addresses ----------------------------------------------------------


@dataclass(frozen=True)
class Probes:
    inside: tuple[tuple[str, str], ...]  # (relay network, an address in it)
    outside: tuple[str, ...]  # addresses in no relay network, one per IP version in use

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(address for _, address in self.inside) + self.outside


def probe_addresses(relay_cidrs: Iterable[IPNetwork | str]) -> Probes:
    """For each relay network an address inside it (network + 1), and outside addresses in none."""
    networks = [ipaddress.ip_network(str(cidr)) for cidr in relay_cidrs]
    if not networks:
        raise BackupMXError("no relay networks to probe")
    inside = []
    for network in networks:
        address = network.network_address + 1 if network.num_addresses > 1 else network.network_address
        inside.append((str(network), str(address)))
    outside = []
    for version in sorted({network.version for network in networks}):
        for candidate in OUTSIDE_CANDIDATES[version]:
            address = ipaddress.ip_address(candidate)
            if not any(address in network for network in networks):
                outside.append(candidate)
                break
        else:  # unreachable with networks no wider than /16, kept for honesty
            raise BackupMXError(f"no IPv{version} probe address outside the relay networks")
    return Probes(tuple(inside), tuple(outside))


# --- rendering ----------------------------------------------------------------


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["shquote"] = shlex.quote
    return env


def render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values)


def render_postscreen_access(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """``postscreen_access.cidr``: ``permit`` for every relay network, IPv4 and IPv6."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("postscreen_access.cidr.j2", networks=networks)


def render_rspamd_block(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """The marked settings rule: SPF and DMARC groups off for the relay networks only."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("rspamd_relay_exemption.conf.j2", begin=block_begin(RSPAMD_BLOCK), end=block_end(RSPAMD_BLOCK),
                  rule=RSPAMD_RULE, networks=networks, groups=EXEMPT_GROUPS)


def render_relay_cap_block(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """external_relay mode: the marked settings rule that caps relayed mail at "add header"."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("rspamd_relay_cap.conf.j2", begin=block_begin(RSPAMD_BLOCK), end=block_end(RSPAMD_BLOCK),
                  rule=RSPAMD_CAP_RULE, networks=networks)


def render_external_relay_block() -> str:
    """external_relay mode: the module's rule, a marked block of local.d/external_relay.conf."""
    return render("rspamd_external_relay.conf.j2", begin=block_begin(EXTERNAL_RELAY_BLOCK),
                  end=block_end(EXTERNAL_RELAY_BLOCK), symbol=RSPAMD_RELAY_SYMBOL, count=EXTERNAL_RELAY_COUNT,
                  priority=EXTERNAL_RELAY_PRIORITY, cap_rule=RSPAMD_CAP_RULE)


def render_external_relay_lua(relay_cidrs: Iterable[IPNetwork | str]) -> str:
    """external_relay mode: the Lua block (local.d/rspamd.lua) that limits the rule to relay addresses."""
    networks = [str(ipaddress.ip_network(str(cidr))) for cidr in relay_cidrs]
    return render("rspamd_external_relay.lua.j2", begin=block_begin(EXTERNAL_RELAY_BLOCK, "--"),
                  end=block_end(EXTERNAL_RELAY_BLOCK, "--"), symbol=RSPAMD_RELAY_SYMBOL, networks=networks)


def rspamd_files(mailhost: MailHost, relay_cidrs: Iterable[IPNetwork | str] | None) -> dict[str, tuple[str, str, str | None]]:
    """Each rspamd file of the stage: path -> (block name, comment marker, wanted block or None).

    ``relay_cidrs`` None: nothing of ours anywhere (``present=False``). Switching the
    mode swaps the settings rule and adds or removes the two external_relay blocks.
    """
    external = relay_cidrs is not None and mailhost.relay_scoring == EXTERNAL_RELAY
    cidrs = list(relay_cidrs or [])
    settings = None
    if relay_cidrs is not None:
        settings = render_relay_cap_block(cidrs) if external else render_rspamd_block(cidrs)
    files = {mailhost.rspamd_settings_host_path: (RSPAMD_BLOCK, "#", settings)}
    if not mailhost.is_docker:
        files[mailhost.rspamd_external_relay_host_path] = (EXTERNAL_RELAY_BLOCK, "#",
                                                           render_external_relay_block() if external else None)
        files[mailhost.rspamd_lua_host_path] = (EXTERNAL_RELAY_BLOCK, "--",
                                                render_external_relay_lua(cidrs) if external else None)
    return files


def render_user_patches_block(mailhost: MailHost, options: Mapping[str, str]) -> str:
    """docker-mailserver: the marked user-patches.sh block that sets the listener's options at start."""
    settings = [f"{mailhost.service_key}/{name}={value}" for name, value in options.items()]
    return render("user-patches.block.j2", begin=block_begin(USER_PATCHES_BLOCK), end=block_end(USER_PATCHES_BLOCK),
                  settings=settings, service=mailhost.service_key)


def parse_postscreen_access(text: str) -> tuple[list[str], list[str]]:
    """The networks a cidr table permits, and the lines it cannot read."""
    networks, invalid = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        try:
            network = ipaddress.ip_network(parts[0].strip("[]").replace("]/", "/"), strict=True)
        except ValueError:
            invalid.append(line)
            continue
        if len(parts) >= 2 and parts[1].lower() == "permit":
            networks.append(str(network))
    return networks, invalid


# --- marked blocks ------------------------------------------------------------


def block_begin(name: str, comment: str = "#") -> str:
    return f"{comment} BEGIN backupmx {name} (managed by backupmx; edit the inventory, not this block)"


def block_end(name: str, comment: str = "#") -> str:
    return f"{comment} END backupmx {name}"


def _block_span(lines: list[str], name: str, comment: str = "#") -> tuple[int, int] | None:
    begin_prefix, end_line = f"{comment} BEGIN backupmx {name}", block_end(name, comment)
    begins = [i for i, line in enumerate(lines) if line.rstrip("\r\n").startswith(begin_prefix)]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == end_line]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise BackupMXError(f"the backupmx {name} block markers are damaged (found {len(begins)} BEGIN and "
                            f"{len(ends)} END lines); remove the block by hand and re-run")
    return begins[0], ends[0]


def find_block(text: str | None, name: str, comment: str = "#") -> str | None:
    if not text:
        return None
    lines = text.splitlines(keepends=True)
    span = _block_span(lines, name, comment)
    return None if span is None else "".join(lines[span[0]:span[1] + 1])


def with_block(text: str | None, name: str, block: str | None, header: str = "", comment: str = "#") -> str | None:
    """``text`` with the marked block ``name`` replaced by ``block`` (appended if absent; removed if None).

    Everything outside the markers is kept byte for byte. A file that held only
    our block (and ``header``) is removed (None) when the block is removed.
    ``comment`` is the file's comment marker (``--`` for Lua).
    """
    if block is not None and not block.endswith("\n"):
        block += "\n"
    lines = (text or "").splitlines(keepends=True)
    span = _block_span(lines, name, comment)
    if span is not None:
        before, after = lines[:span[0]], lines[span[1] + 1:]
        if block is None:
            if before and not before[-1].strip() and (not after or not after[0].strip()):
                before = before[:-1]  # the blank separator we added
            remaining = "".join(before + after)
            return None if remaining.strip() in ("", header.strip()) else remaining
        return "".join(before) + block + "".join(after)
    if block is None:
        return text
    if not lines:
        return header + block
    current = "".join(lines)
    if not current.endswith("\n"):
        current += "\n"
    if current.strip() and not current.endswith("\n\n"):
        current += "\n"
    return current + block


# --- master.cf ----------------------------------------------------------------


def _entry_span(lines: list[str], service: str, service_type: str) -> tuple[int, int] | None:
    for index, line in enumerate(lines):
        if not line[:1].strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) >= 2 and fields[0] == service and fields[1] == service_type:
            end = index + 1
            while end < len(lines) and lines[end][:1] in (" ", "\t") and lines[end].strip():
                end += 1
            return index, end
    return None


def _option_line(name: str) -> re.Pattern:
    return re.compile(r"^(?P<indent>[ \t]+)-o[ \t]+" + re.escape(name) + r"[ \t]*=(?P<value>[^\r\n]*?)[ \t]*(?P<eol>\r?\n?)$")


def set_service_options(master_cf: str, service: str, service_type: str, options: Mapping[str, str]) -> str:
    """master.cf with ``-o name=value`` set on one service; every other byte kept.

    An option already on its own continuation line is replaced in place; a new
    one goes after the service's last line, indented like it.
    """
    lines = master_cf.splitlines(keepends=True)
    span = _entry_span(lines, service, service_type)
    if span is None:
        raise MasterCfError(f"master.cf has no service {service}/{service_type}")
    start, end = span
    for name, value in options.items():
        if re.search(r"\s", value):
            raise MasterCfError(f"master.cf option {name}: value {value!r} contains whitespace")
        pattern = _option_line(name)
        own_lines = [i for i in range(start + 1, end) if pattern.match(lines[i])]
        inline = [i for i in range(start, end) if i not in own_lines
                  and re.search(r"(^|\s)-o\s*\{?\s*" + re.escape(name) + r"\s*=", lines[i])]
        if inline or len(own_lines) > 1:
            raise MasterCfError(f"master.cf service {service}/{service_type} sets {name} "
                                f"{'inline' if inline else 'more than once'}; give it one `-o {name}=...` line "
                                "of its own and re-run")
        if own_lines:
            match = pattern.match(lines[own_lines[0]])
            lines[own_lines[0]] = f"{match['indent']}-o {name}={value}{match['eol'] or chr(10)}"
            continue
        last = end - 1
        indent = re.match(r"^[ \t]+", lines[last]).group(0) if last > start else "  "
        if not lines[last].endswith("\n"):
            lines[last] += "\n"
        lines.insert(end, f"{indent}-o {name}={value}\n")
        end += 1
    return "".join(lines)


def remove_service_options(master_cf: str, service: str, service_type: str, options: Mapping[str, str]) -> str:
    """master.cf without the ``-o name=value`` lines that hold exactly these values (ours)."""
    lines = master_cf.splitlines(keepends=True)
    span = _entry_span(lines, service, service_type)
    if span is None:
        return master_cf
    start, end = span
    drop = set()
    for name, value in options.items():
        pattern = _option_line(name)
        for i in range(start + 1, end):
            match = pattern.match(lines[i])
            if match and match["value"].strip() == value:
                drop.add(i)
    return "".join(line for i, line in enumerate(lines) if i not in drop)


# --- postconf output ----------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    name: str
    type: str
    command: str
    params: Mapping[str, str]  # the -o overrides, as `postconf -P` prints them

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"


def parse_postconf_services(master_lines: Iterable[str], override_lines: Iterable[str]) -> dict[str, Listener]:
    """Every master.cf service from ``postconf -M`` with its ``postconf -P`` overrides."""
    overrides: dict[str, dict[str, str]] = {}
    for line in override_lines:
        key, sep, value = line.partition(" = ")
        parts = key.strip().split("/")
        if not sep or len(parts) != 3:
            continue
        overrides.setdefault(f"{parts[0]}/{parts[1]}", {})[parts[2]] = value.strip()
    services = {}
    for line in master_lines:
        fields = line.split()
        if len(fields) < 8 or line.startswith("#"):
            continue
        key = f"{fields[0]}/{fields[1]}"
        services[key] = Listener(fields[0], fields[1], fields[7], dict(overrides.get(key, {})))
    return services


def parse_postconf_main(lines: Iterable[str]) -> dict[str, str]:
    values = {}
    for line in lines:
        name, sep, value = line.partition(" = ")
        if not sep:
            name, sep, value = line.partition(" =")
        if sep:
            values[name.strip()] = value.strip()
    return values


def postfix_list(value: str) -> list[str]:
    """The entries of a Postfix list parameter (separated by commas and/or whitespace)."""
    return [entry for entry in re.split(r"[\s,]+", value or "") if entry]


def wanted_listener_options(mailhost: MailHost, services: Mapping[str, Listener],
                            main: Mapping[str, str]) -> dict[str, str]:
    """The listener's ``-o`` overrides we want: our CIDR table in its access list, its own cache.

    The access list keeps whatever the listener (or main.cf) already lists and adds
    ``cidr:<file>``: a site's own entries (e.g. a blocklist) still come first. The
    cache map is set only when the listener has none of its own or shares another
    postscreen service's file; a distinct one of its own is left alone.
    """
    listener = services[mailhost.service_key]
    ours = f"cidr:{mailhost.cidr_path}"
    base = listener.params.get(ACCESS_LIST, main.get(ACCESS_LIST, POSTFIX_DEFAULT_ACCESS_LIST))
    entries = postfix_list(base)
    if ours not in entries:
        entries.append(ours)
    options = {ACCESS_LIST: ",".join(entries)}
    own_cache = listener.params.get(CACHE_MAP)
    main_cache = main.get(CACHE_MAP, "btree:$data_directory/postscreen_cache")
    others = {service.params.get(CACHE_MAP, main_cache) for key, service in services.items()
              if service.command == "postscreen" and key != mailhost.service_key}
    if own_cache is None or own_cache == mailhost.cache_map() or own_cache in others:
        options[CACHE_MAP] = mailhost.cache_map()
    return options


def postscreen_services(services: Mapping[str, Listener]) -> list[str]:
    return sorted(key for key, service in services.items() if service.command == "postscreen")


def missing_listener_message(mailhost: MailHost, services: Mapping[str, Listener]) -> str | None:
    """One line if the configured listener is not a postscreen service of this Postfix."""
    existing = postscreen_services(services)
    listing = ", ".join(existing) if existing else "none"
    service = services.get(mailhost.service_key)
    if service is None:
        return (f"mailhost.proxy_service: Postfix ({mailhost.master_cf_path}) has no service "
                f"{mailhost.service_key}; its postscreen services are: {listing}; "
                "set proxy_service to the PROXY-v2 listener")
    if service.command != "postscreen":
        return (f"mailhost.proxy_service: {mailhost.service_key} runs {service.command}, not postscreen; "
                f"postscreen services: {listing}")
    return None


# docker-mailserver policies that judge relayed mail at SMTP time, before rspamd.
DMS_POLICIES = {
    "ENABLE_POLICYD_SPF": "policyd-spf rejects relayed mail for failing SPF at RCPT time",
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
        wired = ("policyd-spf" in restrictions) if variable == "ENABLE_POLICYD_SPF" else ("dmarc" in milters)
        if enabled or wired:
            shown = "unset, default 1" if value is None else value.strip()
            conflicts.append(f"{variable}={shown}: {why}; set {variable}=0 in mailserver.env and recreate the container")
    return conflicts


# --- shell --------------------------------------------------------------------


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(arg)) for arg in argv)


# The capture protocol of the facts: every value crosses as one "name field value"
# line, command output and file contents base64-encoded, so nothing is lost or
# mistaken for a separator; the script itself always exits 0.
CAPTURE_PRELUDE = r"""
bmx_cap() {
  bmx_n=$1; shift
  bmx_d=$(mktemp -d) || { printf '%s rc 125\n' "$bmx_n"; return 0; }
  "$@" <"${BMX_STDIN:-/dev/null}" >"$bmx_d/o" 2>"$bmx_d/e"; bmx_rc=$?
  printf '%s rc %s\n' "$bmx_n" "$bmx_rc"
  printf '%s out %s\n' "$bmx_n" "$(base64 -w0 <"$bmx_d/o")"
  printf '%s err %s\n' "$bmx_n" "$(base64 -w0 <"$bmx_d/e")"
  rm -rf "$bmx_d"
  return 0
}
""".strip()

READ_FILE = 'if [ -f "$1" ]; then cat -- "$1"; else exit 3; fi'
ABSENT = 3


def read_file_argv(path: str) -> list[str]:
    return ["sh", "-c", READ_FILE, "sh", path]


@dataclass
class Captured:
    rc: int
    out: str
    err: str
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.err.strip()

    def problem(self) -> str:
        text = one_line(self.err or self.out)
        return f"exit {self.rc}: {text}" if text else f"exit {self.rc}"


def capture_script(commands: Sequence[tuple[str, Sequence[str]]], stdin: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None, parallel: bool = False) -> str:
    """A read-only script that runs each (name, argv) and prints its capture lines.

    ``stdin`` maps a name to text fed to that command on standard input;
    ``labels`` maps a name to a value echoed back with it (e.g. the path read).
    ``parallel``: the commands run concurrently (for independent reads that wait
    on daemons, like stage 4's probes); each one's lines are collected in a file
    of its own and printed in the given order, so the output is the same.
    """
    parts = [CAPTURE_PRELUDE]
    if parallel:
        parts.append("BMX_P=$(mktemp -d) || { printf 'bmx rc 125\\n'; exit 0; }")
    for index, (name, argv) in enumerate(commands):
        if not re.match(r"^[A-Za-z0-9_]+$", name):
            raise ValueError(f"capture name {name!r}")
        lines = []
        if labels and name in labels:
            lines.append(f"printf '%s label %s\\n' {name} {base64.b64encode(labels[name].encode()).decode()}")
        if stdin and name in stdin:
            encoded = base64.b64encode(stdin[name].encode()).decode()
            lines.append(f"BMX_STDIN=$(mktemp); printf %s {encoded} | base64 -d >\"$BMX_STDIN\"; "
                         f"bmx_cap {name} {shell_join(argv)}; rm -f \"$BMX_STDIN\"; BMX_STDIN=")
        else:
            lines.append(f"bmx_cap {name} {shell_join(argv)}")
        if parallel:
            parts.append(f"( {'; '.join(lines)} ) >\"$BMX_P/{index:04d}\" &")
        else:
            parts.extend(lines)
    if parallel:
        parts.append("wait; cat \"$BMX_P\"/* 2>/dev/null; rm -rf \"$BMX_P\"")
    return "\n".join(parts) + "\n"


def parse_captures(lines: Iterable[str]) -> dict[str, Captured]:
    raw: dict[str, dict[str, str]] = {}
    for line in lines:
        parts = line.strip().split(" ", 2)
        if len(parts) < 2:
            continue
        name, field_name = parts[0], parts[1]
        raw.setdefault(name, {})[field_name] = parts[2] if len(parts) > 2 else ""
    captured = {}
    for name, fields in raw.items():
        try:
            rc = int(fields.get("rc", "125"))
        except ValueError:
            rc = 125
        captured[name] = Captured(rc, _decode(fields.get("out", "")), _decode(fields.get("err", "")),
                                  _decode(fields.get("label", "")))
    return captured


def _decode(value: str) -> str:
    try:
        return base64.b64decode(value.encode()).decode("utf-8", "surrogateescape")
    except (ValueError, UnicodeDecodeError):
        return ""


def one_line(text: str, limit: int = 400) -> str:
    seen, parts = set(), []
    for line in (text or "").replace("\r", "\n").splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.add(line)
            parts.append(line)
    joined = " | ".join(parts)
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."


def file_content(captured: Captured | None) -> tuple[bool, str | None, str | None]:
    """(readable, content or None if absent, error) from a ``read_file_argv`` capture."""
    if captured is None:
        return False, None, "not read"
    if captured.rc == 0:
        return True, captured.out, None
    if captured.rc == ABSENT and not captured.err.strip():
        return True, None, None
    return False, None, captured.problem()


# --- the apply transaction ----------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    """One file on the host to change: ``new`` None removes it; ``old`` is what the plan saw."""

    path: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Transaction:
    label: str
    files: tuple[FileChange, ...] = ()
    # docker-mailserver: files of the running container the live commands change
    # (copied aside first), and the commands, as (what, argv).
    live_files: tuple[tuple[str, ...], ...] = ()  # (argv prefix into the container..., path)
    live_commands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    postfix_check: tuple[str, ...] = ()
    rspamd_configtest: tuple[str, ...] = ()
    # (argv, expected stdout; "" = no answer)
    probes: tuple[tuple[tuple[str, ...], str], ...] = ()
    reloads: tuple[tuple[str, ...], ...] = ()


_HELPERS = r"""
bmx_say() { printf 'backupmx: %s: %s\n' "$BMX_LABEL" "$1" >&2; }
bmx_norm() { tr '\r' '\n' | awk '{ gsub(/^[ \t]+|[ \t]+$/, "") } NF && !seen[$0]++'; }
bmx_join() { awk 'NR > 1 { printf " | " } { printf "%s", $0 } END { print "" }' | cut -c1-600; }
bmx_new_lines() { { grep -vxF -f "$1" "$2" || true; } | bmx_join; }
""".strip()


# Linux refuses any single exec argument above 128 KiB (MAX_ARG_STRLEN), and over
# SSH the whole command is one argument of the login shell: a script carrying
# file contents inline must stay well below it. Larger contents are uploaded
# first (``staged``) and only their checksums travel in the script.
INLINE_SCRIPT_LIMIT = 48 * 1024


def transaction_script(tx: Transaction, staged: Mapping[str, str] | None = None) -> str:
    """The shell that applies ``tx`` on the mail host, all or nothing.

    ``staged`` maps a file's path to a file on the host already holding its new
    content (uploaded by the operation when the script would be too large to
    carry it inline, see ``INLINE_SCRIPT_LIMIT``); the script checks its sha256
    before anything is swapped and removes it on every exit.

    1. Check each file still holds what the plan saw (no edit slipped in between),
       and each staged upload holds exactly the new content.
    2. Write every new file next to its target (``.backupmx-new``), copy the old
       one aside (``cp -p`` to ``.backupmx-old``), rename the new one in: each
       replace is atomic, and readers see either the old or the new file.
    3. Validate: ``postfix check`` and ``rspamadm configtest`` must print nothing
       they did not print before the change (both exit 0 on some real errors: a
       misspelled parameter only warns), and every postmap probe must answer as
       expected.
    4. On any failure: put the old files back by rename (byte for byte), remove
       files that did not exist, reload nothing, print one line, exit 1.
    5. Otherwise reload, then drop the copies.
    """
    q = shlex.quote
    names = ", ".join([Path(change.path).name for change in tx.files]
                      + [f"{Path(live[-1]).name} in the container" for live in tx.live_files]) or "nothing"
    head = [
        "set -u",
        "umask 022",
        f"BMX_LABEL={q(tx.label)}",
        _HELPERS,
    ]
    staged = {change.path: staged[change.path] for change in tx.files
              if staged and change.new is not None and change.path in staged}
    if staged:
        # The uploads go whatever happens: success, refusal or restore.
        head.append(f"trap {q('rm -f ' + shell_join(staged.values()))} EXIT")
    head += [
        "BMX_T=$(mktemp -d) || { bmx_say 'cannot make a temporary directory'; exit 1; }",
        ": >\"$BMX_T/pc0\"; : >\"$BMX_T/rt0\"",
    ]
    restore, cleanup = ["bmx_restore() {"], ["bmx_cleanup() {"]
    # Every "swapped" flag exists from the start: bmx_restore reads them all (set -u).
    steps = [" ".join([f"BMX_S{i}=0" for i in range(len(tx.files))] + [f"BMX_L{i}=0" for i in range(len(tx.live_files))])
             or ":"]

    # 1. Nothing changed since the plan.
    for change in tx.files:
        reader = shell_join(read_file_argv(change.path))
        if change.old is None:
            steps.append(f"if {reader} >/dev/null 2>&1; then bmx_say {q(change.path + ' appeared since it was read; re-run')}; "
                         "rm -rf \"$BMX_T\"; exit 1; fi")
        else:
            steps.append(f"[ \"$({reader} 2>/dev/null | sha256sum | cut -d' ' -f1)\" = {_sha256(change.old)} ] || "
                         f"{{ bmx_say {q(change.path + ' changed since it was read; re-run')}; rm -rf \"$BMX_T\"; exit 1; }}")
    for path, upload in staged.items():
        new = next(change.new for change in tx.files if change.path == path)
        steps.append(f"[ \"$(sha256sum 2>/dev/null <{q(upload)} | cut -d' ' -f1)\" = {_sha256(new)} ] || "
                     f"{{ bmx_say {q('the uploaded new content of ' + path + ' is incomplete; re-run')}; "
                     "rm -rf \"$BMX_T\"; exit 1; }")
    # Baselines: what the checks print before the change.
    if tx.postfix_check:
        steps.append(f"{shell_join(tx.postfix_check)} </dev/null 2>&1 | bmx_norm >\"$BMX_T/pc0\"")
    if tx.rspamd_configtest:
        steps.append(f"{shell_join(tx.rspamd_configtest)} </dev/null 2>&1 | bmx_norm | grep -vx 'syntax OK' >\"$BMX_T/rt0\"")

    # 2. Stage, set aside, swap.
    for index, change in enumerate(tx.files):
        flag, target = f"BMX_S{index}", q(change.path)
        new_path, old_path = q(change.path + ".backupmx-new"), q(change.path + ".backupmx-old")
        restore.append(f"  if [ \"${flag}\" = 1 ]; then if [ -e {old_path} ]; then mv -f {old_path} {target}; "
                       f"else rm -f {target}; fi; fi; rm -f {new_path}")
        cleanup.append(f"  rm -f {old_path}")
        steps.append(f"rm -f {old_path} {new_path}")
        if change.new is not None:
            if change.path in staged:
                source = f"cat -- {q(staged[change.path])}"
            else:
                source = f"printf %s {base64.b64encode(change.new.encode('utf-8', 'surrogateescape')).decode()} | base64 -d"
            steps.append(f"mkdir -p {q(str(Path(change.path).parent))} && {source} >{new_path} "
                         f"|| bmx_fail {q('cannot write ' + change.path + '.backupmx-new')}")
            steps.append(f"if [ -e {target} ]; then chmod --reference={target} {new_path} && "
                         f"chown --reference={target} {new_path}; else chmod 644 {new_path}; fi "
                         f"|| bmx_fail {q('cannot set owner and mode of ' + change.path + '.backupmx-new')}")
        steps.append(f"if [ -e {target} ]; then cp -p {target} {old_path} || bmx_fail {q('cannot copy ' + change.path + ' aside')}; fi")
        steps.append(f"{flag}=1")
        if change.new is None:
            steps.append(f"rm -f {target} || bmx_fail {q('cannot remove ' + change.path)}")
        else:
            steps.append(f"mv -f {new_path} {target} || bmx_fail {q('cannot rename ' + change.path + '.backupmx-new into place')}")

    # docker-mailserver: the running container's own copies.
    for index, live in enumerate(tx.live_files):
        into, path = list(live[:-1]), live[-1]
        flag, old_path = f"BMX_L{index}", q(path + ".backupmx-old")
        aside = shell_join(into + ["sh", "-c", 'rm -f "$1"; if [ -e "$2" ]; then cp -p "$2" "$1"; fi', "sh",
                                   path + ".backupmx-old", path])
        back = shell_join(into + ["sh", "-c", 'if [ -e "$1" ]; then mv -f "$1" "$2"; else rm -f "$2"; fi', "sh",
                                  path + ".backupmx-old", path])
        steps.append(f"{aside} || bmx_fail {q('cannot copy ' + path + ' aside in the container')}")
        steps.append(f"{flag}=1")
        restore.append(f"  if [ \"${flag}\" = 1 ]; then {back}; fi")
        cleanup.append(f"  {shell_join(into + ['rm', '-f', path + '.backupmx-old'])}")
    for what, argv in tx.live_commands:
        steps.append(f"BMX_O=$({shell_join(argv)} </dev/null 2>&1) || "
                     f"bmx_fail \"{_dq(what)} failed: $(printf '%s\\n' \"$BMX_O\" | bmx_norm | bmx_join)\"")

    # 3. Validate.
    if tx.postfix_check:
        steps.append(f"{shell_join(tx.postfix_check)} </dev/null 2>&1 | bmx_norm >\"$BMX_T/pc1\"")
        steps.append("BMX_NEW=$(bmx_new_lines \"$BMX_T/pc0\" \"$BMX_T/pc1\")")
        steps.append("[ -z \"$BMX_NEW\" ] || bmx_fail \"postfix check warns after the change: $BMX_NEW\"")
    if tx.rspamd_configtest:
        steps.append(f"BMX_O=$({shell_join(tx.rspamd_configtest)} </dev/null 2>&1); BMX_RC=$?")
        steps.append("printf '%s\\n' \"$BMX_O\" | bmx_norm | grep -vx 'syntax OK' >\"$BMX_T/rt1\"")
        steps.append("BMX_NEW=$(bmx_new_lines \"$BMX_T/rt0\" \"$BMX_T/rt1\")")
        steps.append("if [ \"$BMX_RC\" != 0 ] || [ -n \"$BMX_NEW\" ]; then bmx_fail \"rspamadm configtest fails after "
                     "the change (exit $BMX_RC): $(printf '%s\\n' \"$BMX_O\" | bmx_norm | bmx_join)\"; fi")
    for argv, expected in tx.probes:
        address = argv[-2] if len(argv) >= 2 else "?"
        steps.append(f"BMX_O=$({shell_join(argv)} </dev/null 2>\"$BMX_T/pe\"); BMX_E=$(bmx_norm <\"$BMX_T/pe\" | bmx_join)")
        if expected:
            steps.append(f"{{ [ \"$BMX_O\" = {q(expected)} ] && [ -z \"$BMX_E\" ]; }} || bmx_fail \"postmap probe: "
                         f"{_dq(address)} should answer {_dq(expected)}, got '$BMX_O' $BMX_E\"")
        else:
            steps.append(f"{{ [ -z \"$BMX_O\" ] && [ -z \"$BMX_E\" ]; }} || bmx_fail \"postmap probe: {_dq(address)} "
                         "(outside every relay network) should get no answer, got '$BMX_O' $BMX_E\"")

    # 5. Reload; the copies go once the new files are in force.
    for argv in tx.reloads:
        # The new files are validated and stay: the copies aside are of no use any more.
        steps.append(f"BMX_O=$({shell_join(argv)} </dev/null 2>&1) || {{ bmx_cleanup; rm -rf \"$BMX_T\"; bmx_say \"the new files passed "
                     f"validation and are in place, but {_dq(shell_join(argv))} failed: $(printf '%s\\n' \"$BMX_O\" | bmx_norm | bmx_join); "
                     "the running service may still have the old configuration: fix it, reload it, then re-run\"; exit 1; }")
    steps.append("bmx_cleanup")
    steps.append("rm -rf \"$BMX_T\"")
    restore += ["  :", "}"]
    cleanup += ["  :", "}"]
    fail = ("bmx_fail() { bmx_restore; rm -rf \"$BMX_T\"; "
            f"bmx_say \"$1; previous files restored byte for byte ({_dq(names)}), nothing reloaded; "
            "fix the cause, review with --dry, then re-run\"; exit 1; }")
    return "\n".join(head + restore + cleanup + [fail] + steps) + "\n"


def _dq(text: str) -> str:
    """Text safe inside a double-quoted shell string."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# --- diffs --------------------------------------------------------------------


def unified_diff(path: str, old: str | None, new: str | None) -> list[str]:
    """A unified diff of one file (``/dev/null`` for a file created or removed)."""
    old_lines = (old or "").splitlines(keepends=True)
    new_lines = (new or "").splitlines(keepends=True)
    lines = difflib.unified_diff(old_lines, new_lines, fromfile=path if old is not None else "/dev/null",
                                 tofile=path if new is not None else "/dev/null", n=2)
    return [line.rstrip("\r\n") for line in lines]


# --- stage 4 probes -------------------------------------------------------------

# Runs on the mail host (python3): PROXY v2 header claiming SOURCE, then EHLO before
# the greeting, MAIL, RCPT, QUIT. Prints the RCPT reply. Whitelisted: postscreen
# hands over to smtpd at once and RCPT answers 250; otherwise the pregreet test
# fails the session (RCPT 550 5.5.1).
PREGREET_PROBE = r"""
import ipaddress, socket, struct, sys
host, port, source, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
src = ipaddress.ip_address(source)
dst = ipaddress.ip_address("127.0.0.1" if src.version == 4 else "::1")
body = src.packed + dst.packed + struct.pack("!HH", 40000, port)
header = b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11 if src.version == 4 else 0x21, len(body)) + body
sock = socket.create_connection((host.strip("[]"), port), 15)
stream = sock.makefile("rb")
def reply():
    lines = []
    while True:
        line = stream.readline().decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            raise SystemExit("connection closed after: " + " | ".join(lines))
        lines.append(line)
        if line[3:4] != "-":
            return line[:3], " | ".join(lines)
sock.sendall(header + b"EHLO backupmx-probe.invalid\r\n")
code, text = reply()
while code == "220":
    code, text = reply()
sock.sendall(b"MAIL FROM:<>\r\n")
reply()
sock.sendall(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
code, text = reply()
sock.sendall(b"QUIT\r\n")
print(code, text)
""".strip()


def probe_message(domain: str) -> str:
    sender = f"postmaster@{domain}"
    return (f"From: <{sender}>\r\nTo: <{sender}>\r\nSubject: backupmx stage 4 probe\r\n"
            f"Message-ID: <backupmx-probe@{domain}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nbackupmx checks the relay exemption.\r\n")


def rspamc_argv(mailhost: MailHost, ip: str, mail_from: str) -> list[str]:
    return mailhost.in_target(["rspamc", "-h", mailhost.rspamd_controller, "-t", "20", "-j", "-i", ip,
                               "-F", mail_from, "--helo", "backupmx-probe.invalid", "symbols"], stdin=True)


def parse_rspamc_symbols(text: str) -> list[str] | None:
    """Symbol names from ``rspamc -j symbols`` (None when it is not a scan result)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    symbols = data.get("symbols")
    if symbols is None and isinstance(data.get("default"), dict):  # older rspamc: per-metric
        symbols = {key: value for key, value in data["default"].items() if isinstance(value, dict)}
    if not isinstance(symbols, dict):
        return None
    return sorted(symbols)


def exempted_symbols(symbols: Iterable[str]) -> list[str]:
    """The SPF and DMARC verdicts the exemption removes."""
    return sorted(s for s in symbols if s.startswith("R_SPF_") or s.startswith("DMARC_"))


def parse_rspamc_action(text: str) -> str | None:
    """The action from ``rspamc -j symbols`` (None when it is not a scan result)."""
    start = text.find("{")
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    action = data.get("action")
    if action is None and isinstance(data.get("default"), dict):  # older rspamc: per-metric
        action = data["default"].get("action")
    return action if isinstance(action, str) else None


# --- stage 4: what each relay scoring mode must show ------------------------------


def scan_message(mailhost: MailHost, domain: str, outside_ip: str) -> str:
    """The probe message stage 4 scans: external_relay puts it behind a relay's Received header."""
    message = probe_message(domain)
    if mailhost.relay_scoring != EXTERNAL_RELAY:
        return message
    # The layout Postfix writes (and the sandbox relay): "from HELO (rDNS [IP])".
    return (f"Received: from backupmx-probe.invalid (unknown [{outside_ip}])\r\n"
            f"\tby relay.backupmx-probe.invalid with ESMTP id BACKUPMXPROBE\r\n"
            f"\tfor <postmaster@{domain}>; Thu, 01 Jan 2026 00:00:00 +0000\r\n") + message


def settings_rule_in_dump(mailhost: MailHost, rules: Mapping[str, Any], cidrs: Sequence[str]) -> tuple[bool, str]:
    """Does ``rspamadm configdump settings`` show our rule of this mode, as rendered?"""
    name = RSPAMD_CAP_RULE if mailhost.relay_scoring == EXTERNAL_RELAY else RSPAMD_RULE
    rule = rules.get(name)
    ok = isinstance(rule, dict) and sorted(rule.get("ip", [])) == sorted(cidrs)
    apply = (rule.get("apply") or {}) if isinstance(rule, dict) else {}
    if mailhost.relay_scoring == EXTERNAL_RELAY:
        # configdump shows the disabled action as null.
        actions = apply.get("actions") or {}
        ok = ok and "reject" in actions and actions["reject"] is None
    else:
        ok = ok and sorted(apply.get("groups_disabled", [])) == sorted(EXEMPT_GROUPS)
    return ok, name


def judge_scans(mailhost: MailHost, relay_ip: str, outside_ip: str, relay: Mapping[str, Any],
                outside: Mapping[str, Any]) -> tuple[bool, str]:
    """Stage 4's rspamc check for the host's relay scoring mode: (live, evidence)."""
    if mailhost.relay_scoring == EXTERNAL_RELAY:
        return _judge_external_relay(relay_ip, outside_ip, relay, outside)
    leaked = exempted_symbols(relay["symbols"])
    spf_outside = [s for s in outside["symbols"] if s.startswith("R_SPF_")]
    ok = not leaked and bool(spf_outside)
    return ok, (f"relay {relay_ip} no R_SPF_*/DMARC_*, outside {outside_ip} {', '.join(spf_outside)}"
                if ok else f"relay {relay_ip}: {', '.join(leaked) or 'none'}; outside {outside_ip}: "
                f"{', '.join(spf_outside) or 'no R_SPF_* (SPF not checked at all?)'}")


def _judge_external_relay(relay_ip: str, outside_ip: str, relay: Mapping[str, Any],
                          outside: Mapping[str, Any]) -> tuple[bool, str]:
    """Both scans carry a Received header naming ``outside_ip``.

    From the relay address: our rule fired (the module took the address from the
    header), SPF was scored, with the verdict ``outside_ip`` gets when it connects
    directly (so against the original address), and the action is not reject.
    From ``outside_ip`` itself: our rule did not fire (the header is not trusted).
    """
    spf_relay = sorted(s for s in relay["symbols"] if s.startswith("R_SPF_"))
    spf_outside = sorted(s for s in outside["symbols"] if s.startswith("R_SPF_"))
    action = relay.get("action")
    problems = []
    if RSPAMD_RELAY_SYMBOL not in relay["symbols"]:
        problems.append(f"relay {relay_ip}: no {RSPAMD_RELAY_SYMBOL} (external_relay did not take the Received header)")
    if not spf_relay or spf_relay != spf_outside:
        problems.append(f"relay {relay_ip}: SPF {', '.join(spf_relay) or 'not scored'}, "
                        f"but {outside_ip} directly: {', '.join(spf_outside) or 'not scored'}")
    if action in (None, "reject"):
        problems.append(f"relay {relay_ip}: action {action or 'unknown'} (must be capped at add header)")
    if RSPAMD_RELAY_SYMBOL in outside["symbols"]:
        problems.append(f"outside {outside_ip}: {RSPAMD_RELAY_SYMBOL} fired for a client outside the relay networks")
    if problems:
        return False, "; ".join(problems)
    return True, (f"relay {relay_ip} scored as its Received header's {outside_ip}: {RSPAMD_RELAY_SYMBOL}, "
                  f"{', '.join(spf_relay)}, action {action}; outside {outside_ip} not rewritten")


@dataclass
class Proof:
    live: bool
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))
        if not ok:
            self.live = False

    def evidence(self) -> str:
        failed = [f"{name}: {detail}" for name, ok, detail in self.checks if not ok]
        if failed:
            return "NOT live: " + "; ".join(failed)
        return "live: " + "; ".join(f"{name}: {detail}" for name, ok, detail in self.checks)
