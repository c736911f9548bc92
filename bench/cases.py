"""The benchmarks themselves: each returns rows for the table (no assertion on time)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.world import PROJECT_ROOT, Counts, Meter, run_pyinfra, sandbox_env

INVENTORY = "inventory/sandbox.py"
DEPLOY = "deploys/backupmx.py"
ROLLBACK = "deploys/rollback.py"
FLOOR = "bench/floor_deploy.py"
PHYSICAL_FLOOR = ("fact", "server.Hostname")  # pyinfra's own floor: start, connect every host, one fact
CLOUDFLARE_LIMIT = 1200  # requests per 5 minutes per token (PROVIDER-NOTES.md)
SCALING_ZONES = (1, 10, 50)
OCTODNS_SYNC = str(Path(sys.executable).with_name("octodns-sync"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timing(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f} s"
    return f"{median(values):.2f} s [{min(values):.2f}–{max(values):.2f}]"


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    times = os.times()
    return times.children_user + times.children_system


def per_run(values: list[int]) -> str:
    """Requests per run: the single value when every run agrees, else median and range."""
    if not values:
        return "n/a"
    if min(values) == max(values):
        return str(values[0])
    return f"{median(values):g} [{min(values)}–{max(values)}]"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


class Bench:
    def __init__(self, world: dict, meter: Meter, scratch: Path, runs: int):
        self.world = world
        self.meter = meter
        self.scratch = scratch
        self.runs = runs
        self.env = sandbox_env()
        # Secrets come from Vault in every measured run: no env fallback may stand in.
        for name in ("CLOUDFLARE_API_TOKEN", "ROLLERNET_API_KEY", "VAULT_TOKEN"):
            self.env.pop(name, None)
        self.cycle_results: dict[str, list] = {}

    # ----------------------------------------------------------------- helpers
    def converge_all(self, inventory: str = INVENTORY) -> None:
        """Everything applied (the ACC domain enabled again first), so the next runs are no-ops."""
        self.meter.reset_acc()
        self.meter.relax_rate_limit()
        run_pyinfra(inventory, DEPLOY, env=self.env)

    def measured(self, inventory: str, deploy: str, *args: str, dry: bool = False) -> tuple[float, Counts, str]:
        self.meter.start()
        elapsed, result = run_pyinfra(inventory, deploy, *args, dry=dry, env=self.env)
        return elapsed, self.meter.stop(), result.stdout

    def floor_manifest(self) -> Path:
        """Copies of the files stage 3 and stage 6 keep on the hosts, as they are now (a no-op to upload)."""
        world = self.world
        mailhost = world["mailhost"]
        monitoring_dir = Path(world["root"]) / "monitoring"
        hosts = {
            "sandbox-mailhost": [
                Path(mailhost["postfix_config_dir"]) / "postscreen_access.cidr",
                Path(mailhost["postfix_config_dir"]) / "master.cf",
                Path(mailhost["rspamd_local_dir"]) / "local.d" / "settings.conf",
            ],
            "sandbox-monitoring": sorted(monitoring_dir.glob("*.yml")),
        }
        manifest: dict[str, list[list[str]]] = {}
        for host, paths in hosts.items():
            directory = self.scratch / "floor" / host
            directory.mkdir(parents=True, exist_ok=True)
            for path in paths:
                if not path.exists():
                    raise SystemExit(f"floor: {path} is missing; the deploy has not converged")
                copy = directory / path.name
                shutil.copyfile(path, copy)
                manifest.setdefault(host, []).append([str(copy), str(path)])
        target = self.scratch / "floor" / "manifest.json"
        target.write_text(json.dumps(manifest))
        self.env["BACKUPMX_BENCH_FLOOR"] = str(target)
        return target

    def interleaved(self, dry: bool) -> tuple[list[float], list[float], list[Counts]]:
        """Floor and product runs alternating, so load on the machine hits both alike."""
        self.floor_manifest()
        floor, product, counts = [], [], []
        run_pyinfra(INVENTORY, FLOOR, dry=dry, env=self.env)  # warm-up: caches, first SSH
        run_pyinfra(INVENTORY, DEPLOY, dry=dry, env=self.env)
        for _ in range(self.runs):
            elapsed, _result = run_pyinfra(INVENTORY, FLOOR, dry=dry, env=self.env)
            floor.append(elapsed)
            elapsed, run_counts, _ = self.measured(INVENTORY, DEPLOY, dry=dry)
            if run_counts.cloudflare_writes:
                raise SystemExit(f"the {'dry run' if dry else 'no-op converge'} wrote to Cloudflare: "
                                 f"{run_counts.cloudflare_paths}")
            product.append(elapsed)
            counts.append(run_counts)
        return floor, product, counts

    # -------------------------------------------------------------- benchmarks
    def converge(self) -> list[dict]:
        floor, product, counts = self.interleaved(dry=False)
        ratio = median(product) / median(floor)
        cf = [c.cloudflare for c in counts]
        vault = [c.vault_reads for c in counts]
        return [
            {"name": "no-op converge vs floor", "measured": timing(product), "reference": timing(floor),
             "ratio": f"{ratio:.2f}×", "goal": "≤ 1.3×", "met": met(ratio <= 1.3),
             "raw": {"product": product, "floor": floor}},
            {"name": "API, no-op converge (1 zone)",
             "measured": f"Cloudflare {per_run(cf)}, ACC {per_run([c.acc for c in counts])}, "
                         f"Vault reads {per_run(vault)}",
             "goal": "≤ 2 Cloudflare per zone, 1 Vault read", "met": met(max(cf) <= 2 and max(vault) == 1),
             "raw": {"cloudflare": cf, "acc": [c.acc for c in counts], "vault": vault,
                     "paths": counts[0].cloudflare_paths}},
        ]

    def physical(self) -> list[dict]:
        """The no-op converge against pyinfra's physical floor: `fact server.Hostname` (the CLI
        starting, connecting every host of the inventory, one fact round trip), pairs interleaved."""
        floor, product, floor_cpu, product_cpu = [], [], [], []
        run_pyinfra(INVENTORY, *PHYSICAL_FLOOR, env=self.env)  # warm-up
        for _ in range(self.runs):
            for command, walls, cpus in ((PHYSICAL_FLOOR, floor, floor_cpu), ((DEPLOY,), product, product_cpu)):
                cpu_before = children_cpu()
                elapsed, _result = run_pyinfra(INVENTORY, *command, env=self.env)
                walls.append(elapsed)
                cpus.append(children_cpu() - cpu_before)
        ratio = median(product) / median(floor)
        cpu_ratio = median(product_cpu) / median(floor_cpu)
        return [{"name": "no-op converge vs `fact server.Hostname`", "measured": timing(product),
                 "reference": timing(floor), "ratio": f"{ratio:.2f}× (CPU {cpu_ratio:.2f}×)", "goal": "≤ 1.5×",
                 "met": met(ratio <= 1.5),
                 "raw": {"product": product, "floor": floor, "product_cpu": product_cpu, "floor_cpu": floor_cpu}}]

    def dry(self) -> list[dict]:
        floor, product, counts = self.interleaved(dry=True)
        ratio = median(product) / median(floor)
        return [
            {"name": "--dry vs floor --dry", "measured": timing(product), "reference": timing(floor),
             "ratio": f"{ratio:.2f}×", "goal": "≤ 1.3×", "met": met(ratio <= 1.3),
             "raw": {"product": product, "floor": floor,
                     "cloudflare": [c.cloudflare for c in counts], "vault": [c.vault_reads for c in counts]}},
        ]

    def rollback_once(self) -> tuple[float | None, float, Counts]:
        """Time from the rollback command's start until the sandbox DNS no longer answers a backup record."""
        from backupmx.dns import check as dnscheck

        backups = {relay["host"] for relay in self.world["relays"]}
        zone, servers = self.world["zone"], [self.world["dns"]]
        if not backups & {host for _pri, host in dnscheck.live_mx(zone, servers)}:
            raise SystemExit("rollback: the backup records are not published before the rollback")
        self.meter.start()
        command = [str(Path(sys.executable).with_name("pyinfra")), "-y", INVENTORY, ROLLBACK, "--limit", "controller"]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        gone, ended = None, False
        while gone is None and time.perf_counter() - started < 120:
            try:
                answer = {host for _pri, host in dnscheck.live_mx(zone, servers, timeout=1)}
            except Exception:  # noqa: BLE001 -- any DNS failure (timeout, SERVFAIL) is not "gone"
                answer = backups
            if not backups & answer:
                gone = time.perf_counter() - started
                break
            if ended:
                break
            ended = process.poll() is not None  # one more look after the command ended
            time.sleep(0.01)
        output, _ = process.communicate(timeout=300)
        total = time.perf_counter() - started
        if process.returncode != 0:
            tail = "\n".join(output.splitlines()[-30:])
            raise SystemExit(f"rollback failed (exit {process.returncode}):\n{tail}")
        return gone, total, self.meter.stop()

    def cycle(self) -> list[dict]:
        """Rollback, first apply, no-op, repeated: the API economy of each and the rollback's speed."""
        gone, rollback_total, rollback_counts = [], [], []
        apply_times, apply_counts, noop_counts = [], [], []
        for _ in range(self.runs):
            seconds, total, counts = self.rollback_once()
            gone.append(seconds if seconds is not None else float("inf"))
            rollback_total.append(total)
            rollback_counts.append(counts)
            self.meter.reset_acc()  # the rollback disabled the domain at the provider
            elapsed, counts, _ = self.measured(INVENTORY, DEPLOY)
            apply_times.append(elapsed)
            apply_counts.append(counts)
            _, counts, _ = self.measured(INVENTORY, DEPLOY)
            noop_counts.append(counts)
        self.cycle_results = {"apply_times": apply_times, "apply_counts": apply_counts}

        def api_row(label: str, counts: list[Counts], goal: str = "", ok: bool | None = None) -> dict:
            cf = [c.cloudflare for c in counts]
            return {"name": f"API, {label} (1 zone)",
                    "measured": f"Cloudflare {per_run(cf)} ({per_run([c.cloudflare_writes for c in counts])} "
                                f"writes), ACC {per_run([c.acc for c in counts])}, "
                                f"Vault reads {per_run([c.vault_reads for c in counts])}",
                    "goal": goal, "met": "" if ok is None else met(ok),
                    "raw": {"cloudflare": cf, "acc": [c.acc for c in counts],
                            "vault": [c.vault_reads for c in counts], "paths": counts[0].cloudflare_paths}}

        vault_ok = lambda counts: all(c.vault_reads == 1 for c in counts)
        rows = [
            api_row("first apply", apply_counts, "1 Vault read", vault_ok(apply_counts)),
            api_row("no-op", noop_counts, "≤ 2 Cloudflare per zone, 1 Vault read",
                    all(c.cloudflare <= 2 for c in noop_counts) and vault_ok(noop_counts)),
            api_row("rollback", rollback_counts, "1 Vault read", vault_ok(rollback_counts)),
            {"name": "first apply (DNS records absent, mail host already set up)", "measured": timing(apply_times),
             "raw": apply_times},
            {"name": "emergency rollback: start → backups gone from DNS", "measured": timing(gone),
             "reference": f"whole command {timing(rollback_total)}", "goal": "≤ 2 s",
             "met": met(median(gone) <= 2.0), "raw": {"gone": gone, "total": rollback_total}},
        ]
        return rows

    # ----------------------------------------------------------------- scaling
    def scaling_inventory(self, domains: list[dict]) -> str:
        path = self.scratch / f"inventory_{len(domains)}.py"
        path.write_text(
            '"""The sandbox inventory with more domains (written by python -m bench)."""\n'
            "import importlib.util as _util\n"
            f"_spec = _util.spec_from_file_location('_bench_sandbox_inventory', {str(PROJECT_ROOT / INVENTORY)!r})\n"
            "_base = _util.module_from_spec(_spec)\n"
            "_spec.loader.exec_module(_base)\n"
            f"_domains = {json.dumps(domains)}\n"
            "def _with(entries):\n"
            "    return [(name, {**data, 'domains': _domains}) for name, data in entries]\n"
            "mailhosts = _with(_base.mailhosts)\n"
            "controller = _with(_base.controller)\n"
            # The whole deploy, stage 6 included: one blackbox module per MX record of
            # every zone (at 50 zones its transaction uploads its files first).
            "monitoring = _with(_base.monitoring)\n"
        )
        return str(path)

    def scaling(self) -> list[dict]:
        """No-op runs of 1, 10 and 50 zones, interleaved run by run so the machine's load hits all alike."""
        primary = self.world["primary_mx"]
        domains = [{"name": self.world["zone"],
                    "primary_mx": [{"host": primary["host"], "priority": primary["priority"]}]}]
        for number in range(2, max(SCALING_ZONES) + 1):
            name = f"bench-z{number:02d}.test"
            self.meter.add_zone(name, f"mail.{name}")
            domains.append({"name": name, "primary_mx": [{"host": f"mail.{name}", "priority": 1}]})
        inventories = {size: self.scaling_inventory(domains[:size]) for size in SCALING_ZONES}
        self.converge_all(inventories[max(SCALING_ZONES)])  # every zone's records published
        by_size: dict[int, tuple[list[float], list[Counts]]] = {size: ([], []) for size in SCALING_ZONES}
        for size in SCALING_ZONES:
            run_pyinfra(inventories[size], DEPLOY, env=self.env)  # warm-up no-op
        for _ in range(self.runs):
            for size in SCALING_ZONES:
                elapsed, run_counts, _ = self.measured(inventories[size], DEPLOY)
                if run_counts.cloudflare_writes:
                    raise SystemExit(f"scaling {size}: the no-op wrote to Cloudflare: {run_counts.cloudflare_paths}")
                by_size[size][0].append(elapsed)
                by_size[size][1].append(run_counts)
        rows = []
        one = median(by_size[1][0])
        for size, (times, counts) in by_size.items():
            cf = [c.cloudflare for c in counts]
            rate = max(cf) * 300 / median(times)  # back-to-back runs for 5 minutes
            row = {"name": f"scaling: no-op, {size} zone{'s' if size > 1 else ''}", "measured": timing(times),
                   "reference": f"Cloudflare {per_run(cf)} ({max(cf) / size:.1f}/zone), ACC "
                                f"{per_run([c.acc for c in counts])}, Vault {per_run([c.vault_reads for c in counts])}",
                   "raw": {"times": times, "cloudflare": cf, "acc": [c.acc for c in counts],
                           "vault": [c.vault_reads for c in counts]}}
            if size > 1:
                ratio = median(times) / one
                row["ratio"] = f"{ratio:.2f}× of 1 zone"
            if size == max(SCALING_ZONES):
                row["goal"] = "≤ 3× one zone; ≤ 2 Cloudflare/zone; < 1200 per 5 min"
                row["met"] = met(ratio <= 3 and max(cf) <= 2 * size and max(cf) < CLOUDFLARE_LIMIT)
                row["note"] = ("stages 0-6 (monitoring group included); "
                               f"{max(cf)} Cloudflare requests per run: runs back to back would make "
                               f"{rate:.0f} per 5 minutes (limit {CLOUDFLARE_LIMIT})")
            rows.append(row)
        self.converge_all()  # back to the one-zone inventory's state (monitoring files, runbook)
        return rows

    # ----------------------------------------------------------------- octoDNS
    def octodns_config(self) -> Path:
        world = self.world
        zones = self.scratch / "octodns" / "zones"
        zones.mkdir(parents=True, exist_ok=True)
        primary = world["primary_mx"]
        values = [{"exchange": primary["host"] + ".", "preference": primary["priority"]}] + [
            {"exchange": relay["host"] + ".", "preference": world["backup_priority"]} for relay in world["relays"]]
        # Automatic TTL, as the zone's primary record has, so that a TTL is not what differs.
        record = {"octodns": {"cloudflare": {"auto-ttl": True}}, "ttl": 300, "type": "MX", "values": values}
        (zones / f"{world['zone']}.yaml").write_text(yaml.safe_dump({"": record}, sort_keys=True))
        config = self.scratch / "octodns" / "config.yaml"
        config.write_text(yaml.safe_dump({
            "providers": {
                "config": {"class": "octodns.provider.yaml.YamlProvider", "directory": str(zones)},
                "cloudflare": {"class": "octodns_cloudflare.CloudflareProvider", "token": "env/BENCH_CF_TOKEN",
                               "api_url": world["cloudflare_api_base"], "pagerules": False},
            },
            # Only the MX set: the zone's 190 other records are not octoDNS's to manage here.
            "processors": {"mx-only": {"class": "octodns.processor.filter.TypeAllowlistFilter",
                                       "allowlist": ["MX"]}},
            "zones": {f"{world['zone']}.": {"sources": ["config"], "processors": ["mx-only"],
                                            "targets": ["cloudflare"]}},
        }, sort_keys=True))
        return config

    def octodns_run(self, config: Path, doit: bool) -> tuple[float, Counts]:
        env = {**self.env, "BENCH_CF_TOKEN": self.world["cloudflare_token"]}
        command = [OCTODNS_SYNC, "--config-file", str(config), *(["--doit"] if doit else [])]
        self.meter.start()
        started = time.perf_counter()
        result = subprocess.run(command, cwd=self.scratch, env=env, check=False, capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise SystemExit(f"octodns-sync failed (exit {result.returncode}):\n{tail}")
        return elapsed, self.meter.stop()

    def octodns(self) -> list[dict]:
        if not Path(OCTODNS_SYNC).exists():
            return [{"name": "octoDNS anchor", "measured": "skipped: octodns not installed (pip install -e '.[bench]')"}]
        config = self.octodns_config()
        plan, apply, noop = ([], []), ([], []), ([], [])
        for _ in range(self.runs):
            self.meter.reset_cloudflare()  # the zone as seeded: the primary MX only
            for bucket, doit in ((plan, False), (apply, True), (noop, False)):
                elapsed, counts = self.octodns_run(config, doit)
                bucket[0].append(elapsed)
                bucket[1].append(counts)
        # backupmx on the same zone, same states, for the side-by-side.
        self.meter.reset_cloudflare()
        self.meter.reset_acc()
        ours_plan, ours_apply, ours_noop = ([], []), ([], []), ([], [])
        for _ in range(self.runs):
            self.meter.reset_cloudflare()
            for bucket, dry in ((ours_plan, True), (ours_apply, False), (ours_noop, False)):
                elapsed, counts, _ = self.measured(INVENTORY, DEPLOY, dry=dry)
                bucket[0].append(elapsed)
                bucket[1].append(counts)
        self.meter.reset_cloudflare()
        self.converge_all()

        def cell(bucket) -> str:
            times, counts = bucket
            return (f"{timing(times)}; Cloudflare {per_run([c.cloudflare for c in counts])} "
                    f"({per_run([c.cloudflare_writes for c in counts])} writes)")

        rows = []
        for label, theirs, ours in (("plan / --dry (records absent)", plan, ours_plan),
                                    ("apply (records absent)", apply, ours_apply),
                                    ("no-op (records present)", noop, ours_noop)):
            rows.append({"name": f"anchor: {label}", "measured": f"backupmx {cell(ours)}",
                         "reference": f"octoDNS {cell(theirs)}",
                         "ratio": f"{median(ours[0]) / median(theirs[0]):.2f}× octoDNS",
                         "raw": {"octodns": theirs[0], "backupmx": ours[0],
                                 "octodns_paths": theirs[1][0].cloudflare_paths,
                                 "backupmx_paths": ours[1][0].cloudflare_paths}})
        rows[1]["note"] = ("octoDNS apply requests: " + ", ".join(apply[1][0].cloudflare_paths) +
                           "; backupmx's runs include gates G1-G4, the mail host stages over SSH, "
                           "the authoritative DNS wait and stage 6")
        return rows
