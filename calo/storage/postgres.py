"""The PostgreSQL backend of the storage interface: several servers sharing one database.

Owns the connections to PostgreSQL and what servers must agree on:
- reads: an asyncio connection pool (psycopg_pool) on the IOLoop, so no read blocks it;
  a read that finds its pooled connection broken (PostgreSQL restarted) is tried once more
  on a fresh one;
- writes: `PostgresWriter`, one connection committing in groups (postgres_writer);
- the event log: `LogFollower` reads every committed event in seq order and hands it to
  the live feed, woken by LISTEN/NOTIFY, by this server's own commits, and by a poll
  (postgres_log);
- claims: every pending job is claimed by one server (`jobs.claimed_by`), the one that
  created or retried it, and only that server runs it (a pending job claimed by none, e.g.
  written by another tool, is taken over like a gone server's). Each server heartbeats every
  lease/5 seconds (`instances.heartbeat_at`, PostgreSQL's clock, so the servers' clocks
  need not agree); a server whose heartbeat is older than `--instance-lease` counts as
  gone, and the others take its pending jobs over at their next heartbeats (`FOR UPDATE
  SKIP LOCKED`: each job goes to one server), each its share (the claimable jobs divided
  by the live servers), earliest due first. A server that stops cleanly hands its jobs
  over at once (it marks itself gone);
- upkeep once: one server at a time holds a session advisory lock (`UPKEEP_LOCK`) on its
  heartbeat connection and runs the periodic upkeep and the JSON export (`runs_upkeep`);
  if it dies its session ends and another takes the lock at its next heartbeat;
- shared limits: `--max-pending` counts the pending jobs of the whole database (the sum
  of every server's `job_counts`, read at most every `PENDING_COUNT_TTL`); the Unsplash
  rate-limit pause is one row (`shared_state`) every server reads at each heartbeat; the
  Unsplash budget (calo.budget) lives in that row too: each reservation and each release
  reads the row and the calls every *live* server has reserved (`instances.calls_in_flight`:
  a dead server's stop counting when its lease runs out, a stopped one's at once), and
  writes the budget and this server's own count back in one statement that applies only
  if the row's `budget_version` is unchanged (optimistic: no lock is held while a loaded
  server's IOLoop turns). This server's count is held here and written whole, so
  a write that failed is put right by the next one, or by the next heartbeat.

Threads: IOLoop thread only, except `export_reader()`'s reader, which the exporter uses
on its own thread with its own (blocking) connection.
Must never: block the IOLoop on the network, or let a server settle a job it no longer
holds the claim for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg_pool

from calo.budget import Budget, BudgetReport
from calo.jobs import EVENT_FOR_STATUS, PENDING, RESOLVED, Job, Outcome
from calo.storage import postgres_writer as ops
from calo.storage.base import (
    CreateResult,
    DeletedBatch,
    Event,
    NotStored,
    OnClaimed,
    OnEvents,
    RetriedBatch,
    Storage,
    StoredActivity,
    StoreError,
    jobs_page_query,
)
from calo.storage.postgres_log import LogFollower
from calo.storage.postgres_schema import UPKEEP_LOCK, migrate
from calo.storage.postgres_writer import PostgresWriter, one_line
from calo.tokens import random_token

log = logging.getLogger("calo.storage")
T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 5
STOP_STEP_SECONDS = 5.0  # stopping waits this long at most for the heartbeat, the hand-over, the pool
POOL_TIMEOUT_SECONDS = 3.0  # a read waits this long for a connection, then fails (503)
BUDGET_TRIES = 5  # budget writes that lost the race to another server's before giving up for now
PENDING_COUNT_TTL = 1.0  # seconds a count of pending jobs is reused for --max-pending
TAKEOVER_BATCH = 5000  # jobs taken over per heartbeat at most
EXPORT_CHUNK = 2000
SHARDS = 64  # job_counts rows per status; each server writes one
# An event's lateness (resolved_at - due_at) in ms, from the job document it holds.
_LATENESS_MS = ("(extract(epoch FROM (job::json->>'resolved_at')::timestamptz)"
                " - extract(epoch FROM (job::json->>'due_at')::timestamptz)) * 1000.0")


# The shared budget, its version, and the calls the other live servers have reserved.
_READ_BUDGET = (
    "SELECT budget_remaining, budget_until, budget_version, (SELECT coalesce(sum(calls_in_flight), 0)"
    " FROM instances WHERE id <> %s AND heartbeat_at >= now() - make_interval(secs => %s)) FROM shared_state"
)
# The budget and this server's reservations, written in one statement only if no other
# server changed the budget (or reserved calls) since it was read; a row back if so.
_WRITE_BUDGET = (
    "WITH budget AS (UPDATE shared_state SET budget_remaining = %s, budget_until = %s,"
    " budget_version = budget_version + 1 WHERE budget_version = %s RETURNING 1)"
    " UPDATE instances SET calls_in_flight = %s WHERE id = %s AND EXISTS (SELECT 1 FROM budget) RETURNING 1"
)
_WRITE_RESERVED = "UPDATE instances SET calls_in_flight = %s WHERE id = %s"


def _connect_options() -> dict[str, Any]:
    # TCP keepalives notice a PostgreSQL that vanished without closing the connection.
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "keepalives": 1, "keepalives_idle": 5,
            "keepalives_interval": 2, "keepalives_count": 3}


def describe_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{user}{host}{port}{parts.path}"


class PostgresStorage(Storage):
    name = "postgresql"
    wal_checkpoint = False  # PostgreSQL checkpoints its own WAL
    shared = True

    def __init__(self, url: str, *, instance_lease: float = 10.0, pool_size: int = 4):
        self._url = url
        self.location = describe_url(url)
        self.instance_id = random_token()
        self.lease = instance_lease
        self._shard = random.randrange(SHARDS)
        self._pool = psycopg_pool.AsyncConnectionPool(
            url, min_size=1, max_size=max(1, pool_size), open=False, timeout=POOL_TIMEOUT_SECONDS,
            kwargs={"autocommit": True, **_connect_options()}, name="calo-read", reconnect_timeout=0,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: PostgresWriter | None = None
        self._follower: LogFollower | None = None
        self._heart: asyncio.Task[None] | None = None
        self._heart_conn: psycopg.AsyncConnection | None = None
        self._on_claimed: OnClaimed = lambda jobs: None
        self._on_rate_limit: Callable[[int], None] = lambda until: None
        self._pending_cache: tuple[float, int] | None = None
        self.runs_upkeep = False
        self._stopping = False
        self.rate_limited_until = 0
        self.last_heartbeat_error: str | None = None
        self._calls_reserved = 0  # this server's Unsplash calls reserved, not yet answered (the truth)
        self._budget_lock = asyncio.Lock()  # one budget transaction of this server at a time
        self._budget_unsure = False  # a budget write failed: the row may not hold `_calls_reserved`
        self._budget_tasks: set[asyncio.Task[Any]] = set()  # reservations and releases on their way

    # -- lifecycle ------------------------------------------------------------------------

    async def start(
        self, loop: asyncio.AbstractEventLoop, *, on_events: OnEvents, on_commit: OnEvents,
        on_death: Callable[[str], None], on_claimed: OnClaimed, on_rate_limit: Callable[[int], None],
    ) -> None:
        self._loop = loop
        self._on_claimed = on_claimed
        self._on_rate_limit = on_rate_limit
        self._heart_conn = await self._connect()
        try:
            await migrate(self._heart_conn)
            await self._heart_conn.execute(
                "INSERT INTO instances (id) VALUES (%s) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
                (self.instance_id,),
            )
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await self._heart_conn.close()
            raise StoreError(f"cannot use PostgreSQL at {self.location}: {one_line(exc)}") from None
        self._follower = LogFollower(self._url, self._pool, loop, on_events, _connect_options())
        self._writer = PostgresWriter(
            self._url, self.instance_id, self._shard, loop, _connect_options(),
            on_commit=self._committed(on_commit), on_reconnect=self._writer_reconnected,
        )
        await self._writer.start()
        await self._follower.start(await self.latest_seq())

    def _committed(self, on_commit: OnEvents) -> OnEvents:
        def committed(events: list[Event]) -> None:
            on_commit(events)
            if self._follower is not None:
                self._follower.wake()  # this server's sockets need not wait for the NOTIFY

        return committed

    def start_background(self) -> None:
        """Start heartbeating, taking over gone servers' jobs, and bidding for upkeep."""
        assert self._loop is not None
        self._heart = self._loop.create_task(self._heartbeat_forever(), name="calo-pg-heartbeat")

    async def stop(self, timeout: float = 10.0) -> bool:
        """Each step is bounded: the writer by `timeout` (writes it could not commit by
        then fail with CommitUnknown), the rest by a few seconds each."""
        if self._loop is None:
            return True
        self._stopping = True
        if self._heart is not None:
            self._heart.cancel()
            await asyncio.wait([self._heart], timeout=STOP_STEP_SECONDS)
        clean = True
        if self._writer is not None:
            clean = await self._writer.stop(timeout)
        if self._follower is not None:
            await self._follower.stop()
        if self._budget_tasks:  # the last calls' releases, so that the budget keeps what they said
            await asyncio.wait(list(self._budget_tasks), timeout=STOP_STEP_SECONDS)
        try:
            async with asyncio.timeout(STOP_STEP_SECONDS):
                await self._leave()
        except TimeoutError:
            log.warning("could not hand this server's jobs over in time; others take them after the lease")
        await self._pool.close(timeout=STOP_STEP_SECONDS)
        self._loop = None
        return clean

    async def _leave(self) -> None:
        """Mark this server gone, so others take its pending jobs over at once."""
        conn = self._heart_conn
        self._heart_conn = None
        if conn is None:
            return
        try:
            await conn.execute("UPDATE instances SET heartbeat_at = '-infinity', calls_in_flight = 0 WHERE id = %s",
                               (self.instance_id,))
        except psycopg.Error as exc:
            log.warning("could not hand this server's jobs over at stop (%s); others take them after the lease",
                        one_line(exc))
        await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            return await psycopg.AsyncConnection.connect(self._url, autocommit=True, **_connect_options())
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.location}: {one_line(exc)}") from None

    @property
    def write_failure(self) -> str | None:
        return self._writer.last_error if self._writer is not None else "not started"

    @property
    def writes_waiting(self) -> int:
        return self._writer.writes_waiting if self._writer is not None else 0

    def export_reader(self) -> PostgresExportReader:
        return PostgresExportReader(self._url)

    def describe(self) -> dict[str, object]:
        facts: dict[str, object] = {"backend": self.name, "instance": self.instance_id, "runs_upkeep": self.runs_upkeep}
        if self.last_heartbeat_error:
            facts["heartbeat_error"] = self.last_heartbeat_error
        if self._follower is not None and self._follower.listen_error:
            facts["listen_error"] = self._follower.listen_error
        return facts

    # -- heartbeat, takeover, upkeep lease, shared pause ---------------------------------

    async def _heartbeat_forever(self) -> None:
        every = max(0.2, self.lease / 5)
        while not self._stopping:
            await asyncio.sleep(every)
            try:
                await self.heartbeat()
                if self.last_heartbeat_error:
                    log.info("PostgreSQL heartbeat works again")
                self.last_heartbeat_error = None
            except (psycopg.Error, StoreError) as exc:
                if self.last_heartbeat_error is None:
                    log.error("PostgreSQL heartbeat failed: %s", one_line(exc))
                self.last_heartbeat_error = one_line(exc)
                self.runs_upkeep = False  # the lock went with the session, or soon will
                await self._drop_heart_conn()

    async def _drop_heart_conn(self) -> None:
        if self._heart_conn is not None:
            await self._heart_conn.close()
            self._heart_conn = None

    async def heartbeat(self) -> list[tuple[int, str]]:
        """One beat: say this server lives, take over gone servers' jobs (handed to
        `on_claimed`), bid for upkeep, read the shared rate-limit pause. Returns the jobs
        taken over. Raises psycopg.Error or StoreError."""
        if self._heart_conn is None or self._heart_conn.closed:
            self._heart_conn = await self._connect()
        conn = self._heart_conn
        await conn.execute(
            "INSERT INTO instances (id) VALUES (%s) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            (self.instance_id,),
        )
        taken = await self._take_over(conn)
        if taken:
            log.info("took over %d pending jobs of servers that stopped heartbeating", len(taken))
            self._on_claimed(taken)
        if not self.runs_upkeep:
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (UPKEEP_LOCK,))).fetchone()
            self.runs_upkeep = bool(row and row[0])
            if self.runs_upkeep:
                log.info("this server runs upkeep and the JSON export now")
        row = await (await conn.execute("SELECT rate_limited_until FROM shared_state")).fetchone()
        if row and row[0] > self.rate_limited_until:
            self.rate_limited_until = row[0]
            self._on_rate_limit(row[0])
        if self._budget_unsure and not self._budget_lock.locked():
            await self._budget_transaction(lambda budget, reserved: 0)  # writes this server's count whole
        return taken

    async def _take_over(self, conn: psycopg.AsyncConnection) -> list[tuple[int, str]]:
        cur = await conn.execute(
            "WITH gone AS (SELECT id FROM instances WHERE heartbeat_at < now() - make_interval(secs => %(lease)s)),"
            " live AS (SELECT greatest(1, count(*)) AS n FROM instances"
            "  WHERE heartbeat_at >= now() - make_interval(secs => %(lease)s)),"
            " claimable AS (SELECT num FROM jobs WHERE status = 'pending'"
            "  AND (claimed_by IS NULL OR claimed_by IN (SELECT id FROM gone))),"
            # This server's fair share (the live servers split them), earliest due first.
            " doomed AS (SELECT num FROM jobs WHERE num IN (SELECT num FROM claimable) ORDER BY due_at"
            "  LIMIT least(%(most)s, ceil((SELECT count(*) FROM claimable)::numeric / (SELECT n FROM live)))"
            "  FOR UPDATE SKIP LOCKED)"
            " UPDATE jobs SET claimed_by = %(me)s FROM doomed WHERE jobs.num = doomed.num RETURNING due_at, id",
            {"lease": self.lease, "most": TAKEOVER_BATCH, "me": self.instance_id},
        )
        taken = await cur.fetchall()
        # Servers gone for good with nothing left to hand over: forget them.
        await conn.execute(
            "DELETE FROM instances i WHERE heartbeat_at < now() - make_interval(secs => %s) AND NOT EXISTS"
            " (SELECT 1 FROM jobs WHERE status = 'pending' AND claimed_by = i.id)", (self.lease * 3,),
        )
        return sorted(taken)

    def share_rate_limit(self, until_ms: int) -> None:
        """The upstream's budget is spent until `until_ms`: tell every server (the next
        heartbeat of each applies it). Best effort: a failure is logged."""
        if until_ms <= self.rate_limited_until:
            return
        self.rate_limited_until = until_ms
        assert self._loop is not None
        self._loop.create_task(self._write_rate_limit(until_ms))

    async def _write_rate_limit(self, until_ms: int) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "UPDATE shared_state SET rate_limited_until = greatest(rate_limited_until, %s)", (until_ms,))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            log.warning("could not share the rate-limit pause with the other servers: %s", one_line(exc))

    # -- the Unsplash budget: one shared row, each live server's reservations -------------

    def reserve_calls(self, wanted: int, now: int) -> asyncio.Future[int]:
        return self._budget_task(self._budget_transaction(lambda budget, reserved: budget.grant(wanted, reserved, now)))

    def release_calls(self, count: int, report: BudgetReport | None, now: int) -> asyncio.Future[None]:
        self._calls_reserved = max(0, self._calls_reserved - count)  # written with the next transaction

        def learn(budget: Budget, reserved: int) -> int:
            if report is not None:
                budget.learn(report, now)
            return 0

        return self._budget_task(self._released(learn))

    async def _released(self, learn: Callable[[Budget, int], int]) -> None:
        await self._budget_transaction(learn)

    def _budget_task(self, transaction: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a budget transaction as a task that `stop` waits for (briefly)."""
        task = asyncio.get_running_loop().create_task(transaction)
        self._budget_tasks.add(task)
        task.add_done_callback(self._budget_tasks.discard)
        return task

    async def _budget_transaction(self, decide: Callable[[Budget, int], int]) -> int:
        """`decide(budget, calls reserved by every live server)` may change the budget, and
        returns how many calls this server reserves now; the budget and this server's
        whole count are written back. No lock is held across the round trips (a loaded
        server would hold up every other's calls): the write applies only if the budget's
        version is still the one read, else it is all done again (up to BUDGET_TRIES
        times, then nothing is reserved and the scheduler asks again later). A release
        that changes nothing shared writes only this server's count: another server that
        read it a moment before counts a call too many, never one too few. A failure is
        logged and reserves nothing (the next transaction, or heartbeat, writes the count)."""
        async with self._budget_lock:
            try:
                for _ in range(BUDGET_TRIES):
                    granted = await self._try_budget(decide)
                    if granted is not None:
                        self._calls_reserved += granted
                        self._budget_unsure = False
                        return granted
            except psycopg.Error as exc:
                if not self._budget_unsure:
                    log.warning("could not use the shared Unsplash budget (no call starts meanwhile): %s",
                                one_line(exc))
                self._budget_unsure = True
            return 0

    async def _try_budget(self, decide: Callable[[Budget, int], int]) -> int | None:
        """One read-decide-write round; None if another server wrote the budget meanwhile."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_READ_BUDGET, (self.instance_id, self.lease))).fetchone()
            assert row is not None
            remaining, until, version, others = row
            budget = Budget(remaining, until)
            granted = decide(budget, others + self._calls_reserved)
            if not granted and (budget.remaining, budget.until) == (remaining, until):
                await conn.execute(_WRITE_RESERVED, (self._calls_reserved, self.instance_id))
                return 0
            cur = await conn.execute(_WRITE_BUDGET, (budget.remaining, budget.until, version,
                                                     self._calls_reserved + granted, self.instance_id))
            return granted if await cur.fetchone() is not None else None

    def _writer_reconnected(self) -> None:
        assert self._loop is not None
        self._loop.create_task(self._reschedule_held())

    async def _reschedule_held(self) -> None:
        """A commit may have been lost in flight (created but answered 503): schedule
        every pending job this server holds again; a job scheduled twice is settled once."""
        try:
            held = await self._read_all(
                "SELECT due_at, id FROM jobs WHERE status = 'pending' AND claimed_by = %s ORDER BY due_at",
                (self.instance_id,),
            )
        except StoreError as exc:
            log.error("could not re-read this server's pending jobs after reconnecting: %s", exc)
            return
        self._on_claimed([(due_at, job_id) for due_at, job_id in held])

    # -- reads ----------------------------------------------------------------------------

    async def _read_all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement on a pooled connection. A connection found broken (the
        server restarted since it was pooled) is replaced and the read tried once more."""
        for attempt in (1, 2):
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(sql, params)
                    return await cur.fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise StoreError(f"PostgreSQL is unavailable: {one_line(exc)}") from None
            except psycopg_pool.PoolTimeout:
                raise StoreError("PostgreSQL is unavailable: no connection within "
                                 f"{POOL_TIMEOUT_SECONDS:g} s") from None
            except psycopg.Error as exc:
                raise StoreError(f"read failed: {one_line(exc)}") from None
        raise AssertionError("unreachable")

    async def _read_one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        rows = await self._read_all(sql, params)
        return rows[0] if rows else None

    async def job(self, job_id: str) -> str | None:
        row = await self._read_one("SELECT doc FROM jobs WHERE id = %s", (job_id,))
        return row[0] if row else None

    async def job_by_idempotency_key(self, key: str) -> tuple[str, str] | None:
        row = await self._read_one("SELECT id, doc FROM jobs WHERE idempotency_key = %s", (key,))
        return (row[0], row[1]) if row else None

    async def jobs_page(self, status: str | None, limit: int, before: int | None) -> list[tuple[int, str]]:
        rows = await self._read_all(*jobs_page_query(status, limit, before, "%s"))
        return [(num, doc) for num, doc in rows]

    async def jobs_to_schedule(self) -> list[tuple[int, str]]:
        """At start: the jobs of servers that are gone (this one's earlier life included,
        once its lease ran out; a clean stop hands them over at once)."""
        try:
            return await self.heartbeat()
        except psycopg.Error as exc:
            raise StoreError(f"cannot claim pending jobs: {one_line(exc)}") from None

    async def count_by_status(self) -> dict[str, int]:
        rows = await self._read_all("SELECT status, sum(n)::bigint FROM job_counts GROUP BY status HAVING sum(n) > 0")
        return {status: n for status, n in rows}

    async def pending_count(self) -> int:
        now = time.monotonic()
        if self._pending_cache is not None and now - self._pending_cache[0] < PENDING_COUNT_TTL:
            return self._pending_cache[1]
        row = await self._read_one("SELECT coalesce(sum(n), 0)::bigint FROM job_counts WHERE status = %s", (PENDING,))
        count = row[0] if row else 0
        self._pending_cache = (now, count)
        return count

    async def oldest_pending(self) -> tuple[str, int] | None:
        """This server's own: a gone server's jobs wait for their takeover, and must not make
        the live ones look stuck (and be restarted by their watchdogs)."""
        row = await self._read_one(
            "SELECT id, due_at FROM jobs WHERE status = 'pending' AND claimed_by = %s ORDER BY due_at LIMIT 1",
            (self.instance_id,),
        )
        return (row[0], row[1]) if row else None

    async def latest_seq(self) -> int:
        row = await self._read_one("SELECT last FROM event_seq")
        return row[0] if row else 0

    async def oldest_seq(self) -> int | None:
        row = await self._read_one("SELECT min(seq) FROM events")
        return row[0] if row else None

    async def events_after(self, seq: int, limit: int) -> list[Event]:
        rows = await self._read_all(
            "SELECT seq, type, job_id, job FROM events WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit))
        return [Event(*row) for row in rows]

    async def job_events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, int, str]]:
        rows = await self._read_all(
            "SELECT seq, type, created_at, job FROM events WHERE job_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (job_id, after, limit),
        )
        return [(seq, kind, at, doc) for seq, kind, at, doc in rows]

    async def activity_since(self, since_ms: int, up_to_seq: int, samples: int) -> StoredActivity:
        resolved = EVENT_FOR_STATUS[RESOLVED]
        counts = await self._read_all(
            f"SELECT created_at / 60000 * 60000 AS minute, type, count(*),"
            f" max(CASE WHEN type = %s THEN {_LATENESS_MS} END) FROM events"
            " WHERE created_at >= %s AND seq <= %s GROUP BY minute, type", (resolved, since_ms, up_to_seq),
        )
        sampled = await self._read_all(
            f"SELECT minute, late FROM (SELECT created_at / 60000 * 60000 AS minute, {_LATENESS_MS} AS late,"
            " row_number() OVER (PARTITION BY created_at / 60000 ORDER BY seq) AS n"
            " FROM events WHERE created_at >= %s AND seq <= %s AND type = %s) sample WHERE n <= %s",
            (since_ms, up_to_seq, resolved, samples),
        )
        return StoredActivity([(m, t, n, late) for m, t, n, late in counts], [(m, late) for m, late in sampled])

    # -- writes ---------------------------------------------------------------------------

    @property
    def _write(self) -> PostgresWriter:
        if self._writer is None:
            raise StoreError("the PostgreSQL storage is not started")
        return self._writer

    def create_job(self, job: Job, idempotency_key: str | None = None) -> asyncio.Future[CreateResult]:
        if self._pending_cache is not None:  # count it before the next read does
            self._pending_cache = (self._pending_cache[0], self._pending_cache[1] + 1)
        fn = ops.create_job(self.instance_id, job, idempotency_key)
        return self._write.submit(fn, new_job=job if idempotency_key is None else None)

    def apply_outcomes(self, outcomes: list[Outcome]) -> asyncio.Future[list[str | NotStored | None]]:
        return self._write.submit(ops.apply_outcomes(self.instance_id, outcomes))

    def retry_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        return self._write.submit(ops.retry_job(self.instance_id, job_id, at))

    def cancel_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        return self._write.submit(ops.cancel_job(self.instance_id, job_id, at))

    def retry_failed(self, after_num: int, limit: int, at: int) -> asyncio.Future[RetriedBatch]:
        return self._write.submit(ops.retry_failed(self.instance_id, after_num, limit, at))

    def prune_events(self, older_than_ms: int) -> asyncio.Future[int]:
        return self._write.submit(ops.prune_events(older_than_ms))

    def delete_settled_jobs(self, cutoff_ms: int, after_num: int, limit: int) -> asyncio.Future[DeletedBatch]:
        return self._write.submit(ops.delete_settled_jobs(cutoff_ms, after_num, limit))

    def checkpoint(self) -> asyncio.Future[tuple[int, int, int]]:
        future: asyncio.Future[tuple[int, int, int]] = asyncio.get_running_loop().create_future()
        future.set_result((0, 0, 0))  # nothing to do: PostgreSQL checkpoints its own WAL
        return future

    def ping(self) -> asyncio.Future[None]:
        return self._write.submit(ops.nothing)


class PostgresExportReader:
    """The JSON exporter's reader: a blocking connection on the exporter's thread, opened
    on first use and again after a failure."""

    def __init__(self, url: str):
        self._url = url
        self._conn: psycopg.Connection | None = None

    def iter_job_chunks(self, size: int = EXPORT_CHUNK) -> Iterator[tuple[int, str]]:
        """Every job's document, oldest first, from one snapshot (REPEATABLE READ)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._url, autocommit=False, **_connect_options())
            conn = self._conn
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                last = 0
                while True:
                    row = conn.execute(
                        "SELECT max(num), count(*), string_agg(doc, E',\\n' ORDER BY num) FROM"
                        " (SELECT num, doc FROM jobs WHERE num > %s ORDER BY num LIMIT %s) page", (last, size),
                    ).fetchone()
                    if row is None or not row[1]:
                        return
                    yield row[1], row[2]
                    last = row[0]
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"export read failed: {one_line(exc)}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
