"""``deploys/rollback.py`` through the pyinfra CLI, from a live state (backup MX published).

Outages are made the way a client sees a stopped daemon: the inventory points at
a loopback port nothing listens on (``--data``), so the shared sandbox world keeps
running for everyone else. The fakes are reset before and after every test.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from support.seed import BACKUPS, PRIMARY

from backupmx.dns import check as dnscheck
from backupmx.dns.cloudflare import CloudflareClient
from backupmx.dns.plan import MANAGED_MARKER
from backupmx_sandbox.seed import DOMAIN
from support.mailhost import managed_paths, put_back_after
from support.providers import (
    ReportRow,
    acc_requests,
    acc_writes,
    admin,
    cloudflare_admin,
    cloudflare_faults,
    cloudflare_writes,
    dead_port,
    output,
    provider_data,
    pyinfra,
    report_row,
)


def rollback(*args: str, env: dict | None = None, yes: bool = True):
    return pyinfra("deploys/rollback.py", *args, env=env, yes=yes)


def dns_answer(world) -> set:
    return set(dnscheck.live_mx(world["zone"], [world["dns"]]))


def zone_mx(world) -> list:
    client = CloudflareClient(world["cloudflare_api_base"], world["cloudflare_token"])
    records = client.mx_records(client.zone_id(world["zone"]), world["zone"])
    return sorted(records, key=lambda record: (record.priority, record.host))


def publish(world, host: str, priority: int = 20, comment: str | None = MANAGED_MARKER) -> None:
    client = CloudflareClient(world["cloudflare_api_base"], world["cloudflare_token"])
    client.create_mx(client.zone_id(world["zone"]), world["zone"], host, priority, comment=comment)


def summary_row(result, stage: str) -> ReportRow:
    return report_row(result.stdout, stage)


def acc_domain(world) -> dict:
    return admin(world, "state")["domains"][DOMAIN]


def no_secret_in(world, result) -> None:
    text = output(result)
    leaked = [name for name, value in json.loads((Path(world["root"]) / "secrets.json").read_text()).items()
              if isinstance(value, str) and len(value) >= 8 and value in text]
    assert not leaked, f"secret(s) {leaked} in the output"


def env_without_vault(**extra) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("VAULT_TOKEN", "CLOUDFLARE_API_TOKEN", "ROLLERNET_API_KEY")}
    env.update(extra)
    return env


@pytest.fixture
def live(world):
    """The state after a successful go-live: both backup MX records published, the domain enabled."""
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")
    for host in ("mail.rollernet.us", "mail2.rollernet.us"):
        publish(world, host)
    assert dns_answer(world) == {PRIMARY} | BACKUPS
    cloudflare_admin(world, "DELETE", "requests")
    yield world
    admin(world, "reset", {})
    cloudflare_admin(world, "POST", "reset")


class DNSWatch:
    """Polls the authoritative answer while the rollback runs: when did the backups disappear?"""

    def __init__(self, world):
        self.world = world
        self.started = time.monotonic()
        self.cleared_after: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                if not dns_answer(self.world) & BACKUPS:
                    self.cleared_after = time.monotonic() - self.started
                    return
            except dnscheck.DNSCheckError:
                pass
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


# --- the normal rollback ------------------------------------------------------------------


def test_rollback_from_a_live_state_leaves_exactly_the_primary(live, capsys):
    [primary_before] = [r for r in zone_mx(live) if r.key == PRIMARY]
    watch = DNSWatch(live)
    result = rollback()
    total = time.monotonic() - watch.started
    watch.stop()
    assert result.returncode == 0, output(result)
    assert dns_answer(live) == {PRIMARY}
    [primary_after] = zone_mx(live)
    assert primary_after == primary_before  # same id, host, priority, comment: never touched
    assert [w["method"] for w in cloudflare_writes(live)] == ["DELETE", "DELETE"]
    assert acc_domain(live)["enabled"] is False
    removed = summary_row(result, "1")
    assert removed.status == "change" and removed.evidence.startswith(
        "deleted MX viktorbarzin.me 20 mail.rollernet.us, MX viktorbarzin.me 20 mail2.rollernet.us; "
        "kept: 1 mail.viktorbarzin.me"), removed
    assert "answer 1 mail.viktorbarzin.me" in summary_row(result, "2").evidence
    assert "disabled (api mail/domain_set, re-read api mail/domain_get)" in summary_row(result, "3").evidence
    assert "=> rollback complete" in result.stdout
    no_secret_in(live, result)
    with capsys.disabled():
        print(f"\n    rollback: DNS without the backups {watch.cleared_after:.2f} s after start; "
              f"whole run {total:.2f} s")
    assert watch.cleared_after is not None and watch.cleared_after < total


def test_running_it_again_is_harmless(live):
    assert rollback().returncode == 0
    cloudflare_admin(live, "DELETE", "requests")
    admin(live, "reset", {})  # request log
    admin(live, "state", {"enabled": False})
    result = rollback()
    assert result.returncode == 0, output(result)
    assert cloudflare_writes(live) == [] and acc_writes(live) == []
    assert "no backup MX record in the zone (kept: 1 mail.viktorbarzin.me)" in summary_row(result, "1").evidence
    assert "already disabled" in summary_row(result, "3").evidence
    assert dns_answer(live) == {PRIMARY}


def test_dry_run_shows_the_plan_and_changes_nothing(live):
    result = rollback("--dry", yes=False)
    assert result.returncode == 0, output(result)
    assert "rollback 1: - MX viktorbarzin.me 20 mail.rollernet.us" in output(result)
    assert "(review: nothing was changed)" in result.stdout
    assert "would disable viktorbarzin.me" in summary_row(result, "3").evidence
    assert cloudflare_writes(live) == [] and acc_writes(live) == []
    assert dns_answer(live) == {PRIMARY} | BACKUPS


# --- outages --------------------------------------------------------------------------------


def test_mail_host_unreachable_does_not_stop_the_dns_removal(live):
    result = rollback("--data", f"ssh_port={dead_port()}")
    text = output(result)
    assert "Could not connect" in text
    assert dns_answer(live) == {PRIMARY}
    assert acc_domain(live)["enabled"] is False
    assert "=> rollback complete" in result.stdout
    # pyinfra exits 1 for the unreachable host: documented, and said at the end.
    assert result.returncode == 1
    note = next(line for line in result.stdout.splitlines() if line.startswith("  note: not reached or failed:"))
    assert "sandbox-mailhost" in note and "steps 1-3 do not need them" in note
    no_secret_in(live, result)


def test_limit_controller_leaves_the_mail_host_out_and_exits_0(live):
    result = rollback("--limit", "controller", "--data", f"ssh_port={dead_port()}")
    assert result.returncode == 0, output(result)
    assert "sandbox-mailhost" not in output(result)
    assert dns_answer(live) == {PRIMARY}


def test_acc_down_warns_with_the_manual_steps_and_dns_is_still_done(live):
    dead = f"http://127.0.0.1:{dead_port()}/api/api.php"
    result = rollback("--data", provider_data(live, api_base=dead))
    assert result.returncode == 2, output(result)  # documented: DNS done, a step left by hand
    assert dns_answer(live) == {PRIMARY}
    row = summary_row(result, "3")
    assert row.status == "warn" and f"POST {dead} (m=mail a=domain_get)" in row.evidence
    assert "no connection (ConnectionError after 3 retries)" in row.evidence
    assert "log in to https://acc.rollernet.us/ as viktor" in result.stdout
    assert "open the mail domain viktorbarzin.me and disable it" in result.stdout
    assert "finish by hand what the warn row(s) say (exit 2)" in result.stdout
    assert acc_domain(live)["enabled"] is True and acc_requests(live) == []
    no_secret_in(live, result)


def test_acc_dropping_connections_is_the_same_warning(live):
    admin(live, "faults", {"down": True})
    result = rollback()
    assert result.returncode == 2, output(result)
    assert dns_answer(live) == {PRIMARY}
    assert "no answer (ConnectionError after 3 retries)" in summary_row(result, "3").evidence


def vault_down(world) -> str:
    return "vault=" + json.dumps({"addr": f"http://127.0.0.1:{dead_port()}", "secret_path": world["vault_secret_path"],
                                  "token_file": world["vault_token_file"]})


def test_vault_down_with_the_env_tokens(live):
    env = env_without_vault(CLOUDFLARE_API_TOKEN=live["cloudflare_token"], ROLLERNET_API_KEY=live["acc_api_key"])
    result = rollback("--data", vault_down(live), env=env)
    assert result.returncode == 0, output(result)
    assert dns_answer(live) == {PRIMARY}
    assert "token from $CLOUDFLARE_API_TOKEN (Vault unavailable)" in summary_row(result, "1").evidence
    assert acc_domain(live)["enabled"] is False
    no_secret_in(live, result)


def test_vault_down_with_only_the_cloudflare_token_still_removes_the_records(live):
    env = env_without_vault(CLOUDFLARE_API_TOKEN=live["cloudflare_token"])
    result = rollback("--data", vault_down(live), env=env)
    assert result.returncode == 2, output(result)
    assert dns_answer(live) == {PRIMARY}
    row = summary_row(result, "3")
    assert row.status == "warn" and "set $ROLLERNET_API_KEY for an emergency run" in row.evidence
    assert acc_domain(live)["enabled"] is True
    no_secret_in(live, result)


def test_vault_down_without_the_env_token_stops_and_touches_nothing(live):
    result = rollback("--data", vault_down(live), env=env_without_vault())
    assert result.returncode != 0
    row = summary_row(result, "1")
    assert row.status == "FAIL" and "set $CLOUDFLARE_API_TOKEN for an emergency run" in row.evidence
    assert "not run: an earlier step failed" in summary_row(result, "3").evidence
    assert "ROLLBACK INCOMPLETE" in result.stdout
    assert dns_answer(live) == {PRIMARY} | BACKUPS
    assert cloudflare_writes(live) == [] and acc_writes(live) == []


# --- what is not ours -------------------------------------------------------------------------


def test_a_foreign_record_at_the_provider_is_left_and_the_domain_stays_enabled(live):
    publish(live, "mail.rollernet.us", priority=30, comment=None)  # someone's own, not backupmx's
    result = rollback()
    assert result.returncode != 0
    assert dns_answer(live) == {PRIMARY, (30, "mail.rollernet.us")}
    assert "was not created by backupmx; it is left untouched" in output(result)
    assert "still points at the provider: 30 mail.rollernet.us" in summary_row(result, "2").evidence
    # A disabled domain would bounce what senders still route there.
    assert acc_domain(live)["enabled"] is True and acc_writes(live) == []


# --- revert_mailhost ----------------------------------------------------------------------------


def test_revert_runs_after_the_dns_steps(live):
    result = rollback("--dry", "--data", "revert_mailhost=true", yes=False)
    assert result.returncode == 0, output(result)
    names = re.findall(r"^    (Rollback \d: [^\n]+?)\s{2,}", output(result), re.MULTILINE)
    order = [name.split(":")[0] for name in names]
    assert order == sorted(order) and order[-1] == "Rollback 4", names
    assert "would remove the postscreen whitelist and the rspamd exemption" in summary_row(result, "4").evidence


def test_revert_mailhost_removes_the_whitelist_and_the_exemption(live):
    with put_back_after(live):
        installed = pyinfra("tests/deploys/mailhost_on.py")
        assert installed.returncode == 0, output(installed)
        assert managed_paths(live)["cidr"].exists()
        result = rollback("--data", "revert_mailhost=true")
        assert result.returncode == 0, output(result)
        assert dns_answer(live) == {PRIMARY}
        assert not managed_paths(live)["cidr"].exists()
        assert "postscreen_access.cidr" not in managed_paths(live)["master.cf"].read_text()
        settings = managed_paths(live)["settings.conf"]
        assert not settings.exists() or "backupmx_relay_exempt" not in settings.read_text()
        row = summary_row(result, "4")
        assert row.status == "pass" and row.evidence.startswith("postscreen whitelist and rspamd exemption removed")
        again = rollback("--data", "revert_mailhost=true")
        assert again.returncode == 0, output(again)


def test_revert_waits_for_dns_when_the_dns_part_fails(live):
    with put_back_after(live):
        installed = pyinfra("tests/deploys/mailhost_on.py")
        assert installed.returncode == 0, output(installed)
        result = rollback("--data", "revert_mailhost=true", "--data", vault_down(live), env=env_without_vault())
        assert result.returncode != 0
        # DNS still routes to the backup: its relays must stay whitelisted and exempt.
        assert managed_paths(live)["cidr"].exists()
        assert "not reverted: DNS was not confirmed clear" in summary_row(result, "4").evidence


def test_disable_domain_false_leaves_the_provider_for_later(live):
    result = rollback("--data", "disable_domain=false")
    assert result.returncode == 0, output(result)
    assert dns_answer(live) == {PRIMARY}
    assert "left enabled on request" in summary_row(result, "3").evidence
    assert acc_domain(live)["enabled"] is True and acc_writes(live) == []


def test_a_slow_dns_wait_shows_its_progress(live):
    # The zone's name server answers 3.5 s late, past the client's 3 s: four questions go
    # unanswered (about 12 s). The wait must say so, not sit silent.
    cloudflare_faults(live, slow={"methods": ["DNS"], "path_contains": live["zone"], "count": 4, "seconds": 3.5})
    result = rollback("--limit", "controller")
    assert result.returncode == 0, output(result)
    progress = [line for line in output(result).splitlines()
                if f"DNS {live['zone']}: waiting for the authoritative servers to drop the backups: " in line]
    assert progress, output(result)
    assert re.search(r"\[@local\] +DNS \S+: waiting for the authoritative servers to drop the backups: \d+ s, "
                     r"at most \d+ s left \(DNS \S+: no answer for \S+ MX \(Timeout\)", progress[0]), progress
    assert dns_answer(live) == {PRIMARY}
