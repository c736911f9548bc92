"""What the tests switch on the docker-mailserver primary: its layers and a read-only config dir.

The same layers as the native primary (``backupmx_sandbox.layers``), each switched
where an operator of docker-mailserver switches it: DMS's own environment knobs
where it has one (``ENABLE_POLICYD_SPF``, ``POSTFIX_REJECT_UNKNOWN_CLIENT_HOSTNAME``),
else a line of ``sandbox-layers.sh``, which the sandbox's ``user-patches.sh`` runs at
start. Either way DMS applies them only to a new container: a switch takes effect at
the next ``recreate`` (``backupmx_sandbox.layers`` does that when the world runs).

The defaults are the seed's production: policyd-spf and reject_unknown_client_hostname
on, the others off. ``read_only`` mounts the config dir read-only, as a Kubernetes
ConfigMap is.

The state is kept in ``<sandbox>/dms/switches.json``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from backupmx_sandbox import seed, unknown_policy
from backupmx_sandbox.hostfiles import render_template
from backupmx_sandbox.world import LOOPBACK, Sandbox, write_private_json

ANCHOR = "reject_unauth_destination"
POLICYD_SPF = "check_policy_service unix:private/policyd-spf"
ENV_KNOBS = {"policyd_spf": "ENABLE_POLICYD_SPF", "unknown_client_hostname": "POSTFIX_REJECT_UNKNOWN_CLIENT_HOSTNAME"}
DEFAULTS = {"policyd_spf": True, "unknown_client_hostname": True, "rbl_client": False, "tight_anvil": False,
            "unknown_policy": False}
TIGHT_ANVIL = {"smtpd_client_connection_count_limit": "2", "smtpd_client_connection_rate_limit": "10",
               "smtpd_client_message_rate_limit": "10"}
NAMES = list(DEFAULTS)
TEMPLATES = Path(__file__).parent / "templates" / "dms"


def _state_file(sandbox: Sandbox):
    return sandbox.dir("dms") / "switches.json"


def state(sandbox: Sandbox) -> dict:
    path = _state_file(sandbox)
    saved = json.loads(path.read_text()) if path.exists() else {}
    return {"layers": {**DEFAULTS, **saved.get("layers", {})}, "read_only": bool(saved.get("read_only", False))}


def save(sandbox: Sandbox, layers: dict[str, bool] | None = None, read_only: bool | None = None) -> bool:
    """Record new switch positions; True if anything changed (the container must be recreated)."""
    before = state(sandbox)
    after = {"layers": {**before["layers"], **(layers or {})},
             "read_only": before["read_only"] if read_only is None else read_only}
    unknown = set(after["layers"]) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"no layer {', '.join(sorted(unknown))}; layers: {', '.join(NAMES)}")
    write_private_json(_state_file(sandbox), after)
    return after != before


def read_only(sandbox: Sandbox) -> bool:
    return state(sandbox)["read_only"]


def environment(sandbox: Sandbox) -> dict[str, str]:
    """DMS's own knobs for the layers it has one for."""
    on = state(sandbox)["layers"]
    return {variable: "1" if on[name] else "0" for name, variable in ENV_KNOBS.items()}


def layers_script(sandbox: Sandbox) -> str:
    """``sandbox-layers.sh``: the layers without a DMS knob, as ``postconf`` edits at start."""
    on = state(sandbox)["layers"]
    lines = []
    if on["unknown_policy"]:
        policy = f"check_policy_service inet:{LOOPBACK}:{sandbox.port(unknown_policy.PORT_NAME)}"
        lines.append(f"insert_after smtpd_recipient_restrictions {shlex.quote(policy)} {ANCHOR}")
    if on["rbl_client"]:
        rbl = f"reject_rbl_client {seed.DNSBL_ZONE}"
        lines.append(f"insert_after smtpd_recipient_restrictions {shlex.quote(rbl)} {ANCHOR} {shlex.quote(POLICYD_SPF)}")
    if on["tight_anvil"]:
        lines.append("postconf -e " + " ".join(shlex.quote(f"{key}={value}") for key, value in TIGHT_ANVIL.items()))
    return render_template("sandbox-layers.sh.j2", TEMPLATES, lines=lines)
