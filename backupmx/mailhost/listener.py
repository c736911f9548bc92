"""The PROXY-v2 listener of a mail host: the ``-o`` overrides stage 3 wants on it, and the
message when the inventory names a listener the host does not have.
"""

from __future__ import annotations

from typing import Mapping

from backupmx.mailhost.model import ACCESS_LIST, CACHE_MAP, POSTFIX_DEFAULT_ACCESS_LIST, MailHost
from backupmx.postfix.maincf import postfix_list
from backupmx.postfix.mastercf import Listener


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


