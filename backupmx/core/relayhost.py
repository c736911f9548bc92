"""The self-hosted relay's ``relayhost`` inventory data, validated (docs/selfhosted-relay.md).

Part of the settings model: with provider ``selfhosted`` the relay hosts' names and
addresses are the run's backup MX hosts and relay CIDRs.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

from backupmx.core.errors import ConfigError
from backupmx.core.validate import IPNetwork, command, host_path, host_port, hostname, known_keys

TLS_POLICY_NAME = "backupmx_relay_tls_policy"
DEFAULT_QUEUE_LIFETIME = "30d"
DEFAULT_BOUNCE_LIFETIME = "1d"
TLS_LEVELS = ("secure", "verify", "encrypt")


_TIME = re.compile(r"^[0-9]{1,5}[smhdw]?$")


_SERVICE = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- the settings model -------------------------------------------------------


@dataclass(frozen=True)
class RelayHost:
    """One relay host's ``relayhost`` inventory data, validated (docs/selfhosted-relay.md)."""

    hostname: str  # its MX name; the HELO name and the STARTTLS certificate's name
    public_addresses: tuple[str, ...]  # where it sends from: the relay CIDRs of the run
    primary: str  # the primary's public SMTP endpoint (host name or IP), no MX lookup
    primary_port: int = 25
    primary_tls: str = "secure"
    primary_tls_match: str = ""  # the name the primary's certificate must carry; "" = primary
    primary_tls_ca: str = ""  # CA file on the relay host; "" = the system's (/etc/ssl/certs)
    queue_lifetime: str = DEFAULT_QUEUE_LIFETIME
    bounce_lifetime: str = DEFAULT_BOUNCE_LIFETIME
    message_size_limit: int | None = None  # bytes, 0 = no limit; None = leave Postfix's as it is
    postfix_config_dir: str = "/etc/postfix"
    postfix_reload: tuple[str, ...] = ()
    listen_service: str = "smtp"  # the master.cf service that takes mail (port 25)
    tls_cert: str = ""  # inbound STARTTLS; "" = leave smtpd_tls_* as they are
    tls_key: str = ""
    dnsbl_sites: tuple[str, ...] = ()
    smtp_probe: str = ""  # "ip:port" the proof connects to on the relay host

    @property
    def relay_cidrs(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(address) for address in self.public_addresses)

    @property
    def tls_match(self) -> str:
        return self.primary_tls_match or self.primary

    @property
    def nexthop(self) -> str:
        """``[primary]:port``: brackets mean no MX lookup, only the primary's own address."""
        return f"[{self.primary}]:{self.primary_port}"

    @property
    def main_cf_path(self) -> str:
        return f"{self.postfix_config_dir}/main.cf"

    @property
    def master_cf_path(self) -> str:
        return f"{self.postfix_config_dir}/master.cf"

    @property
    def tls_policy_path(self) -> str:
        return f"{self.postfix_config_dir}/{TLS_POLICY_NAME}"

    def managed_paths(self) -> list[str]:
        return [self.main_cf_path, self.master_cf_path, self.tls_policy_path]

    @property
    def probe_endpoint(self) -> tuple[str, int]:
        if self.smtp_probe:
            host, _, port = self.smtp_probe.rpartition(":")
            return host.strip("[]"), int(port)
        host, _, port = self.listen_service.rpartition(":")
        return (host.strip("[]") or "127.0.0.1", int(port)) if port.isdigit() else ("127.0.0.1", 25)

    # -- commands ------------------------------------------------------------

    def postconf(self, *args: str) -> list[str]:
        return ["postconf", "-c", self.postfix_config_dir, *args]

    def postqueue(self, *args: str) -> list[str]:
        return ["postqueue", "-c", self.postfix_config_dir, *args]

    def postfix_check(self) -> list[str]:
        """``postfix check`` under ``script``: Postfix prints its warnings only to a terminal."""
        return ["script", "-qec", shlex.join(["postfix", "-c", self.postfix_config_dir, "check"]), "/dev/null"]

    def postfix_reload_argv(self) -> list[str]:
        return list(self.postfix_reload) or ["postfix", "-c", self.postfix_config_dir, "reload"]


RELAYHOST_KEYS = ("bounce_lifetime", "dnsbl_sites", "hostname", "listen_service", "message_size_limit",
                  "postfix_config_dir", "postfix_reload", "primary", "primary_port", "primary_tls", "primary_tls_ca",
                  "primary_tls_match", "public_addresses", "queue_lifetime", "smtp_probe", "tls_cert", "tls_key")


def load_relayhost(data: Any) -> RelayHost:
    """Validate ``host.data.relayhost`` into ``RelayHost``; ``ConfigError`` names the field."""
    if data is None:
        raise ConfigError("relayhost", "missing", "set `relayhost` for every host of the relay group "
                          "(see docs/selfhosted-relay.md)")
    if not isinstance(data, Mapping):
        raise ConfigError("relayhost", f"must be a mapping, got {type(data).__name__}")
    known_keys(data, "relayhost", RELAYHOST_KEYS)
    values: dict[str, Any] = {"hostname": hostname(data.get("hostname"), "relayhost.hostname",
                                                   "its MX name, e.g. relay1.example.org")}
    values["public_addresses"] = _addresses(data.get("public_addresses"))
    values["primary"] = _endpoint_host(data.get("primary"))
    values["primary_port"] = _port(data.get("primary_port", 25), "relayhost.primary_port")
    level = data.get("primary_tls", "secure")
    if level not in TLS_LEVELS:
        raise ConfigError("relayhost.primary_tls", f"{level!r} is not a TLS level that requires TLS",
                          f"use one of {', '.join(TLS_LEVELS)} (secure: encrypted and the certificate verified)")
    values["primary_tls"] = level
    if data.get("primary_tls_match"):
        values["primary_tls_match"] = hostname(data["primary_tls_match"], "relayhost.primary_tls_match",
                                               "the name on the primary's certificate, e.g. mail.example.org")
    for key in ("primary_tls_ca", "postfix_config_dir", "tls_cert", "tls_key"):
        if data.get(key):
            values[key] = host_path(data[key], f"relayhost.{key}")
    if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
        raise ConfigError("relayhost.tls_key" if values.get("tls_cert") else "relayhost.tls_cert", "missing",
                          "set both tls_cert and tls_key (inbound STARTTLS), or neither")
    queue = _lifetime(data.get("queue_lifetime", DEFAULT_QUEUE_LIFETIME), "relayhost.queue_lifetime")
    bounce = _lifetime(data.get("bounce_lifetime", DEFAULT_BOUNCE_LIFETIME), "relayhost.bounce_lifetime")
    if seconds(bounce) > seconds(queue):
        raise ConfigError("relayhost.bounce_lifetime", f"{bounce} is longer than queue_lifetime {queue}",
                          "Postfix caps it anyway; use a short one, e.g. 1d")
    values["queue_lifetime"], values["bounce_lifetime"] = queue, bounce
    if data.get("message_size_limit") is not None:
        values["message_size_limit"] = _size(data["message_size_limit"], "relayhost.message_size_limit")
    if data.get("postfix_reload") is not None:
        values["postfix_reload"] = command(data["postfix_reload"], "relayhost.postfix_reload")
    service = data.get("listen_service", "smtp")
    if not isinstance(service, str) or not _SERVICE.match(service):
        raise ConfigError("relayhost.listen_service", f"{service!r} is not a master.cf service name",
                          "name the port-25 listener as `postconf -M` shows it, e.g. smtp")
    values["listen_service"] = service
    sites = data.get("dnsbl_sites", [])
    if isinstance(sites, str) or not isinstance(sites, (list, tuple)) or not all(
            isinstance(site, str) and re.match(r"^[A-Za-z0-9.-]+(=[0-9.;*]+)?(\*-?[0-9]+)?$", site) for site in sites):
        raise ConfigError("relayhost.dnsbl_sites", f"{sites!r} is not a list of DNSBL zones",
                          "e.g. [\"zen.spamhaus.org*2\"] (postscreen_dnsbl_sites syntax)")
    values["dnsbl_sites"] = tuple(sites)
    probe = data.get("smtp_probe", "")
    values["smtp_probe"] = host_port(probe, "relayhost.smtp_probe") if probe else ""
    return RelayHost(**values)


def _size(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(field_name, f"{value!r} is not a size in bytes",
                          "at least the primary's message_size_limit, e.g. 52428800; 0 = no limit")
    return value


def postfix_size(value: Any) -> int | None:
    """A ``message_size_limit`` as ``postconf`` prints it; None if it is not a number."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None


def refuses_what_the_primary_takes(relay_limit: int, primary_limit: int) -> bool:
    """Whether a relay with ``relay_limit`` would answer 552 to a message the primary accepts (0 = no limit)."""
    if relay_limit == 0:
        return False
    return primary_limit == 0 or relay_limit < primary_limit


def _addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("relayhost.public_addresses", f"must be a non-empty list of IP addresses, got {value!r}",
                          "the addresses the relay sends from (they become the mail host's relay whitelist)")
    found = []
    for index, raw in enumerate(value):
        try:
            address = ipaddress.ip_address(str(raw).strip())
        except ValueError:
            raise ConfigError(f"relayhost.public_addresses[{index}]", f"{raw!r} is not an IP address",
                              "one address per entry, no prefix") from None
        if str(address) in found:
            raise ConfigError(f"relayhost.public_addresses[{index}]", f"{raw!r} is listed twice")
        found.append(str(address))
    return tuple(found)


def _endpoint_host(value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            pass
    return hostname(value, "relayhost.primary", "the primary's public SMTP endpoint (a host name or IP address), "
                    "e.g. mail.example.org")


def _port(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(field_name, f"{value!r} is not a TCP port", "e.g. 25, or 2525 where a cloud VM cannot send on 25")
    return value


def _lifetime(value: Any, field_name: str) -> str:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _TIME.match(text) or seconds(text) <= 0:
        raise ConfigError(field_name, f"{value!r} is not a Postfix time", "a number with s, m, h, d or w, e.g. 30d")
    return text


def seconds(value: str) -> int:
    """A Postfix time value (``30d``; a bare number is days for the queue lifetimes) in seconds."""
    value = value.strip()
    unit = value[-1] if value[-1:].isalpha() else "d"
    return int(value.rstrip("smhdw")) * _UNIT_SECONDS[unit]



