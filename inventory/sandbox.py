"""The sandbox world on loopback, as written by `backupmx-sandbox up` (.sandbox/world.json).

Every deploy runs against it exactly as against production.
"""

from backupmx_sandbox.world import load_world

_world = load_world()

_settings = {
    "domains": [
        {
            "name": _world["zone"],
            "primary_mx": [{"host": _world["primary_mx"]["host"], "priority": _world["primary_mx"]["priority"]}],
        },
    ],
    "backup_mx": {
        "provider": "rollernet",
        "hosts": [relay["host"] for relay in _world["relays"]],
        "priority": _world["backup_priority"],
        # Gate G3 connects to the sandbox relays on loopback and trusts the sandbox CA;
        # the certificates are still checked against the relays' names.
        "smtp_endpoints": {relay["host"]: relay["smtp"] for relay in _world["relays"]},
        "tls_ca_bundle": _world["ca_cert"],
    },
    "relay_cidrs": _world["relay_cidrs"],
    "vault": {
        "addr": _world["vault_addr"],
        "secret_path": _world["vault_secret_path"],
        "token_file": _world["vault_token_file"],
    },
    "cloudflare": {"api_base": _world["cloudflare_api_base"], "record_quota": _world["record_quota"]},
    "dns_servers": [_world["dns"]],
    # Run locks and the change log (docs/reliability.md) stay inside the sandbox.
    "state_dir": _world["root"] + "/state",
    # No budget (docs/budget.md): the fake relays count nothing, and the test suite runs
    # more drills and canaries in a day than Roller Network's free tier allows in a week.
    # tests/cli/test_budget.py gives the free tier back with --data provider=...
    "provider": {"name": "rollernet", "backend": "api", "api_base": _world["acc_api_base"],
                 "user": _world["acc_user"], "budget": None},
    # Operator-confirmed facts (docs/gates.md). The fake ACC defers over-limit mail
    # by construction; no API can say so, hence the ledger.
    "gate_ledger": {
        "overage": {"value": "4xx", "date": "2026-07-04", "evidence": "sandbox fake ACC"},
    },
}

# The providers this sandbox can run with; `--data provider=<name>` picks one
# (backupmx.core.provider_choice.select_provider, docs/configuration.md). Without it the
# `provider` profile above is used: the Roller Network fake, as always.
_providers = {
    "rollernet": {key: _settings[key] for key in ("backup_mx", "relay_cidrs", "provider", "gate_ledger")},
}
_relay = _world.get("selfhosted")
if _relay:
    _providers["selfhosted"] = {
        # The relay host is the only backup MX; its relay CIDRs are derived from its
        # relayhost.public_addresses. G3 connects to its SMTP port on loopback.
        "backup_mx": {
            "provider": "selfhosted",
            "hosts": [_relay["host"]],
            "priority": _world["backup_priority"],
            "smtp_endpoints": {_relay["host"]: _relay["smtp"]},
            "tls_ca_bundle": _relay.get("ca_cert", _world["ca_cert"]),
        },
        "provider": {"name": "selfhosted"},
    }
_settings["providers"] = _providers


def _over_ssh(ssh: dict) -> dict:
    """pyinfra's connection data for a sandbox sshd (its own host key, checked)."""
    return {
        "ssh_hostname": ssh["host"],
        "ssh_port": ssh["port"],
        "ssh_user": ssh["user"],
        "ssh_key": ssh["key"],
        "ssh_known_hosts_file": ssh["known_hosts"],
        "ssh_strict_host_key_checking": "yes",
    }


mailhosts = [
    (
        "sandbox-mailhost",
        {
            **_settings,
            **_over_ssh(_world["ssh"]),
            # Stage 4's relayed envelope comes from the world's test sender, whose SPF
            # ends in -all without the relays (the default names a real domain the
            # sandbox DNS does not serve).
            "mailhost": {"proof_sender": f"postmaster@{_world['sender_domain']}", **_world["mailhost"]},
            # The failover drill (deploys/failover_test.py, docs/failover-drill.md):
            # stop/start only the sandbox Postfix, its Maildir, the test sender.
            "failover": {
                **_world.get("failover", {}),
                "sender_domain": _world["sender_domain"],
                "dkim_key": _world["dkim_key"],
                "dkim_selector": _world["dkim_selector"],
                "probes": 3,
                "window_seconds": 20,
                "drain_seconds": 30,
            },
            # The weekly canary (deploys/canary.py, docs/canary.md): sent from the mail
            # host to each relay's loopback endpoint, read back from the same Maildir
            # (as the mail host's commands see it: in the container for docker-mailserver).
            "canary": {
                "maildir": _world["failover"]["maildir"],
                "sender_domain": _world["sender_domain"],
                "dkim_key": _world["dkim_key"],
                "dkim_selector": _world["dkim_selector"],
                "wait_seconds": 20,
                "settle_seconds": 3,
                "poll_seconds": 0.25,
                "metrics_file": _world["root"] + "/monitoring/textfile/backupmx_canary.prom",
            },
        },
    ),
]

# The control machine: Cloudflare, DNS checks and the provider API are driven from here.
controller = [("@local", _settings)]

# Monitoring (seed change 4): the blackbox modules, alert rules and scrape jobs go to
# a directory of the sandbox, over the mail host's SSH endpoint; the runbook and the
# architecture page are rendered on the control machine (deploys/monitoring.py).
monitoring = [
    (
        "sandbox-monitoring",
        {
            **_settings,
            **_over_ssh(_world["ssh"]),
            "monitoring": {
                "dir": _world["root"] + "/monitoring",
                "blackbox_check": True,
                "runbook": _world["root"] + "/docs/runbook.md",
                "architecture": _world["root"] + "/docs/architecture.md",
            },
        },
    ),
]

# Provider selfhosted's relay host (a second sshd with its own Postfix, behind
# which a haproxy speaks PROXY v2 to the mail host): configured by
# deploys/backupmx.py only with --data provider=selfhosted; otherwise untouched.
if _relay:
    relay = [("sandbox-relay", {**_settings, **_over_ssh(_relay["ssh"]), "relayhost": _relay["relayhost"]})]
