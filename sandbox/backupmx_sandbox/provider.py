"""The sandbox's Roller Network: a fake ACC API and two store-and-forward SMTP relays.

The fake itself is ``fake_rollernet.py`` (one process); this part writes its
config, issues the relays' certificates from the sandbox CA, and tells the world
where everything is. The relays deliver to the mail host's PROXY-v2 listener,
found by the port name ``mailhost.proxy`` that the mail host part also uses.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from backupmx_sandbox import seed
from backupmx_sandbox.world import LOOPBACK, Sandbox, Service, write_private_json, port_in_use

SERVICE_NAMES = ["rollernet"]

RELAY_PORT_NAMES = {"mail.rollernet.us": "relay1", "mail2.rollernet.us": "relay2"}
MAILHOST_PROXY_PORT_NAME = "mailhost.proxy"

# The real relays retry from 15 min doubling to a week and keep mail 3 weeks;
# the sandbox retries 1 s doubling to 8 s and gives up after an hour.
RETRY_SCHEDULE = [1, 2, 4, 8]
MAX_QUEUE_AGE = 3600
DELIVERY_TIMEOUT = 30


def acc_base(sandbox: Sandbox) -> str:
    return f"http://{LOOPBACK}:{sandbox.port('acc')}"


def seed_state() -> dict:
    """What the account looks like after signup and the seed's configuration."""
    return {
        "domains": {
            seed.DOMAIN: {
                "mode": "secondary_mx",
                "enabled": True,
                "user_table_default": "allow_any",
                "hold": False,
                "users": [],
            }
        },
        "relay_cidrs": list(seed.RELAY_CIDRS),
    }


def relays(sandbox: Sandbox) -> list[dict]:
    """Each relay's listener, certificate and the public address it claims to send from."""
    found = []
    for host in seed.BACKUP_MX:
        cert, key = sandbox.ca.issue(host, [host])
        found.append({
            "host": host,
            "listen": LOOPBACK,
            "port": sandbox.port(RELAY_PORT_NAMES[host]),
            "cert": str(cert),
            "key": str(key),
            "source": seed.RELAY_SOURCE[host],
        })
    return found


def write_config(sandbox: Sandbox) -> str:
    data_dir = sandbox.dir("rollernet", mode=0o700)
    sandbox.dir("rollernet", "queue", mode=0o700)
    config = {
        "data_dir": str(data_dir),
        "default_domain": seed.DOMAIN,
        "acc": {
            "host": LOOPBACK,
            "port": sandbox.port("acc"),
            "user": seed.ACC_USER,
            # Real ACC keys are denied everything until permissions are granted.
            "keys": [
                {"name": "main", "key": sandbox.secret("acc_api_key"), "permissions": ["mail.read", "mail.write"]},
                {"name": "noperm", "key": sandbox.secret("acc_api_key_noperm"), "permissions": []},
            ],
        },
        "relays": relays(sandbox),
        "mailhost": {"host": LOOPBACK, "port": sandbox.port(MAILHOST_PROXY_PORT_NAME)},
        "seed": seed_state(),
        "delivery": {
            "retry_schedule": RETRY_SCHEDULE,
            "max_queue_age": MAX_QUEUE_AGE,
            "timeout": DELIVERY_TIMEOUT,
        },
    }
    path = data_dir / "config.json"
    write_private_json(path, config)  # mode 600: it holds the API keys
    return str(path)


def _admin_healthy(sandbox: Sandbox) -> bool:
    try:
        with urllib.request.urlopen(f"{acc_base(sandbox)}/_sandbox/health", timeout=2) as response:
            return json.loads(response.read()).get("status") == "ok"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def ready(sandbox: Sandbox) -> bool:
    smtp_up = all(port_in_use(sandbox.port(name)) for name in RELAY_PORT_NAMES.values())
    return smtp_up and _admin_healthy(sandbox)


def services(sandbox: Sandbox) -> list[Service]:
    config = write_config(sandbox)
    return [
        Service(
            name="rollernet",
            argv=[sys.executable, "-m", "backupmx_sandbox.fake_rollernet", "--config", config],
            ready=lambda: ready(sandbox),
            ready_timeout=30.0,
        )
    ]


def world(sandbox: Sandbox) -> dict:
    return {
        "acc_api_base": f"{acc_base(sandbox)}/api/api.php",
        "acc_api_key": sandbox.secret("acc_api_key"),
        "acc_api_key_noperm": sandbox.secret("acc_api_key_noperm"),
        "acc_user": seed.ACC_USER,
        "acc_admin": f"{acc_base(sandbox)}/_sandbox",
        "relays": [
            {"host": relay["host"], "smtp": f"{relay['listen']}:{relay['port']}", "source": relay["source"]}
            for relay in relays(sandbox)
        ],
        "relay_cidrs": list(seed.RELAY_CIDRS),
        # What the relays retry on (seconds, sliding), as their config has it: the
        # failover drill's drain wait is sized from it.
        "relay_retry_schedule": list(RETRY_SCHEDULE),
        "ca_cert": str(sandbox.ca.cert_path),
    }
