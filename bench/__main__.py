"""Benchmarks of the backupmx deploys against the sandbox world (issue #9); not part of `make test`.

    python -m bench [--runs N] [--only NAME ...] [--json FILE] [--keep]

NAME: physical (the no-op converge against `pyinfra fact server.Hostname`), converge,
dry, api, rollback, scaling, octodns (api and rollback share one cycle of runs). Every timing is the median of N runs (default 5, at least 5 is
the issue's rule) of the real CLI command, and every speed figure is a ratio to a
floor measured in the same invocation on the same machine, runs interleaved. The
benchmarks assert nothing about time: they print a table with the goals beside
the numbers. The world is ``$BACKUPMX_SANDBOX_DIR`` (default /var/tmp/backupmx-bench),
started if down and, unless ``--keep``, stopped again at the end if this started it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench import cases
from bench.world import PROJECT_ROOT, Meter, load, sandbox_down, sandbox_up

CASES = ["physical", "converge", "dry", "api", "rollback", "scaling", "octodns"]


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load_avg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load_avg = "?"
    import os

    return (f"{platform.node()}: {os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, "
            f"load average at start {load_avg}")


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, check=False, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               check=False, capture_output=True, text=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per timing (median; default 5)")
    parser.add_argument("--only", action="append", choices=CASES, help="run only this benchmark (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="leave the world up even if this started it")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.runs < 5:
        print(f"note: --runs {args.runs} is below the issue's minimum of 5: figures are indicative only",
              file=sys.stderr)
    wanted = set(args.only or CASES)

    header = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "commit": commit(), "runs": args.runs}
    started_world = sandbox_up()
    results: list[dict] = []
    try:
        world = load()
        meter = Meter(world)
        meter.enable_vault_audit()
        meter.reset_acc()
        meter.relax_rate_limit()
        with tempfile.TemporaryDirectory(prefix="backupmx-bench-") as scratch:
            bench = cases.Bench(world, meter, Path(scratch), args.runs)
            bench.converge_all()
            if "physical" in wanted:
                results += bench.physical()
            if "converge" in wanted:
                results += bench.converge()
            if "dry" in wanted:
                results += bench.dry()
            if wanted & {"api", "rollback"}:
                results += bench.cycle()
            if "octodns" in wanted:
                results += bench.octodns()
            if "scaling" in wanted:
                results += bench.scaling()
            bench.converge_all()  # the world as a user's `make demo` expects it
    finally:
        if started_world and not args.keep:
            sandbox_down()

    print(render(header, results))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=2))
    return 0


def render(header: dict, results: list[dict]) -> str:
    lines = [
        f"backupmx benchmarks — {header['date']}, commit {header['commit']}",
        f"machine: {header['machine']}",
        f"timings: median of {header['runs']} runs (min–max in brackets); requests: per run",
        "",
        "| benchmark | measured | floor / reference | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(f"| {row['name']} | {row['measured']} | {row.get('reference', '')} | {row.get('ratio', '')} "
                     f"| {row.get('goal', '')} | {row.get('met', '')} |")
    notes = [row for row in results if row.get("note")]
    if notes:
        lines.append("")
        lines += [f"- {row['name']}: {row['note']}" for row in notes]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
