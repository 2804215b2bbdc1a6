"""`python bench/run.py`: run the benchmark scenarios, print the table, write the report.

Owns the command line and the order of a run: check the tools (installs wrk when
missing), run each scenario, re-run each missed one under py-spy for its profile, print
the table, and write docs/BENCHMARKS.md.

    python bench/run.py                 # everything, full sizes; writes docs/BENCHMARKS.md
    python bench/run.py --quick         # small sizes, one run each: for development
    python bench/run.py --only 3        # one scenario
    python bench/run.py --out FILE      # write the report there (--quick/--only write only with --out)

Must never: leave a process or a temporary directory behind (the cache dir given with
--cache-dir is kept on purpose, to reuse the generated databases).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import harness as h  # noqa: E402
from bench import postgres_scenarios, report  # noqa: E402
from bench.scenarios import FULL, QUICK, Context, Result  # noqa: E402
from bench.scenarios import SCENARIOS as SQLITE_SCENARIOS  # noqa: E402

# 1-7 on SQLite (the default), 8-10 on PostgreSQL (several instances: issue 14).
SCENARIOS = {**SQLITE_SCENARIOS, **postgres_scenarios.SCENARIOS}

DEFAULT_OUT = os.path.join("docs", "BENCHMARKS.md")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark Calo Jobs against a bare Tornado baseline.")
    parser.add_argument("--quick", action="store_true", help="small sizes and one run each (development)")
    parser.add_argument("--only", type=int, choices=sorted(SCENARIOS), action="append",
                        help="run only this scenario (repeatable)")
    parser.add_argument("--out", help=f"write the report here (default for a full run: {DEFAULT_OUT})")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--cache-dir", help="keep generated databases here between invocations")
    parser.add_argument("--no-profile", action="store_true", help="do not re-run missed scenarios under py-spy")
    return parser


def _run_one(number: int, ctx: Context) -> list[Result]:
    """The scenario's rows; a scenario that could not run is one missed row saying why."""
    started = time.monotonic()
    print(f"bench: scenario {number} ({SCENARIOS[number].__name__}) ...", file=sys.stderr, flush=True)
    try:
        rows = SCENARIOS[number](ctx)
    except (h.BenchError, OSError, ValueError) as exc:
        traceback.print_exc()
        rows = [Result(str(number), SCENARIOS[number].__name__, f"could not run: {str(exc).splitlines()[0]}",
                       "—", passed=False)]
    print(f"bench: scenario {number} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    for row in rows:
        print(f"bench:   {row.number}: {row.figure} [{'pass' if row.passed else 'MISS'}]", file=sys.stderr, flush=True)
    return rows


def _profile_misses(number: int, rows: list[Result], ctx: Context) -> None:
    """Re-run a scenario with a miss once, under py-spy, and attach the hot spots."""
    if not any(not row.passed for row in rows):
        return
    if not h.py_spy_available():
        print("bench: py-spy is not installed (pip install py-spy): misses go unprofiled", file=sys.stderr)
        return
    profiled = Context(dataclasses.replace(ctx.sizes, runs=1), ctx.work_dir, ctx.cache_dir, profiling=True)
    print(f"bench: scenario {number} missed; running it again under py-spy", file=sys.stderr, flush=True)
    try:
        SCENARIOS[number](profiled)
    except (h.BenchError, OSError, ValueError):
        traceback.print_exc()
    for row in rows:
        if not row.passed:
            row.profile = profiled.profile_findings(row.number)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = dataclasses.replace(sizes, runs=args.runs)
    numbers = sorted(set(args.only or SCENARIOS))
    out = args.out or (None if args.quick or args.only else DEFAULT_OUT)
    h.ensure_wrk()
    started, commit = time.monotonic(), h.git_commit()
    work_dir = tempfile.mkdtemp(prefix="calo-bench-")
    try:
        ctx = Context(sizes, work_dir, args.cache_dir or os.path.join(work_dir, "cache"))
        results = []
        for number in numbers:
            rows = _run_one(number, ctx)
            if not args.no_profile:
                _profile_misses(number, rows, ctx)
            results += rows
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    print(report.table(results))
    print(f"\n{sum(r.passed for r in results)} of {len(results)} figures meet their targets; {seconds / 60:.1f} min")
    if out:
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join(["python bench/run.py", *map(shlex.quote, given)])
        machine = h.machine()
        if machine["commit"] != commit:
            moved = f"{commit} at the start, {machine['commit']} at the end"
            machine["commit"] = f"{moved}: the checkout moved during the run"
        with open(out, "w", encoding="utf-8") as file:
            file.write(report.document(results, machine, command, seconds))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
