"""The fake Roller Network's ACC API: ``m``/``a`` with ``d`` (JSON) dispatched to the account's state.

Roller Network does not publish the mail module's names or its response format, so the
shape here is an *assumption*, written down in ``docs/provider-api.md``. Part of the fake
Roller Network (``fake_rollernet.py``).
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

from backupmx_sandbox.rollernet_state import (
    MODES,
    USER_TABLE_DEFAULTS,
    AccError,
    domain_view,
    usertable_view,
)

if TYPE_CHECKING:  # the world that holds these parts; imported for its type only
    from backupmx_sandbox.fake_rollernet import Rollernet

READ, WRITE = "mail.read", "mail.write"


class AccApi:
    """Dispatch of ``m``/``a`` with ``d`` (JSON) to the fake account's state."""

    def __init__(self, app: "Rollernet", user: str, keys: list[dict]):
        self.app = app
        self.user = user
        self.keys = keys
        self.actions = {
            ("mail", "domain_list"): (READ, self.domain_list),
            ("mail", "domain_get"): (READ, self.domain_get),
            ("mail", "domain_set"): (WRITE, self.domain_set),
            ("mail", "hold_set"): (WRITE, self.hold_set),
            ("mail", "usertable_get"): (READ, self.usertable_get),
            ("mail", "usertable_set_default"): (WRITE, self.usertable_set_default),
            ("mail", "relay_addresses"): (READ, self.relay_addresses),
            ("mail", "queue_list"): (READ, self.queue_list),
            ("mail", "bounce_list"): (READ, self.bounce_list),
            ("mail", "queue_flush"): (WRITE, self.queue_flush),
        }

    def key_name(self, user: str | None, key: str | None) -> str | None:
        """Which configured key this is (its name, never its value); None if none matches."""
        if not user or not key or not hmac.compare_digest(user.encode(), self.user.encode()):
            return None
        for entry in self.keys:
            if hmac.compare_digest(key.encode(), entry["key"].encode()):
                return entry["name"]
        return None

    def handle(self, params: dict, key_name: str | None) -> dict:
        if key_name is None:
            raise AccError("auth_failed", "invalid user or API key", status=403)
        module, action = params.get("m", ""), params.get("a", "")
        if module != "mail":
            raise AccError("unknown_module", f"unknown module {module!r}")
        if (module, action) not in self.actions:
            raise AccError("unknown_action", f"unknown action {action!r} in module {module!r}")
        permission, handler = self.actions[(module, action)]
        granted = next(entry["permissions"] for entry in self.keys if entry["name"] == key_name)
        if permission not in granted:
            raise AccError("permission_denied", f"this API key has no {permission} permission", status=403)
        return handler(parse_data(params.get("d")))

    # -- actions -------------------------------------------------------------

    def _domain(self, data: dict) -> tuple[str, dict]:
        name = data.get("domain")
        if not isinstance(name, str) or not name:
            raise AccError("bad_request", "d.domain is required")
        record = self.app.store.domain(name)
        if record is None:
            raise AccError("domain_not_found", f"domain {name.lower()} is not in this account")
        return name.lower(), record

    def domain_list(self, data: dict):
        store = self.app.store
        return [domain_view(name, store.domain(name)) for name in store.domain_names()]

    def domain_get(self, data: dict):
        return domain_view(*self._domain(data))

    def domain_set(self, data: dict):
        name, _ = self._domain(data)
        changes = only_fields(data, {"enabled": bool, "mode": str}, required_any=True)
        if "mode" in changes and changes["mode"] not in MODES:
            raise AccError("invalid_value", f"mode must be one of {', '.join(MODES)}")
        return domain_view(name, self.app.store.update_domain(name, changes))

    def hold_set(self, data: dict):
        name, before = self._domain(data)
        changes = only_fields(data, {"hold": bool}, required=("hold",))
        after = self.app.store.update_domain(name, changes)
        if before["hold"] and not after["hold"]:
            self.app.release(name)
        return domain_view(name, after)

    def usertable_get(self, data: dict):
        return usertable_view(*self._domain(data))

    def usertable_set_default(self, data: dict):
        name, _ = self._domain(data)
        changes = only_fields(data, {"default": str}, required=("default",))
        if changes["default"] not in USER_TABLE_DEFAULTS:
            raise AccError("invalid_value", f"default must be one of {', '.join(USER_TABLE_DEFAULTS)}")
        record = self.app.store.update_domain(name, {"user_table_default": changes["default"]})
        return usertable_view(name, record)

    def relay_addresses(self, data: dict):
        return {"cidrs": self.app.store.relay_cidrs(), "hosts": [relay["host"] for relay in self.app.relays]}

    def queue_list(self, data: dict):
        if data.get("domain") is None:
            return self.app.queue_listing(None)
        name, _ = self._domain(data)
        return self.app.queue_listing(name)

    def bounce_list(self, data: dict):
        name, _ = self._domain(data)
        return self.app.bounce_listing(name)

    def queue_flush(self, data: dict):
        name, _ = self._domain(data)
        return {"domain": name, "scheduled": self.app.flush(name)}


def parse_data(raw: str | None) -> dict:
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise AccError("bad_request", "d is not valid JSON") from None
    if not isinstance(data, dict):
        raise AccError("bad_request", "d must be a JSON object")
    return data


def only_fields(data: dict, allowed: dict[str, type], required: tuple = (), required_any: bool = False) -> dict:
    """The settable fields of ``data`` (besides ``domain``), type-checked; strict, to catch client bugs."""
    unknown = set(data) - set(allowed) - {"domain"}
    if unknown:
        raise AccError("bad_request", f"unknown field(s) in d: {', '.join(sorted(unknown))}")
    changes = {name: data[name] for name in allowed if name in data}
    for name, kind in allowed.items():
        if name in changes and not isinstance(changes[name], kind):
            raise AccError("bad_request", f"d.{name} must be {kind.__name__}")
    missing = [name for name in required if name not in changes]
    if missing or (required_any and not changes):
        wanted = ", ".join(missing or sorted(allowed))
        raise AccError("bad_request", f"d needs {wanted}")
    return changes
