"""The PostgreSQL scenarios (issue 14): several instances on one database.

Owns scenarios 8 to 10: `POST /jobs` on one instance with PostgreSQL (durable: synchronous
commit, fsync on), lateness with three instances sharing 20,000 pending jobs, and how long
the jobs of a SIGKILLed instance wait before another takes them over. Each runs a
throwaway PostgreSQL cluster (tests/postgres.py's, here with fsync on) on 127.0.0.1 for
its own databases, and the same server processes, fake Unsplash and wrk as the others.

PostgreSQL's own CPU is not in "server CPU time per request": it is a separate service,
as a bare handler has no database at all.

Must never: leave a cluster running (each is destroyed when its scenario ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import requests

from bench import harness as h
from bench.jobdocs import pending_job
from bench.scenarios import LONG_DELAYS, WORKERS, Context, Result, each, throughput_row, wrk_run
from calo.clock import now_ms, parse_iso_utc
from calo.storage.postgres_schema import migrate
from tests.postgres import ThrowawayPostgres

INSTANCES = 3
TAKEOVER_JOBS = 200
TOOK_OVER = re.compile(r"took over (\d+) pending")
DEFAULT_LEASE_SECONDS = 10.0  # --instance-lease's default


@contextlib.contextmanager
def postgres() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres(fsync=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def pg_count(url: str, status: str | None = None) -> int:
    with psycopg.connect(url) as conn:
        if status is None:
            row = conn.execute("SELECT count(*) FROM jobs").fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM jobs WHERE status = %s", (status,)).fetchone()
    return row[0] if row else 0


def pg_flags(url: str, *flags: str) -> tuple[str, ...]:
    return ("--database-url", url, *flags)


# -- 8. POST /jobs on one instance ---------------------------------------------------------


def pg_post_jobs(ctx: Context) -> list[Result]:
    pairs, durable = [], []
    with postgres() as cluster, ctx.upstream() as upstream, ctx.baseline() as (base, base_url):
        for _ in range(ctx.sizes.runs):
            url = cluster.new_database()
            data_dir = ctx.fresh_dir("pgpost")
            with ctx.calo(data_dir, upstream, pg_flags(url, *LONG_DELAYS)) as (proc, calo_url):
                ctx.profile("8", proc.pid, ctx.sizes.http_seconds)
                calo_report = wrk_run(calo_url + "/jobs", "post", ctx.sizes, proc.pid)
                durable.append((calo_report["statuses"].get("201", 0), pg_count(url)))
            pairs.append((calo_report, wrk_run(base_url + "/jobs", "post", ctx.sizes, base.pid)))
    row = throughput_row("8", f"PostgreSQL: POST /jobs on one instance, {ctx.sizes.connections} connections",
                         pairs, 0.5, "201")
    lost = sum(max(0, answered - stored) for answered, stored in durable)
    row.details += [
        f"201s answered / jobs in PostgreSQL right after: {each('{:,}/{:,}', durable)} (a 201 not stored: {lost})",
        "PostgreSQL 15 on the same machine, synchronous_commit on, fsync on; its CPU is not in the figure",
    ]
    row.passed = row.passed and lost == 0
    return [row]


# -- 9. lateness with three instances ------------------------------------------------------


def _create_schema(url: str) -> None:
    """The server's own migrations, run before any server starts."""

    async def schema() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn)

    asyncio.run(schema())


def _seed_pending(url: str, due: list[int]) -> None:
    """Pending jobs claimed by no server: the instances take them over at their next
    heartbeats, as they would a gone server's."""
    created = now_ms()
    jobs = [pending_job(created, due_at) for due_at in due]
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO jobs (id, status, due_at, doc) SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[],"
            " %s::text[])", ([j.id for j in jobs], [j.status for j in jobs], [j.due_at for j in jobs],
                             [j.to_json() for j in jobs]),
        )
        conn.execute("INSERT INTO job_counts (shard, status, n) VALUES (-1, 'pending', %s)", (len(jobs),))


def _lateness(url: str) -> tuple[list[float], int, dict[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status, doc::json->>'due_at', doc::json->>'resolved_at' FROM jobs").fetchall()
        per_event = dict(conn.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
    late = [float((parse_iso_utc(resolved) or 0) - (parse_iso_utc(due) or 0))
            for status, due, resolved in rows if status == "resolved"]
    failed = sum(1 for status, _, _ in rows if status != "resolved")
    return late, failed, per_event


def _pg_lateness_run(ctx: Context, cluster: ThrowawayPostgres, upstream: str, pending: int) -> dict[str, Any]:
    url = cluster.new_database()
    _create_schema(url)
    flags = pg_flags(url, "--workers", str(WORKERS))
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(ctx.calo(ctx.fresh_dir(f"pglate{n}"), upstream, flags))[0]
                 for n in range(INSTANCES)]
        # Written while the three run: they share them out over their next heartbeats (2 s).
        first_due = now_ms() + 5000 + pending // 4
        rng = random.Random(1)
        _seed_pending(url, [first_due + int(rng.random() * ctx.sizes.spread_seconds * 1000) for _ in range(pending)])
        margin_ms = first_due - now_ms()
        deadline = time.monotonic() + (first_due - now_ms()) / 1000 + ctx.sizes.spread_seconds + 60
        while pg_count(url, "pending") and time.monotonic() < deadline:
            time.sleep(0.5)
        taken = [sum(int(m) for m in _took_over(proc)) for proc in procs]
    late, failed, per_event = _lateness(url)
    return {"late": late, "failed": failed, "margin_ms": margin_ms, "taken": taken, "events": per_event}


def _took_over(proc: h.Proc) -> list[str]:
    """How many jobs the instance logged taking over, each time."""
    return [m.group(1) for _, line in list(proc.lines) if (m := TOOK_OVER.search(line))]


def pg_lateness(ctx: Context) -> list[Result]:
    pending = 20_000 if ctx.sizes.pending >= 100_000 else 2_000
    with postgres() as cluster, ctx.upstream() as upstream:
        runs = [_pg_lateness_run(ctx, cluster, upstream, pending) for _ in range(ctx.sizes.runs)]
    p50 = h.median([h.percentile(r["late"], 50) for r in runs])
    p99 = h.median([h.percentile(r["late"], 99) for r in runs])
    worst = h.median([max(r["late"]) for r in runs])
    once = all(r["events"].get("job.resolved", 0) == len(r["late"]) for r in runs)
    ok = p99 <= 100 and once and all(r["failed"] == 0 for r in runs)
    return [Result(
        "9", f"PostgreSQL: lateness, {INSTANCES} instances, {pending:,} pending, due over "
        f"{ctx.sizes.spread_seconds:g} s",
        figure=f"lateness p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms",
        target="p99 ≤ 100 ms, each job resolved once", passed=ok,
        details=[
            f"{pending:,} pending jobs inserted unclaimed (as a gone server's) while three instances run, due "
            f"over {ctx.sizes.spread_seconds:g} s from a few seconds later; the instances share them out at their "
            f"heartbeats (FOR UPDATE SKIP LOCKED) and run them from their own timers; --workers {WORKERS} each",
            "per run p99 / max lateness (ms): "
            + each("{:.0f}/{:.0f}", [(h.percentile(r["late"], 99), max(r["late"])) for r in runs]),
            f"jobs each instance took over, per run: {each('{}', [tuple(r['taken']) for r in runs])}",
            f"job.resolved events = resolved jobs in every run: {once}; "
            f"not resolved: {sum(r['failed'] for r in runs)}; jobs written this long before the first due "
            f"time: {each('{:.1f} s', [r['margin_ms'] / 1000 for r in runs])}",
        ],
    )]


# -- 10. takeover after SIGKILL --------------------------------------------------------------


def _takeover_run(ctx: Context, cluster: ThrowawayPostgres, upstream: str) -> float:
    url = cluster.new_database()
    flags = pg_flags(url, *LONG_DELAYS)
    with ctx.calo(ctx.fresh_dir("pgkeep"), upstream, flags) as (survivor, _), \
            ctx.calo(ctx.fresh_dir("pgkill"), upstream, flags, kill=True) as (victim, victim_url):
        with requests.Session() as session:
            for _ in range(TAKEOVER_JOBS):
                session.post(victim_url + "/jobs", timeout=10).raise_for_status()
        killed_at = time.perf_counter()
        victim.kill()
        taken_at, _ = survivor.wait_for(rf"took over {TAKEOVER_JOBS} pending jobs", DEFAULT_LEASE_SECONDS * 3)
    return taken_at - killed_at


def pg_takeover(ctx: Context) -> list[Result]:
    with postgres() as cluster, ctx.upstream() as upstream:
        seconds = [_takeover_run(ctx, cluster, upstream) for _ in range(ctx.sizes.runs)]
    bound = DEFAULT_LEASE_SECONDS * 1.2
    return [Result(
        "10", f"PostgreSQL: takeover of a SIGKILLed instance's {TAKEOVER_JOBS} pending jobs",
        figure=f"{h.median(seconds):.1f} s after SIGKILL (max {max(seconds):.1f} s)",
        target=f"≤ {bound:g} s (--instance-lease {DEFAULT_LEASE_SECONDS:g} s + one heartbeat)",
        passed=max(seconds) <= bound,
        details=[
            f"two instances, default --instance-lease ({DEFAULT_LEASE_SECONDS:g} s: heartbeats every "
            f"{DEFAULT_LEASE_SECONDS / 5:g} s); {TAKEOVER_JOBS} jobs created on the one then SIGKILLed; time until "
            "the other logs that it took them over (they run at their due time from then on)",
            f"per run (s): {each('{:.1f}', seconds)}",
        ],
    )]


SCENARIOS = {8: pg_post_jobs, 9: pg_lateness, 10: pg_takeover}
