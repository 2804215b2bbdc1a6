"""The PostgreSQL writer: one connection, one asyncio task, committing in groups.

Owns every write the PostgreSQL backend makes. Operations submitted together are
committed in one transaction (group commit: one fsync, and one turn on the event
sequence, for a whole group); a group's creates without an Idempotency-Key are inserted
by one statement. If an operation fails, the group is rolled back and run again with
each operation in its own savepoint, so only the failing one is undone (as in calo.storage.sqlite_store).

Event order is commit order. A group's events get their seqs last, just before COMMIT,
from the one row of `event_seq` (`UPDATE ... SET last = last + n`): that row lock is held
until the transaction ends, so the next writer (of any server) reads `last` only after
this one has committed and become visible. Hence a reader that sees seq N committed sees
every seq below N too, and a cursor (`seq > N`) never skips an event that committed late,
which a plain sequence or bigserial would (numbers are handed out at insert time, not in
commit order). The seq statement also sends `NOTIFY calo_events`, delivered at COMMIT.
It is the last statement before COMMIT and one round trip, so the row is held for about
a round trip; `idle_in_transaction_session_timeout` ends the session (and frees the row)
of a server that is stopped (SIGSTOP) in between.

Claims: a job is created claimed by this server (`claimed_by`), and an outcome applies
only to a job that is still pending AND still claimed by this server, so a server that
was paused past its lease, and whose jobs another server took over, cannot settle them
a second time (its outcome reads None: not this server's any more).

Job counts are kept per status in this server's own `job_counts` rows (its `shard`), in
the same transaction, so counting never scans and servers never queue on one row.

Arrays are sent in binary (`%b`): in text format psycopg quotes each element and escapes
every `"` of a JSON document through a Python regex callback, about 0.2 ms per document
on the IOLoop (20 ms for a group of 100 outcomes, measured; binary: 1.4 ms), and under
load that grew the groups and with them the stalls (bench scenario 9).

Threads: IOLoop thread only: `submit` and the task's coroutine. psycopg's async
connection never blocks the loop.
Must never: block the IOLoop, leave a future unresolved (every one gets a result or a
StoreError), or let one failing operation undo the others of its group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from calo.clock import iso_utc, now_ms
from calo.jobs import CANCELLED_EVENT, CREATED, EVENT_FOR_STATUS, FAILED, PENDING, RESOLVED, RETRIED, Job, Outcome
from calo.storage.base import (
    CommitUnknown,
    CreateResult,
    DeletedBatch,
    Event,
    NotCancellable,
    NotRetryable,
    NotStored,
    RetriedBatch,
    StoreError,
    WrongStatus,
)

log = logging.getLogger("calo.storage")

MAX_GROUP = 512  # operations per transaction at most
IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000  # frees the seq row of a server stopped mid-commit
IDLE_PROBE_SECONDS = 1.0  # a connection unused this long is checked before a group uses it
STATEMENT_TIMEOUT_MS = 30_000  # a write waiting longer (a lock held by a stuck server) fails


@dataclasses.dataclass
class Changes:
    """What a group's operations wrote, for the seq statement and the counters."""

    # (type, job id, document, lateness ms, due_at): the fields of an Event after its seq
    events: list[tuple[str, str, str, int | None, int | None]] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # status -> delta

    def event(self, kind: str, job: Job, job_json: str) -> None:
        lateness = job.resolved_at - job.due_at if kind == EVENT_FOR_STATUS[RESOLVED] and job.resolved_at else None
        due_at = job.due_at if job.status == PENDING and kind in (CREATED, RETRIED) else None
        self.events.append((kind, job.id, job_json, lateness, due_at))

    def count(self, status: str, delta: int) -> None:
        self.counts[status] = self.counts.get(status, 0) + delta

    def moved(self, old: str, new: str) -> None:
        if old != new:
            self.count(old, -1)
            self.count(new, 1)


Cursor = psycopg.AsyncCursor[Any]
Result = tuple[Any, BaseException | None]  # an operation's result, or the error it raised
OpFn = Callable[[Cursor, Changes], Awaitable[Any]]


@dataclasses.dataclass
class _Op:
    fn: OpFn
    future: asyncio.Future[Any]
    new_job: Job | None = None  # a create without a key: the group inserts these together


class PostgresWriter:
    """The write connection of one server. `start`, then `submit` operations (the
    factories below make them), then `stop`."""

    def __init__(self, url: str, instance_id: str, shard: int, loop: asyncio.AbstractEventLoop,
                 connect_options: dict[str, Any], *, on_commit: Callable[[list[Event]], None],
                 on_reconnect: Callable[[], None]):
        """`on_commit(events)` runs after each commit that appended events, once its
        futures are completed. `on_reconnect()` runs after a connection was lost while a
        COMMIT was on its way, once a new one is open: that commit may have happened,
        unknown to its callers, so the caller re-reads its claims."""
        self._url = url
        self._connect_options = connect_options
        self.instance_id = instance_id
        self._shard = shard
        self._loop = loop
        self._on_commit = on_commit
        self._on_reconnect = on_reconnect
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._conn: psycopg.AsyncConnection | None = None
        self._committing = False  # the current group's COMMIT has been sent
        self._last_used = time.monotonic()  # when a group last used the connection
        self._ambiguous = False  # a COMMIT's answer was lost: on_reconnect once reconnected
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None  # why the last group failed to reach the database
        self.writes_waiting = 0  # submitted, future not yet done

    async def start(self) -> None:
        """Connect (raises StoreError) and start committing."""
        self._conn = await self._connect()
        self._task = self._loop.create_task(self._run(), name="calo-pg-writer")

    async def stop(self, timeout: float) -> bool:
        """Commit what was submitted, then close; True if that took under `timeout`
        seconds, else what is still waiting fails with CommitUnknown. Idempotent."""
        if self._task is None:
            return True
        task, self._task = self._task, None  # submit() refuses from now on
        self._queue.put_nowait(None)
        done, _ = await asyncio.wait([task], timeout=timeout)
        if not done:
            log.error("PostgreSQL writer: still busy after %g s at stop; its writes' outcome is unknown", timeout)
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
            while not self._queue.empty():
                op = self._queue.get_nowait()
                if op is not None:
                    _fail([op], CommitUnknown("the server stopped before this write's commit was known"))
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        return bool(done)

    def submit(self, fn: OpFn, new_job: Job | None = None) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        if self._task is None:
            future.set_exception(StoreError("the PostgreSQL writer is not running"))
        else:
            self._queue.put_nowait(_Op(fn, future, new_job))
            self.writes_waiting += 1
            future.add_done_callback(self._answered)
        return future

    def _answered(self, future: asyncio.Future[Any]) -> None:
        self.writes_waiting -= 1

    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            return await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, **self._connect_options,
                options=f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
                        f" -c statement_timeout={STATEMENT_TIMEOUT_MS}",
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {one_line(exc)}") from None

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            group = [await self._queue.get()]
            while len(group) < MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            stopping = None in group
            ops = [op for op in group if op is not None and not op.future.cancelled()]
            if ops:
                try:
                    await self._commit(ops)
                except asyncio.CancelledError:  # stop() gave up on this group
                    _fail(ops, CommitUnknown("the server stopped before this write's commit was known"))
                    raise
                except Exception as exc:  # a bug here must not leave callers waiting forever
                    log.exception("PostgreSQL writer: a group failed unexpectedly")
                    _fail(ops, StoreError(f"write failed: {exc!r}"))

    async def _commit(self, ops: list[_Op]) -> None:
        """Commit a group; a connection found dead before its COMMIT was sent (PostgreSQL
        restarted since the last group) is replaced and the group run once more."""
        for attempt in (1, 2):
            try:
                results, events = await self._commit_on(await self._connection(), ops)
                break
            except (psycopg.OperationalError, psycopg.InterfaceError, StoreError) as exc:
                self._broken(exc)
                if attempt == 1 and not self._committing and not isinstance(exc, StoreError):
                    continue  # nothing of it was committed: safe to run again
                # If the COMMIT was sent, it may have happened: callers retry with their
                # Idempotency-Key, and on_reconnect re-reads this server's claims.
                self._ambiguous = self._ambiguous or self._committing
                _fail(ops, StoreError(f"PostgreSQL is unavailable: {self.last_error}"))
                return
            except psycopg.Error as exc:
                _fail(ops, StoreError(f"write failed: {one_line(exc)}"))
                return
        if self.last_error is not None:
            log.info("PostgreSQL writer: writes work again")
        self.last_error = None
        for op, (result, error) in zip(ops, results, strict=True):
            if op.future.done():
                continue
            if error is None:
                op.future.set_result(result)
            else:
                op.future.set_exception(error)
        if events:
            self._on_commit(events)

    async def _commit_on(self, conn: psycopg.AsyncConnection, ops: list[_Op]) -> tuple[list[Result], list[Event]]:
        self._committing = False
        if all(op.new_job is not None for op in ops):
            return await self._create_only(conn, ops)
        try:
            return await self._run_group(conn, ops, isolated=False)
        except _OperationFailed:
            return await self._run_group(conn, ops, isolated=True)

    async def _create_only(self, conn: psycopg.AsyncConnection, ops: list[_Op]) -> tuple[list[Result], list[Event]]:
        """The busiest group, only keyless creates: ONE statement in autocommit mode (the
        jobs, their count and their events), so a group costs one round trip."""
        changes = Changes()
        jobs = [op.new_job for op in ops if op.new_job is not None]
        created = self._created(changes, jobs)
        self._committing = True  # the statement commits by itself
        events = await self._finish(conn.cursor(), changes, jobs, created)
        return [(result, None) for result in created], events

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is not None and time.monotonic() - self._last_used > IDLE_PROBE_SECONDS:
            await self._probe()
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                await self._conn.close()
            self._conn = None
            self._conn = await self._connect()
            if self._ambiguous:
                self._ambiguous = False
                self._on_reconnect()
        self._last_used = time.monotonic()
        return self._conn

    async def _probe(self) -> None:
        """After a quiet spell, check the connection before a group uses it (PostgreSQL may
        have restarted meanwhile): a dead one is replaced, and nothing is ambiguous."""
        assert self._conn is not None
        try:
            await self._conn.execute("SELECT 1")
        except (psycopg.OperationalError, psycopg.InterfaceError):
            await self._conn.close()

    def _broken(self, exc: BaseException) -> None:
        self.last_error = str(exc) if isinstance(exc, StoreError) else one_line(exc)
        log.warning("PostgreSQL writer: %s", self.last_error)

    async def _run_group(
        self, conn: psycopg.AsyncConnection, ops: list[_Op], isolated: bool,
    ) -> tuple[list[Result], list[Event]]:
        """Plainly, the group's keyless creates go in one statement, then the other
        operations run one by one; isolated, each operation runs alone in a savepoint."""
        changes = Changes()
        async with conn.transaction():
            cur = conn.cursor()
            jobs: list[Job] = []
            created: list[CreateResult] = []
            if isolated:
                results = [await _in_savepoint(conn, op, changes) for op in ops]
            else:
                try:
                    results, jobs, created = await self._plainly(cur, ops, changes)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception:  # rolled back here, run again isolated by _commit
                    raise _OperationFailed from None
            events = await self._finish(cur, changes, jobs, created)
            self._committing = True  # leaving the block sends COMMIT
        return results, events

    async def _plainly(
        self, cur: Cursor, ops: list[_Op], changes: Changes,
    ) -> tuple[list[Result], list[Job], list[CreateResult]]:
        """Every operation but the keyless creates, whose jobs the last statement inserts."""
        results: dict[int, Result] = {}
        creates = [(index, op.new_job) for index, op in enumerate(ops) if op.new_job is not None]
        jobs = [job for _, job in creates]
        created = self._created(changes, jobs)
        results.update({index: (result, None) for (index, _), result in zip(creates, created, strict=True)})
        for index, op in enumerate(ops):
            if op.new_job is None:
                results[index] = (await op.fn(cur, changes), None)
        return [results[index] for index in range(len(ops))], jobs, created

    @staticmethod
    def _created(changes: Changes, jobs: list[Job]) -> list[CreateResult]:
        created = [CreateResult(job.id, job.to_json(), created=True) for job in jobs]
        for job, new in zip(jobs, created, strict=True):
            changes.event(CREATED, job, new.job_json)
        if jobs:
            changes.count(PENDING, len(jobs))
        return created

    async def _finish(
        self, cur: Cursor, changes: Changes, jobs: Sequence[Job] = (), created: Sequence[CreateResult] = (),
    ) -> list[Event]:
        """The last statement of a group: its new keyless jobs, its counters and its
        events with their seqs, in one round trip."""
        statuses, deltas = (list(column) for column in zip(*changes.counts.items(), strict=True)) \
            if changes.counts else ([], [])
        if not changes.events:
            if statuses:
                await cur.execute(_COUNT, (self._shard, statuses, deltas))
            return []
        kinds, ids, docs, _, _ = (list(column) for column in zip(*changes.events, strict=True))
        await cur.execute(_FINISH, {
            "me": self.instance_id, "new_ids": [job.id for job in jobs], "new_due": [job.due_at for job in jobs],
            "new_docs": [new.job_json for new in created], "shard": self._shard, "statuses": statuses,
            "deltas": deltas, "n": len(kinds), "at": now_ms(), "types": kinds, "ids": ids, "docs": docs,
        })
        row = await cur.fetchone()
        assert row is not None  # the counter row exists from the first migration on
        first = row[0] - len(kinds) + 1
        return [Event(first + n, *event) for n, event in enumerate(changes.events)]




class _OperationFailed(Exception):
    """An operation of a group raised; the group is run again, each in a savepoint."""


async def _in_savepoint(conn: psycopg.AsyncConnection, op: _Op, changes: Changes) -> Result:
    """Run one operation so that its failure undoes only its own writes."""
    own = Changes()
    try:
        async with conn.transaction():  # a savepoint, inside the group's transaction
            result = await op.fn(conn.cursor(), own)
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise
    except Exception as exc:  # handed to the caller's future, not swallowed
        return None, exc if isinstance(exc, WrongStatus | StoreError) else StoreError(f"write failed: {exc!r}")
    changes.events.extend(own.events)
    for status, delta in own.counts.items():
        changes.count(status, delta)
    return result, None


def _fail(ops: list[_Op], error: BaseException) -> None:
    for op in ops:
        if not op.future.done():
            op.future.set_exception(error)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- operations: each makes the coroutine one group runs for it --------------------------

def create_job(instance_id: str, job: Job, idempotency_key: str | None) -> OpFn:
    """A new pending job claimed by this server, or the job created with this key before
    (by any server: the key is unique in the table, and a concurrent insert of the same
    key waits for the other transaction, then finds its job)."""

    async def write(cur: Cursor, changes: Changes) -> CreateResult:
        job_json = job.to_json()
        await cur.execute(
            "INSERT INTO jobs (id, status, due_at, idempotency_key, claimed_by, doc) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING num",
            (job.id, job.status, job.due_at, idempotency_key, instance_id, job_json),
        )
        if await cur.fetchone() is None:
            await cur.execute("SELECT id, doc FROM jobs WHERE idempotency_key = %s", (idempotency_key,))
            earlier = await cur.fetchone()
            if earlier is None:  # deleted in between by retention: the key is free again
                raise StoreError("the Idempotency-Key's job was just deleted; try again")
            return CreateResult(earlier[0], earlier[1], created=False)
        changes.event(CREATED, job, job_json)
        changes.count(PENDING, 1)
        return CreateResult(job.id, job_json, created=True)

    return write


def apply_outcomes(instance_id: str, outcomes: list[Outcome]) -> OpFn:
    """Each job's new status; None where it is not pending or not this server's;
    `NotStored` where its data could not be written (the others still are)."""

    async def write(cur: Cursor, changes: Changes) -> list[str | None | NotStored]:
        await cur.execute(
            "SELECT id, doc FROM jobs WHERE id = ANY(%b) AND status = 'pending' AND claimed_by = %s"
            " ORDER BY id FOR UPDATE",  # one lock order for every writer: no deadlock
            (list({outcome.job_id for outcome in outcomes}), instance_id),
        )
        jobs = {job_id: Job.from_json(doc) for job_id, doc in await cur.fetchall()}
        statuses: list[str | None | NotStored] = []
        changed: list[tuple[int, str, Job]] = []  # (index in outcomes, event type, job)
        for outcome in outcomes:
            job = jobs.get(outcome.job_id)
            if job is None or job.status != PENDING:
                statuses.append(None)  # settled, or taken over by another server
                continue
            kind = job.apply(outcome)
            changed.append((len(statuses), kind, job))
            statuses.append(job.status)
        refused = await _save_outcomes(cur, changed)
        for index, kind, job in changed:
            refusal = refused.get(index)
            if refusal is not None:
                statuses[index] = refusal
                continue
            changes.event(kind, job, job.to_json())
            changes.moved(PENDING, job.status)
        return statuses

    return write


_UPDATE_SETTLED = (
    "UPDATE jobs SET status = u.status, doc = u.doc,"
    " claimed_by = CASE WHEN u.status = 'pending' THEN jobs.claimed_by END"
    " FROM unnest(%b::text[], %b::text[], %b::text[]) AS u(id, status, doc) WHERE jobs.id = u.id"
)
# What a job's data can raise on its way into PostgreSQL (text that cannot be encoded, a NUL,
# a number out of range). Connection failures fail the whole group instead.
_DATA_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, psycopg.DataError, psycopg.IntegrityError)


async def _save_outcomes(cur: Cursor, changed: list[tuple[int, str, Job]]) -> dict[int, NotStored]:
    """Write the changed jobs in one statement; if their data is refused, each alone in a
    savepoint. Returns the refusals by index."""
    if not changed:
        return {}
    try:
        async with cur.connection.transaction():
            jobs = [job for _, _, job in changed]
            columns = ([job.id for job in jobs], [job.status for job in jobs], [job.to_json() for job in jobs])
            await cur.execute(_UPDATE_SETTLED, columns)
        return {}
    except _DATA_ERRORS:
        pass
    refused: dict[int, NotStored] = {}
    for index, _, job in changed:
        try:
            async with cur.connection.transaction():
                await cur.execute(_UPDATE_SETTLED, ([job.id], [job.status], [job.to_json()]))
        except _DATA_ERRORS as exc:
            refused[index] = NotStored(f"{type(exc).__name__}: {ascii(str(exc))[1:-1][:300]}")
    return refused


def _change_job(instance_id: str, job_id: str, refusal: type[WrongStatus], change: Callable[[Job], None],
                kind: str) -> OpFn:
    """Apply `change` to the job if its status is `refusal.needed`, else raise `refusal`
    (before writing anything). A job that is pending afterwards is claimed by this server."""

    async def write(cur: Cursor, changes: Changes) -> str | None:
        await cur.execute("SELECT doc FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        job = Job.from_json(row[0])
        if job.status != refusal.needed:
            raise refusal(job.status)
        before = job.status
        change(job)
        return await _save_changed(cur, changes, instance_id, kind, job, before)

    return write


async def _save_changed(cur: Cursor, changes: Changes, instance_id: str, kind: str, job: Job, before: str) -> str:
    job_json = job.to_json()
    await cur.execute(
        "UPDATE jobs SET status = %s, due_at = %s, doc = %s, claimed_by = %s WHERE id = %s",
        (job.status, job.due_at, job_json, instance_id if job.status == PENDING else None, job.id),
    )
    changes.event(kind, job, job_json)
    changes.moved(before, job.status)
    return job_json


def cancel_job(instance_id: str, job_id: str, at: int) -> OpFn:
    """Whoever holds it, a job still pending is cancelled (its server's outcome is then
    refused: the job is no longer pending)."""
    return _change_job(instance_id, job_id, NotCancellable, lambda job: job.cancel(at), CANCELLED_EVENT)


def retry_failed(instance_id: str, after_num: int, limit: int, at: int) -> OpFn:
    """Up to `limit` failed jobs after `after_num`, back to pending and claimed by this server."""

    async def write(cur: Cursor, changes: Changes) -> RetriedBatch:
        await cur.execute(
            "SELECT num, doc FROM jobs WHERE status = %s AND num > %s ORDER BY num LIMIT %s FOR UPDATE",
            (FAILED, after_num, limit),
        )
        rows = await cur.fetchall()
        retried = []
        for _, doc in rows:
            job = Job.from_json(doc)
            job.retry(at)
            await _save_changed(cur, changes, instance_id, RETRIED, job, FAILED)
            retried.append(job.id)
        return RetriedBatch(retried, rows[-1][0] if rows else after_num, done=len(rows) < limit)

    return write


def retry_job(instance_id: str, job_id: str, at: int) -> OpFn:
    """A failed job back to pending, claimed by this server (which schedules it)."""
    return _change_job(instance_id, job_id, NotRetryable, lambda job: job.retry(at), RETRIED)


def prune_events(older_than_ms: int) -> OpFn:
    async def write(cur: Cursor, changes: Changes) -> int:
        await cur.execute("DELETE FROM events WHERE created_at < %s", (older_than_ms,))
        return cur.rowcount

    return write


def delete_settled_jobs(cutoff_ms: int, after_num: int, limit: int) -> OpFn:
    """One bounded batch of retention, walking jobs in creation order (as calo.storage.sqlite_store's)."""
    cutoff = iso_utc(cutoff_ms)  # documents hold ISO times, which sort like the times

    async def write(cur: Cursor, changes: Changes) -> DeletedBatch:
        await cur.execute(
            "SELECT num, status, doc::json->>'created_at', doc::json->>'resolved_at'"
            " FROM jobs WHERE num > %s ORDER BY num LIMIT %s", (after_num, limit),
        )
        rows = await cur.fetchall()
        doomed: list[int] = []
        last_num, done = after_num, len(rows) < limit
        for num, status, created_at, resolved_at in rows:
            if created_at >= cutoff:
                done = True
                break
            if status != PENDING and resolved_at is not None and resolved_at < cutoff:
                doomed.append(num)
            last_num = num
        if doomed:
            await cur.execute("DELETE FROM jobs WHERE num = ANY(%b) RETURNING status", (doomed,))
            for (status,) in await cur.fetchall():
                changes.count(status, -1)
        return DeletedBatch(len(doomed), last_num, done)

    return write


async def nothing(cur: Cursor, changes: Changes) -> None:
    """A write that proves the writer reaches the database and commits (readiness)."""
    await cur.execute("SELECT 1")


# -- statements ---------------------------------------------------------------------------

_COUNT = (
    "INSERT INTO job_counts (shard, status, n) SELECT %s, s, d FROM unnest(%b::text[], %b::bigint[]) AS u(s, d)"
    " ON CONFLICT (shard, status) DO UPDATE SET n = job_counts.n + EXCLUDED.n"
)
# A group's last statement: its keyless new jobs, its counters, and its events, whose seqs
# are taken from event_seq at the end of the transaction (see the module docstring).
_FINISH = (
    "WITH created AS (INSERT INTO jobs (id, status, due_at, claimed_by, doc)"
    "  SELECT id, 'pending', due_at, %(me)s, doc"
    "  FROM unnest(%(new_ids)b::text[], %(new_due)b::bigint[], %(new_docs)b::text[]) AS u(id, due_at, doc)),"
    " counted AS (INSERT INTO job_counts (shard, status, n)"
    "  SELECT %(shard)s, s, d FROM unnest(%(statuses)b::text[], %(deltas)b::bigint[]) AS c(s, d)"
    "  ON CONFLICT (shard, status) DO UPDATE SET n = job_counts.n + EXCLUDED.n),"
    " counter AS (UPDATE event_seq SET last = last + %(n)s RETURNING last),"
    " appended AS (INSERT INTO events (seq, type, job_id, created_at, job)"
    "  SELECT counter.last - %(n)s + e.ord, e.type, e.job_id, %(at)s, e.doc FROM counter,"
    "  unnest(%(types)b::text[], %(ids)b::text[], %(docs)b::text[]) WITH ORDINALITY AS e(type, job_id, doc, ord))"
    " SELECT last, pg_notify('calo_events', last::text) FROM counter"
)
