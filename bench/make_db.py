"""Generate a Calo Jobs database with many jobs, fast: the benchmarks' large data sets.

Owns building a data dir with N resolved and M pending jobs. The schema comes from the
server's own code path (`calo.store.Database(data_dir)` creates and migrates `calo.db`);
the rows are then bulk-inserted with sqlite3 in big transactions, each job's document
made by `calo.jobs.Job.to_json()` (see bench/jobdocs.py), consistent with the columns of
`calo/store.py` (jobs: num, id, status, due_at, idempotency_key, doc). Rows go in creation
order: resolved jobs spread over the past 30 days, then the pending ones. The `events`
table is left empty: no scenario replays old events (a server starts with `seq` 0).

Building through HTTP would take an hour for 1,000,000 jobs; this takes about a minute.

    python -m bench.make_db DATA_DIR --resolved 900000 --pending 100000 --due-in 2592000

Must never: touch a data dir a server is using (the server's lock is taken while the
schema is made, so this fails rather than write under a running server).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.jobdocs import image_pool, pending_job, resolved_job  # noqa: E402
from calo.clock import now_ms  # noqa: E402
from calo.jobs import Job  # noqa: E402
from calo.store import DB_FILE, MIGRATIONS, Database  # noqa: E402

BATCH = 50_000  # rows per transaction
HISTORY_MS = 30 * 86_400_000  # resolved jobs were created over the last 30 days
GENERATOR_VERSION = 1  # bump when the rows made here change, to invalidate caches

INSERT = "INSERT INTO jobs (id, status, due_at, idempotency_key, doc) VALUES (?, ?, ?, NULL, ?)"


def spread_due(count: int, start_ms: int, seconds: float, seed: int = 1) -> list[int]:
    """`count` due times drawn uniformly from [start_ms, start_ms + seconds)."""
    rng = random.Random(seed)
    return [start_ms + int(rng.random() * seconds * 1000) for _ in range(count)]


def even_due(count: int, start_ms: int, per_second: float) -> list[int]:
    """`count` due times at a steady `per_second` rate from `start_ms`."""
    return [start_ms + int(i * 1000 / per_second) for i in range(count)]


def _resolved_jobs(count: int, seed: int) -> Iterator[Job]:
    rng, images = random.Random(seed), image_pool(500, seed)
    first = now_ms() - HISTORY_MS
    for i in range(count):
        yield resolved_job(first + i * HISTORY_MS // max(count, 1), images, rng)


def _pending_jobs(due_times: Sequence[int]) -> Iterator[Job]:
    created_at = now_ms()
    for due_at in due_times:
        yield pending_job(min(created_at, due_at), due_at)


def _insert(conn: sqlite3.Connection, jobs: Iterator[Job]) -> int:
    rows, count = [], 0
    for job in jobs:
        rows.append((job.id, job.status, job.due_at, job.to_json()))
        if len(rows) == BATCH:
            count += _insert_batch(conn, rows)
            rows = []
    return count + _insert_batch(conn, rows)


def _insert_batch(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    conn.execute("BEGIN")
    conn.executemany(INSERT, rows)
    conn.execute("COMMIT")
    return len(rows)


def make_db(data_dir: str, *, resolved: int, pending_due: Sequence[int], seed: int = 0) -> str:
    """Create `data_dir`/calo.db with `resolved` resolved jobs and one pending job per
    due time (ms since the epoch); returns the database path. The file is checkpointed
    (no WAL left beside it), so it can be copied as one file."""
    Database(data_dir).close()  # the server's own schema and migrations; releases the lock
    path = os.path.join(data_dir, DB_FILE)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a generator: a crash here just reruns it
        _insert(conn, _resolved_jobs(resolved, seed))
        _insert(conn, _pending_jobs(pending_due))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path


def cached_db(cache_dir: str, *, resolved: int, pending: int, due_in_s: float = 30 * 86_400) -> str:
    """A data dir with `resolved` resolved jobs and `pending` pending ones due from
    `due_in_s` seconds after it was made (over one day, so none falls due during a
    benchmark), built once per cache dir; returns the data dir to copy from."""
    name = f"jobs-{resolved}r-{pending}p-schema{len(MIGRATIONS)}-gen{GENERATOR_VERSION}"
    data_dir = os.path.join(cache_dir, name)
    done = os.path.join(data_dir, "complete")
    if not os.path.exists(done):
        started = time.monotonic()
        due = spread_due(pending, now_ms() + int(due_in_s * 1000), 86_400)
        make_db(data_dir, resolved=resolved, pending_due=due)
        open(done, "w").close()
        print(f"bench: generated {name} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return data_dir


def sample_ids(db_path: str, count: int, out_path: str, seed: int = 2) -> int:
    """Write the ids of `count` jobs drawn at random from the database, one a line, for
    wrk's Lua script; returns how many were written."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        last = conn.execute("SELECT MAX(num) FROM jobs").fetchone()[0] or 0
        nums = random.Random(seed).sample(range(1, last + 1), min(count, last))
        ids = []
        for start in range(0, len(nums), 500):
            chunk = nums[start:start + 500]
            marks = ",".join("?" * len(chunk))
            ids += [row[0] for row in conn.execute(f"SELECT id FROM jobs WHERE num IN ({marks})", chunk)]
    finally:
        conn.close()
    with open(out_path, "w", encoding="ascii") as out:
        out.write("".join(f"{job_id}\n" for job_id in ids))
    return len(ids)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--resolved", type=int, default=900_000, help="resolved jobs (default 900000)")
    parser.add_argument("--pending", type=int, default=100_000, help="pending jobs (default 100000)")
    parser.add_argument("--due-in", type=float, default=60.0, help="first pending job due in S seconds")
    parser.add_argument("--spread", type=float, default=60.0, help="pending due times spread over S seconds")
    args = parser.parse_args(argv)
    due = spread_due(args.pending, now_ms() + int(args.due_in * 1000), args.spread)
    print(make_db(args.data_dir, resolved=args.resolved, pending_due=due))
    return 0


if __name__ == "__main__":
    sys.exit(main())
