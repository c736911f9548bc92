"""The PROXY-v2 listener of a mail host: the ``-o`` overrides stage 3 wants on it (and takes away),
master.cf with them, and the message when the inventory names a listener the host does not have.
"""

from __future__ import annotations

from typing import Mapping

from backupmx.mailhost.layers import (
    RELAY_SMTPD_SERVICE,
    RELAY_SMTPD_TYPE,
    SERVICE_NAME_OPTION,
    RelayLayers,
    relay_layers,
)
from backupmx.mailhost.model import ACCESS_LIST, CACHE_MAP, POSTFIX_DEFAULT_ACCESS_LIST, MailHost
from backupmx.postfix.maincf import postfix_list
from backupmx.postfix.mastercf import Listener, remove_service_options, set_service_options

RELAY_SMTPD_KEY = f"{RELAY_SMTPD_SERVICE}/{RELAY_SMTPD_TYPE}"


def wanted_listener_options(mailhost: MailHost, services: Mapping[str, Listener],
                            main: Mapping[str, str]) -> dict[str, str | None]:
    """The listener's ``-o`` overrides we want: our CIDR table in its access list, its own cache,
    and, when the primary has layers that refuse relayed mail, the hand-off to our relay
    smtpd service (None: take a hand-off of ours away).

    The access list keeps whatever the listener (or main.cf) already lists and adds
    ``cidr:<file>``: a site's own entries (e.g. a blocklist) still come first. The
    cache map is set only when the listener would share another postscreen service's
    file; a distinct one of its own is left alone, and so is a cache the site turned
    off (an empty ``postscreen_cache_map``: nothing to share).
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
    cache = main_cache if own_cache is None else own_cache
    if cache and (own_cache is None or own_cache == mailhost.cache_map() or own_cache in others):
        options[CACHE_MAP] = mailhost.cache_map()
    relay_service, _ = wanted_relay_service(mailhost, services, main)
    if relay_service is not None:
        options[SERVICE_NAME_OPTION] = RELAY_SMTPD_SERVICE
    elif listener.params.get(SERVICE_NAME_OPTION) == RELAY_SMTPD_SERVICE:
        options[SERVICE_NAME_OPTION] = None
    return options


def wanted_relay_service(mailhost: MailHost, services: Mapping[str, Listener],
                         main: Mapping[str, str]) -> tuple[Listener | None, RelayLayers]:
    """The smtpd service the PROXY-v2 listener hands its clients to, with the relay exceptions.

    A copy of the service the listener hands over to now (``smtpd/pass`` unless it
    names another), with main.cf's restriction lists and anvil exceptions as
    ``backupmx.mailhost.layers`` changes them. None when main.cf has none of those
    layers (or they cannot be handled: ``RelayLayers.problems`` says why).
    """
    layers = relay_layers(main, mailhost.cidr_path)
    if not layers.needed or layers.problems:
        return None, layers
    listener = services[mailhost.service_key]
    handoff = listener.params.get(SERVICE_NAME_OPTION, main.get(SERVICE_NAME_OPTION, "smtpd"))
    if handoff == RELAY_SMTPD_SERVICE:
        handoff = main.get(SERVICE_NAME_OPTION, "smtpd")
    smtpd = services.get(f"{handoff}/pass")
    if smtpd is None:
        layers.problems.append(f"master.cf has no {handoff}/pass service for postscreen to hand clients to; "
                               "postscreen needs it (see Postfix's POSTSCREEN_README)")
        return None, layers
    params = dict(smtpd.params)
    params.update(layers.service_options)
    return Listener(RELAY_SMTPD_SERVICE, RELAY_SMTPD_TYPE, smtpd.command, params, smtpd.columns, smtpd.args), layers


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




def listener_master_cf(mailhost: MailHost, master_cf: str, listener: Listener, options: Mapping[str, str | None],
                       present: bool) -> str:
    """Native: master.cf with the listener's overrides as wanted (None: an override of ours taken away)."""
    service, service_type = mailhost.proxy_service, mailhost.proxy_service_type
    for name, value in options.items():
        if value is not None and (present or value):
            master_cf = set_service_options(master_cf, service, service_type, {name: value})
        elif value is None and name in listener.params:
            master_cf = remove_service_options(master_cf, service, service_type, {name: listener.params[name]})
    return master_cf


def options_without_whitelist(mailhost: MailHost, listener: Listener, main: Mapping[str, str]) -> dict[str, str | None]:
    """present=False: the access list without our table, no cache map of ours, no hand-off to our
    relay service; None drops the override."""
    ours = f"cidr:{mailhost.cidr_path}"
    options: dict[str, str | None] = {}
    current = listener.params.get(ACCESS_LIST)
    if current is not None:
        entries = [entry for entry in postfix_list(current) if entry != ours]
        base = postfix_list(main.get(ACCESS_LIST, POSTFIX_DEFAULT_ACCESS_LIST))
        options[ACCESS_LIST] = None if entries == base else ",".join(entries)
    if listener.params.get(CACHE_MAP) == mailhost.cache_map():  # named after the listener: only we set it
        options[CACHE_MAP] = None
    if listener.params.get(SERVICE_NAME_OPTION) == RELAY_SMTPD_SERVICE:
        options[SERVICE_NAME_OPTION] = None
    return options


def handoff(listener: Listener, main: Mapping[str, str]) -> str:
    """The smtpd service the listener hands its clients to (the one our relay service copies)."""
    name = listener.params.get(SERVICE_NAME_OPTION, main.get(SERVICE_NAME_OPTION, "smtpd"))
    return f"{main.get(SERVICE_NAME_OPTION, 'smtpd') if name == RELAY_SMTPD_SERVICE else name}/pass"
