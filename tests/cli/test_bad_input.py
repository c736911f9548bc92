"""Bad input catalogue: inventory data and CLI ``--data``, one line per case.

Each case runs the pyinfra CLI against the sandbox inventory with ``--data``
overriding one key (``--data`` beats inventory data, so this is inventory data as
the deploy sees it). Every case must end in exactly one ``pyinfra error`` line that
names the field, exit non-zero, print no traceback, and contact nothing: the
fakes' request logs stay empty and no lock or audit line is written.

The cases run four at a time in one module fixture, from one process that imported
pyinfra's CLI once and forks a child per case (``support.cli_batch``: each child calls the
CLI's ``main()`` as the ``pyinfra`` script does, the project's code loaded afresh);
the parametrized tests then check one result each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.providers import (
    acc_requests,
    admin,
    clear_cloudflare_requests,
    cloudflare_admin,
    cloudflare_requests,
    output,
    pyinfra,
    pyinfra_argv,
    sandbox_data,
)
from support.cli_batch import run_batch

BACKUPMX = "deploys/backupmx.py"
ROLLBACK = "deploys/rollback.py"
MAINTENANCE = "deploys/maintenance.py"
CANARY = "deploys/canary.py"


def _cases(data: dict) -> list[tuple[str, str, list[str], str]]:
    """(id, deploy, --data assignments, field the error line must name)."""
    dom, bmx, vault, prov = data["domains"][0], data["backup_mx"], data["vault"], data["provider"]

    def d(key, value):
        return f"{key}={json.dumps(value)}"

    def domain(**changes):
        return d("domains", [{**dom, **changes}])

    def primary(host="mail.viktorbarzin.me", priority=1):
        return domain(primary_mx=[{"host": host, "priority": priority}])

    def backup(**changes):
        return d("backup_mx", {**bmx, **changes})

    return [
        ("idn-domain", BACKUPMX, [domain(name="bücher.example", zone="bücher.example")], "domains[0].name"),
        ("trailing-dot-domain", BACKUPMX, [domain(name="viktorbarzin.me.")], "domains[0].name"),
        ("trailing-dot-primary", BACKUPMX, [primary(host="mail.viktorbarzin.me.")], "domains[0].primary_mx[0].host"),
        ("uppercase-primary", BACKUPMX, [primary(host="Mail.Viktorbarzin.me")], "domains[0].primary_mx[0].host"),
        ("uppercase-backup", BACKUPMX, [backup(hosts=["MAIL.rollernet.us"], smtp_endpoints={})],
         "backup_mx.hosts[0]"),
        ("ip-as-primary", BACKUPMX, [primary(host="192.0.2.1")], "domains[0].primary_mx[0].host"),
        ("domain-outside-zone", BACKUPMX, [domain(zone="example.org")], "domains[0].zone"),
        ("duplicate-domains", BACKUPMX, [d("domains", [dom, dom])], "domains"),
        ("empty-domains", BACKUPMX, [d("domains", [])], "domains"),
        ("domains-not-a-list", BACKUPMX, ["domains=viktorbarzin.me"], "domains"),
        ("backup-equals-primary", BACKUPMX, [backup(hosts=["mail.viktorbarzin.me"], smtp_endpoints={})],
         "domains[0].primary_mx"),
        ("backup-host-twice", BACKUPMX,
         [backup(hosts=["mail.rollernet.us", "mail.rollernet.us"], smtp_endpoints={})], "backup_mx.hosts"),
        ("backup-priority-negative", BACKUPMX, [backup(priority=-1)], "backup_mx.priority"),
        ("backup-priority-65536", BACKUPMX, [backup(priority=65536)], "backup_mx.priority"),
        ("backup-priority-string", BACKUPMX, [backup(priority="20")], "backup_mx.priority"),
        ("backup-not-worse-than-primary", BACKUPMX, [backup(priority=1)], "backup_mx.priority"),
        ("primary-priority-70000", BACKUPMX, [primary(priority=70000)], "domains[0].primary_mx[0].priority"),
        ("cidr-garbage", BACKUPMX, ['relay_cidrs=["not-a-cidr"]'], "relay_cidrs[0]"),
        ("cidr-host-bits", BACKUPMX, ['relay_cidrs=["192.0.2.1/24"]'], "relay_cidrs[0]"),
        ("cidr-whole-internet", BACKUPMX, ['relay_cidrs=["0.0.0.0/0"]'], "relay_cidrs[0]"),
        ("cidr-ipv6-host-bits", BACKUPMX, ['relay_cidrs=["2001:db8::1/64"]'], "relay_cidrs[0]"),
        ("cidr-ipv6-too-wide", BACKUPMX, ['relay_cidrs=["2001:db8::/16"]'], "relay_cidrs[0]"),
        ("cidr-ipv4-mapped-ipv6", BACKUPMX, ['relay_cidrs=["::ffff:192.0.2.0/120"]'], "relay_cidrs[0]"),
        ("cidr-mixed-list-bad-v6", BACKUPMX, ['relay_cidrs=["192.0.2.0/24", "2001:db8::/48", "2001:db8:::/48"]'],
         "relay_cidrs[2]"),
        ("cidr-duplicate", BACKUPMX, ['relay_cidrs=["192.0.2.0/24", "192.0.2.0/24"]'], "relay_cidrs[1]"),
        ("cidr-not-a-string", BACKUPMX, ["relay_cidrs=[42]"], "relay_cidrs[0]"),
        ("missing-secrets-path", BACKUPMX, [d("vault", {"addr": vault.get("addr"), "token_file": vault.get("token_file")})],
         "vault.secret_path"),
        ("vault-path-without-mount", BACKUPMX, [d("vault", {**vault, "secret_path": "viktor"})],
         "vault.secret_path"),
        ("vault-addr-not-url", BACKUPMX, [d("vault", {**vault, "addr": "vault.local"})], "vault.addr"),
        ("empty-provider-profile", BACKUPMX, ["provider={}"], "provider"),
        ("provider-unknown-backend", BACKUPMX, [d("provider", {**prov, "backend": "magic"})], "provider.backend"),
        ("provider-api-without-user", BACKUPMX,
         [d("provider", {k: v for k, v in prov.items() if k != "user"})], "provider.user"),
        ("provider-other-name", BACKUPMX, [d("provider", {**prov, "name": "other"})], "provider.name"),
        # The provider's budget (docs/budget.md), for the deploy and for the canary that spends it.
        ("provider-budget-share", BACKUPMX, [d("provider", {**prov, "budget": {"share": 2}})], "provider.budget.share"),
        ("canary-budget-days", CANARY, [d("provider", {**prov, "budget": {"days": 0}})], "provider.budget.days"),
        ("cloudflare-quota-negative", BACKUPMX, [d("cloudflare", {**data["cloudflare"], "record_quota": -5})],
         "cloudflare.record_quota"),
        ("dns-server-not-ip-port", BACKUPMX, ['dns_servers=["nohost"]'], "dns_servers[0]"),
        ("dns-wait-zero", BACKUPMX, ["dns_wait_seconds=0"], "dns_wait_seconds"),
        ("state-dir-relative", BACKUPMX, ['state_dir="relative/dir"'], "state_dir"),
        ("mailhost-unknown-flavour", BACKUPMX, [d("mailhost", {"flavour": "exim"})], "mailhost"),
        # Strict keys (docs/configuration.md): a mistyped key, nested or a near miss at the top.
        ("backup-mx-unknown-key", BACKUPMX, [backup(smtp_endpoint={})], "backup_mx.smtp_endpoint"),
        ("top-level-near-miss", BACKUPMX, [d("relay_cidr", ["192.0.2.0/24"])], "relay_cidr"),
        ("rollback-top-level-near-miss", ROLLBACK, [d("backup-mx", bmx)], "backup-mx"),
        ("lock-wait-negative", BACKUPMX, ["lock_wait=-1"], "lock_wait"),
        ("rollback-revert-not-bool", ROLLBACK, ["revert_mailhost=maybe"], "revert_mailhost"),
        ("rollback-bad-priority", ROLLBACK, [backup(priority=99999)], "backup_mx.priority"),
        ("maintenance-hold-garbage", MAINTENANCE, ["hold=sometimes"], "hold"),
        # Provider selfhosted (docs/provider-selfhosted.md): the choice and its relay hosts.
        ("provider-name-not-in-providers", BACKUPMX, ["provider=nope"], "provider"),
        ("selfhosted-acc-fields", BACKUPMX, [d("providers", {"selfhosted": {
            "backup_mx": {"provider": "selfhosted", "priority": 20},
            "provider": {"name": "selfhosted", "backend": "api"}}}), "provider=selfhosted"], "provider.backend"),
        ("selfhosted-hosts-not-the-relays", BACKUPMX, [d("providers", {"selfhosted": {
            "backup_mx": {"provider": "selfhosted", "priority": 20, "hosts": ["mx9.viktorbarzin.me"]}}}),
            "provider=selfhosted"], "backup_mx.hosts"),
        ("selfhosted-relayhost-without-addresses", BACKUPMX,
         [d("relayhost", {"hostname": "relay1.viktorbarzin.me", "primary": "127.0.0.1"}), "provider=selfhosted"],
         "relayhost.public_addresses"),
        ("rollback-selfhosted-bad-relayhost", ROLLBACK,
         [d("relayhost", {"hostname": "relay1.viktorbarzin.me", "primary": "127.0.0.1"}), "provider=selfhosted"],
         "relayhost.public_addresses"),
    ]


CASE_IDS = [case[0] for case in _cases({"domains": [{}], "backup_mx": {}, "vault": {}, "provider": {},
                                         "cloudflare": {}})]


@pytest.fixture(scope="module")
def results(world):
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    clear_cloudflare_requests(world)
    acc_before = len(acc_requests(world))
    audit = Path(world["root"]) / "state" / "audit.jsonl"
    audit_before = audit.read_text() if audit.exists() else ""
    cases = _cases(sandbox_data())

    argvs = [pyinfra_argv(deploy, *[arg for assignment in assignments for arg in ("--data", assignment)])[1:]
             for _id, deploy, assignments, _field in cases]
    done = dict(zip(CASE_IDS, run_batch(argvs, parallel=4)))
    entries = cloudflare_requests(world)
    contacted = {
        "cloudflare": [entry for entry in entries if "/client/v4/" in entry["path"]],
        "acc": acc_requests(world)[acc_before:],
        "audit": (audit.read_text() if audit.exists() else "")[len(audit_before):],
    }
    return {"cases": {case[0]: case for case in cases}, "done": done, "contacted": contacted}


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_one_line_naming_the_field(results, case_id):
    field = results["cases"][case_id][3]
    result = results["done"][case_id]
    text = output(result)
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1, text
    assert field in errors[0], errors[0]
    # Nothing ran: no operation started, no gate report printed.
    assert "Starting operation" not in text and "gate report" not in text, text


def test_the_catalogue_is_large_enough():
    assert len(CASE_IDS) >= 30 and len(set(CASE_IDS)) == len(CASE_IDS)


def test_no_bad_input_contacted_anything(results):
    assert results["contacted"] == {"cloudflare": [], "acc": [], "audit": ""}


@pytest.mark.parametrize("assignment,needle", [
    # Only an API can tell these; they are read-only reads, and nothing is written.
    ('domains=[{"name": "unknown.example", "primary_mx": [{"host": "mail.unknown.example", "priority": 1}]}]',
     "unknown.example"),
    ("wrong-vault-mount", "nomount/viktor"),
])
def test_input_only_an_api_can_refuse_stops_before_any_write(world, assignment, needle):
    if assignment == "wrong-vault-mount":
        vault = sandbox_data()["vault"]
        assignment = "vault=" + json.dumps({**vault, "secret_path": "nomount/viktor"})
    clear_cloudflare_requests(world)
    acc_before = [entry for entry in acc_requests(world) if entry.get("action") in ("domain_set", "hold_set")]
    result = pyinfra(BACKUPMX, "--data", assignment, timeout=120)
    text = output(result)
    assert result.returncode != 0, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1 and needle in errors[0], text
    entries = cloudflare_requests(world)
    assert [entry for entry in entries if entry["method"] != "GET"] == []
    assert [entry for entry in acc_requests(world) if entry.get("action") in ("domain_set", "hold_set")] == acc_before
