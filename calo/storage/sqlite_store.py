"""The SQLite store: the schema and its migrations, reads, and the one group-committing writer.

Owns every SQL statement in Calo Jobs and the files `calo.db` (plus its WAL) and
`calo.lock` in the data dir. Jobs are kept as their public JSON document (`jobs.doc`)
with the fields that are queried (status, due time, idempotency key) as indexed columns.
Every change of a job appends an event to `events` in the same transaction. Triggers keep
`job_counts` (jobs per status) in step with `jobs`, so counting never scans the table.

Threads:
- `Reader` wraps one read-only connection and must be used on the thread that made it
  (the IOLoop thread has one, the JSON exporter has its own). In WAL mode a reader never
  waits for the writer; reads are indexed and bounded by a LIMIT.
- `Writer` owns the only write connection on its own thread: the one write path. Callers
  (any thread) submit tagged operations; operations that arrive together are committed
  in one transaction (group commit, `synchronous=FULL`), and each group's (tag, result,
  error) triples and events go to one `on_group` callback on the writer thread. It runs
  in the writer process (calo/storage/sqlite_writer.py), whose parent side answers with asyncio
  futures. A WAL checkpoint runs on the writer thread, between two groups, outside any
  transaction, and once more at stop.

Must never: import Tornado, block its caller on a commit, let one failing operation
undo the others of its group, or go on writing to a database file that is no longer
the one at its path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import fcntl
import json
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from calo.clock import iso_utc, now_ms
from calo.jobs import CANCELLED_EVENT, CREATED, EVENT_FOR_STATUS, FAILED, PENDING, RESOLVED, RETRIED, Job, Outcome
from calo.storage.base import (
    CreateResult,
    DeletedBatch,
    Event,
    NotCancellable,
    NotRetryable,
    NotStored,
    RetriedBatch,
    StoredActivity,
    StoreError,
    WrongStatus,
    jobs_page_query,
)

DB_FILE = "calo.db"
LOCK_FILE = "calo.lock"
BUSY_TIMEOUT_MS = 5000
PRIVATE_DIR = 0o700  # jobs, their photos and idempotency keys are nobody else's business
PRIVATE_FILE = 0o600
IDLE_CHECK_SECONDS = 1.0  # how often an idle writer checks that its database file is still there
EXPORT_CHUNK = 2000  # job documents per read of the JSON export
MAX_GROUP = 512  # operations committed together at most; bounds one transaction's time
CHECKPOINT_BUSY_MS = 200  # a checkpoint waits this long for readers, then leaves the rest for next time

# Each migration (a tuple of statements) runs in the same transaction as the
# `user_version` bump that records it. Append new ones; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            num INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, never reused
            id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            due_at INTEGER NOT NULL,                 -- ms since the epoch, UTC
            idempotency_key TEXT UNIQUE,
            doc TEXT NOT NULL                        -- the job as the API shows it (JSON)
        )""",
        "CREATE INDEX jobs_by_status ON jobs(status, num)",
        "CREATE INDEX jobs_pending_by_due ON jobs(due_at) WHERE status = 'pending'",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- a pruned seq is never reused
            type TEXT NOT NULL,
            job_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            job TEXT NOT NULL                        -- the job's document after the change
        )""",
        "CREATE INDEX events_by_time ON events(created_at)",
    ),
    (
        # Jobs by status, kept by triggers in the same transaction as every change, so
        # that /metrics and systemd's STATUS read three rows instead of counting them all.
        "CREATE TABLE job_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO job_counts SELECT status, COUNT(*) FROM jobs GROUP BY status",
        """CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO job_counts VALUES (NEW.status, 1) ON CONFLICT(status) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER job_counts_update AFTER UPDATE OF status ON jobs
        WHEN OLD.status IS NOT NEW.status BEGIN
            UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
            INSERT INTO job_counts VALUES (NEW.status, 1) ON CONFLICT(status) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
            UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
        END""",
    ),
    (
        # A job's own events, oldest first, for its timeline (GET /jobs/{id}/events).
        "CREATE INDEX events_by_job ON events(job_id, seq)",
    ),
    (
        # One row the health check rewrites: /readyz proves a real write reaches the disk
        # (an empty transaction writes nothing, so it passes on a full disk).
        "CREATE TABLE write_checks (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)",
    ),
)


# An event's lateness (resolved_at - due_at) in ms, from the job document it holds.
_LATENESS_MS = ("(julianday(json_extract(job, '$.resolved_at')) - julianday(json_extract(job, '$.due_at')))"
                " * 86400000.0")


def _connect(path: str, *, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rw'}"
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing opens a
    # transaction behind our back (and PRAGMA journal_mode runs outside one).
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _check_not_newer(version: int) -> None:
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{DB_FILE} has schema version {version}, newer than this calo-server knows "
            f"({len(MIGRATIONS)}); upgrade calo-server"
        )


def _migrate(conn: sqlite3.Connection) -> None:
    version = _schema_version(conn)
    _check_not_newer(version)
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _lock_data_dir(data_dir: str) -> int:
    """Hold an exclusive lock on the data dir for as long as the descriptor is open, so
    two servers never run the same jobs. Returns the lock file descriptor."""
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # whatever the umask, or an older server, left
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"data dir {data_dir} is in use by another calo-server") from None
    return fd


def _prepare_data_dir(data_dir: str) -> None:
    try:
        os.makedirs(data_dir, PRIVATE_DIR, exist_ok=True)
        info = os.stat(data_dir)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            # makedirs' mode is filtered by the umask, and a checked-out ./data is 0755:
            # the data dir holds only this server's files, so it is made private.
            os.chmod(data_dir, PRIVATE_DIR)
    except OSError as exc:
        raise StoreError(f"data dir {data_dir} cannot be created: {exc.strerror}") from None
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise StoreError(f"data dir {data_dir} is not writable by this user")


def _make_private(path: str) -> None:
    """Create `path` if missing, and make it and its WAL and shared-memory files readable
    by this user only: SQLite gives a new -wal or -shm file the mode of the database."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    for name in (path, path + "-wal", path + "-shm"):
        try:
            os.chmod(name, PRIVATE_FILE)
        except FileNotFoundError:
            pass


def _create_or_upgrade(path: str) -> None:
    _make_private(path)
    conn = _connect(path, readonly=False)
    try:
        _check_not_newer(_schema_version(conn))  # before anything writes to the file
        # WAL must be set outside any transaction; it persists in the file.
        conn.execute("PRAGMA journal_mode = WAL")
        _migrate(conn)
        # Take the write lock once now: a database some other program holds locked is
        # an error at start-up, not a failed write at the first POST.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


class Database:
    """An open, locked, up-to-date data dir. Make readers and the writer from it."""

    def __init__(self, data_dir: str):
        _prepare_data_dir(data_dir)
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, DB_FILE)
        self._lock_fd: int | None = _lock_data_dir(data_dir)
        try:
            _create_or_upgrade(self.path)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from None

    def import_jobs(self, job_docs: list[str]) -> int:
        """Fill an EMPTY database with these job documents (from a JSON export), in one
        transaction, their text made storable (`Job.from_export`). Raises StoreError,
        changing nothing, if it already holds jobs or a job is not valid."""
        jobs = []
        for number, doc in enumerate(job_docs, start=1):
            try:
                jobs.append(Job.from_export(json.loads(doc)))
            except (ValueError, RecursionError) as exc:
                raise StoreError(f"import refused, job {number} of the export is not valid: {exc}") from None
        conn = _connect(self.path, readonly=False)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT EXISTS (SELECT 1 FROM jobs)").fetchone()[0]:
                conn.execute("ROLLBACK")
                raise StoreError(f"{self.path} already holds jobs; import only into an empty or missing database")
            rows = ((job.id, job.status, job.due_at, job.to_json()) for job in jobs)
            conn.executemany("INSERT INTO jobs (id, status, due_at, doc) VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"import failed, nothing was changed: {exc}") from None
        finally:
            conn.close()
        return len(jobs)

    def reader(self) -> Reader:
        """A new Reader, to be used only on the calling thread."""
        return Reader(self.path)

    def close(self) -> None:
        """Release the data-dir lock (close readers and stop the writer first)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Reader:
    """Read-only queries. Use only on the thread that created it."""

    def __init__(self, path: str):
        self._conn = _connect(path, readonly=True)

    def close(self) -> None:
        self._conn.close()

    def job(self, job_id: str) -> str | None:
        """The job's JSON document, or None."""
        row = self._conn.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        doc: str | None = row[0] if row else None
        return doc

    def job_by_idempotency_key(self, key: str) -> tuple[str, str] | None:
        """(id, document) of the job created with this key, if any."""
        row: tuple[str, str] | None = self._conn.execute(
            "SELECT id, doc FROM jobs WHERE idempotency_key = ?", (key,)
        ).fetchone()
        return row

    def jobs_page(self, status: str | None, limit: int, before: int | None) -> list[tuple[int, str]]:
        """Up to `limit` (num, doc) pairs, newest first, with num < `before` if given."""
        rows: list[tuple[int, str]] = self._conn.execute(*jobs_page_query(status, limit, before, "?")).fetchall()
        return rows

    def pending_due(self) -> list[tuple[int, str]]:
        """(due_at, id) of every pending job, earliest first."""
        sql = "SELECT due_at, id FROM jobs WHERE status = ? ORDER BY due_at"
        rows: list[tuple[int, str]] = self._conn.execute(sql, (PENDING,)).fetchall()
        return rows

    def count_by_status(self) -> dict[str, int]:
        """Jobs per status; three rows kept by triggers, not a count of the table."""
        rows = self._conn.execute("SELECT status, n FROM job_counts WHERE n > 0")
        return dict(rows.fetchall())

    def oldest_pending(self) -> tuple[str, int] | None:
        """(id, due_at) of the pending job due first, or None. One index step: the
        partial index is named because the planner would otherwise scan by status."""
        sql = ("SELECT id, due_at FROM jobs INDEXED BY jobs_pending_by_due"
               " WHERE status = 'pending' ORDER BY due_at LIMIT 1")
        row: tuple[str, int] | None = self._conn.execute(sql).fetchone()
        return row

    def latest_seq(self) -> int:
        """The highest event seq ever assigned (0 if none), even if since pruned."""
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        seq: int = row[0] if row else 0
        return seq

    def oldest_seq(self) -> int | None:
        """The lowest event seq still kept, or None when no event is."""
        seq: int | None = self._conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
        return seq

    def events_after(self, seq: int, limit: int) -> list[Event]:
        sql = "SELECT seq, type, job_id, job FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
        return [Event(*row) for row in self._conn.execute(sql, (seq, limit))]

    def job_events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, int, str]]:
        """Up to `limit` (seq, type, created_at ms, job document) of one job's retained
        events with seq > `after`, oldest first (one index range)."""
        sql = ("SELECT seq, type, created_at, job FROM events WHERE job_id = ? AND seq > ?"
               " ORDER BY seq LIMIT ?")
        return self._conn.execute(sql, (job_id, after, limit)).fetchall()

    def activity_since(self, since_ms: int, up_to_seq: int, samples: int) -> StoredActivity:
        """The events committed since `since_ms` with seq <= `up_to_seq`, by minute: how
        many of each type, (for `job.resolved`) the largest lateness, and up to `samples`
        lateness values per minute. SQLite counts and samples, so Python sees a few
        thousand rows at most, however busy the hour was."""
        resolved = EVENT_FOR_STATUS[RESOLVED]
        counts = self._conn.execute(
            f"SELECT created_at / 60000 * 60000 AS minute, type, COUNT(*),"
            f" MAX(CASE WHEN type = ? THEN {_LATENESS_MS} END) FROM events"
            " WHERE created_at >= ? AND seq <= ? GROUP BY minute, type", (resolved, since_ms, up_to_seq),
        ).fetchall()
        sampled = self._conn.execute(
            f"SELECT minute, late FROM (SELECT created_at / 60000 * 60000 AS minute, {_LATENESS_MS} AS late,"
            " ROW_NUMBER() OVER (PARTITION BY created_at / 60000 ORDER BY seq) AS n"
            " FROM events WHERE created_at >= ? AND seq <= ? AND type = ?) WHERE n <= ?",
            (since_ms, up_to_seq, resolved, samples),
        ).fetchall()
        return StoredActivity(counts, sampled)

    def iter_job_chunks(self, size: int = EXPORT_CHUNK) -> Iterator[tuple[int, str]]:
        """Every job's document, oldest first, from one consistent snapshot, as
        (count, documents joined by ",\n") chunks. SQLite joins them, so Python (and the
        GIL) runs once per chunk, not once per job."""
        sql = (
            "SELECT max(num), count(*), group_concat(doc, ',\n') FROM "
            "(SELECT num, doc FROM jobs WHERE num > ? ORDER BY num LIMIT ?)"
        )
        self._conn.execute("BEGIN")
        try:
            last = 0
            while True:
                last_num, count, text = self._conn.execute(sql, (last, size)).fetchone()
                if not count:
                    return
                yield count, text
                last = last_num
        finally:
            self._conn.execute("COMMIT")


# -- writes ------------------------------------------------------------------------------

WriteFn = Callable[[sqlite3.Connection, list[Event]], Any]


@dataclasses.dataclass
class _Op:
    """One requested write, as the writer thread runs it."""

    tag: object  # how the caller knows it (the writer process's request number)
    fn: WriteFn
    bare: bool = False  # runs after the group's transaction, outside any (a WAL checkpoint)
    new_job: Job | None = None  # a create without a key: the group inserts these together


Completion = tuple[object, Any, BaseException | None]  # (tag, result, error) of one _Op


def _append_event(conn: sqlite3.Connection, events: list[Event], kind: str, job: Job, job_json: str) -> None:
    cursor = conn.execute(
        "INSERT INTO events (type, job_id, created_at, job) VALUES (?, ?, ?, ?)",
        (kind, job.id, now_ms(), job_json),
    )
    lateness = None
    if kind == EVENT_FOR_STATUS[RESOLVED] and job.resolved_at is not None:
        lateness = job.resolved_at - job.due_at
    due_at = job.due_at if job.status == PENDING and kind in (CREATED, RETRIED) else None
    events.append(Event(_inserted_rowid(cursor), kind, job.id, job_json, lateness, due_at))


def _inserted_rowid(cursor: sqlite3.Cursor) -> int:
    """The rowid an INSERT just assigned (sqlite3 gives None only after other statements)."""
    if cursor.lastrowid is None:
        raise StoreError("an INSERT reported no rowid")
    return cursor.lastrowid


def _create_job(job: Job, idempotency_key: str | None) -> WriteFn:
    def write(conn: sqlite3.Connection, events: list[Event]) -> CreateResult:
        if idempotency_key is not None:
            row = conn.execute(
                "SELECT id, doc FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if row:
                return CreateResult(row[0], row[1], created=False)
        job_json = job.to_json()
        conn.execute(
            "INSERT INTO jobs (id, status, due_at, idempotency_key, doc) VALUES (?, ?, ?, ?, ?)",
            (job.id, job.status, job.due_at, idempotency_key, job_json),
        )
        _append_event(conn, events, CREATED, job, job_json)
        return CreateResult(job.id, job_json, created=True)

    return write


# A group's new jobs and their events, each inserted by one statement from one JSON array
# of [id, status, due_at, doc]: two statements (two trips between Python and SQLite) per
# group instead of two per job.
_INSERT_NEW_JOBS = (
    "INSERT INTO jobs (id, status, due_at, doc) SELECT json_extract(value, '$[0]'),"
    " json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]')"
    " FROM json_each(?) ORDER BY key"
)
_INSERT_CREATED_EVENTS = (
    "INSERT INTO events (type, job_id, created_at, job) SELECT ?, json_extract(value, '$[0]'), ?,"
    " json_extract(value, '$[3]') FROM json_each(?) ORDER BY key"
)


def _insert_new_jobs(conn: sqlite3.Connection, events: list[Event], jobs: list[Job]) -> list[CreateResult]:
    created = [CreateResult(job.id, job.to_json(), created=True) for job in jobs]
    rows = json.dumps([[job.id, job.status, job.due_at, new.job_json] for job, new in zip(jobs, created, strict=True)])
    conn.execute(_INSERT_NEW_JOBS, (rows,))
    # One statement under the write lock: the events' seqs are consecutive, ending at lastrowid.
    last_seq = _inserted_rowid(conn.execute(_INSERT_CREATED_EVENTS, (CREATED, now_ms(), rows)))
    first_seq = last_seq - len(created) + 1
    events.extend(
        Event(first_seq + n, CREATED, new.job_id, new.job_json, due_at=job.due_at)
        for n, (job, new) in enumerate(zip(jobs, created, strict=True))
    )
    return created


def _apply_one_outcome(conn: sqlite3.Connection, events: list[Event], outcome: Outcome) -> str | None:
    row = conn.execute("SELECT doc FROM jobs WHERE id = ?", (outcome.job_id,)).fetchone()
    if row is None:
        return None
    job = Job.from_json(row[0])
    if job.status != PENDING:
        return None  # already settled: a job never resolves twice
    kind = job.apply(outcome)
    job_json = job.to_json()
    conn.execute("UPDATE jobs SET status = ?, doc = ? WHERE id = ?", (job.status, job_json, job.id))
    _append_event(conn, events, kind, job, job_json)
    return job.status


# What a job's data can raise on its way into SQLite (text that is not valid UTF-8, an
# integer past 64 bits, a document that is not JSON). The database's own failures
# (sqlite3.OperationalError: disk full, I/O error, locked) fail the whole group instead.
_DATA_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, sqlite3.DataError, sqlite3.IntegrityError)


def _apply_isolated(conn: sqlite3.Connection, events: list[Event], outcome: Outcome) -> str | None | NotStored:
    """Apply one outcome in its own savepoint: if its data cannot be written, only its
    own changes are undone and the others of its batch still commit."""
    own_events: list[Event] = []
    conn.execute("SAVEPOINT outcome")
    try:
        status = _apply_one_outcome(conn, own_events, outcome)
    except _DATA_ERRORS as exc:
        conn.execute("ROLLBACK TO outcome")
        conn.execute("RELEASE outcome")
        return NotStored(f"{type(exc).__name__}: {ascii(str(exc))[1:-1][:300]}")
    conn.execute("RELEASE outcome")
    events.extend(own_events)
    return status


def _apply_outcomes(outcomes: list[Outcome]) -> WriteFn:
    def write(conn: sqlite3.Connection, events: list[Event]) -> list[str | None | NotStored]:
        return [_apply_isolated(conn, events, outcome) for outcome in outcomes]

    return write


def _save_changed(conn: sqlite3.Connection, events: list[Event], kind: str, job: Job) -> str:
    """Write a job changed by the user (retried, cancelled) with its event; its new document."""
    job_json = job.to_json()
    conn.execute(
        "UPDATE jobs SET status = ?, due_at = ?, doc = ? WHERE id = ?", (job.status, job.due_at, job_json, job.id),
    )
    _append_event(conn, events, kind, job, job_json)
    return job_json


def _change_job(job_id: str, refusal: type[WrongStatus], change: Callable[[Job], None], kind: str) -> WriteFn:
    """Apply `change` to the job if its status is `refusal.needed`, else raise `refusal`."""

    def write(conn: sqlite3.Connection, events: list[Event]) -> str | None:
        row = conn.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = Job.from_json(row[0])
        if job.status != refusal.needed:
            raise refusal(job.status)
        change(job)
        return _save_changed(conn, events, kind, job)

    return write


def _retry_job(job_id: str, at: int) -> WriteFn:
    return _change_job(job_id, NotRetryable, lambda job: job.retry(at), RETRIED)


def _cancel_job(job_id: str, at: int) -> WriteFn:
    return _change_job(job_id, NotCancellable, lambda job: job.cancel(at), CANCELLED_EVENT)


def _retry_failed(after_num: int, limit: int, at: int) -> WriteFn:
    """Retry up to `limit` failed jobs in creation order after `after_num` (the
    `jobs_by_status` index: a bounded range, not a scan). A job that fails again while
    later batches run is behind the cursor, so a bulk retry always ends."""

    def write(conn: sqlite3.Connection, events: list[Event]) -> RetriedBatch:
        rows = conn.execute(
            "SELECT num, doc FROM jobs WHERE status = ? AND num > ? ORDER BY num LIMIT ?", (FAILED, after_num, limit),
        ).fetchall()
        retried = []
        for _, doc in rows:
            job = Job.from_json(doc)
            job.retry(at)
            _save_changed(conn, events, RETRIED, job)
            retried.append(job.id)
        return RetriedBatch(retried, rows[-1][0] if rows else after_num, done=len(rows) < limit)

    return write


def _prune_events(older_than_ms: int) -> WriteFn:
    def write(conn: sqlite3.Connection, events: list[Event]) -> int:
        return conn.execute("DELETE FROM events WHERE created_at < ?", (older_than_ms,)).rowcount

    return write


def _write_check(at: int) -> WriteFn:
    """Rewrite the one row of `write_checks`: a write that must reach the disk."""

    def write(conn: sqlite3.Connection, events: list[Event]) -> None:
        conn.execute("INSERT OR REPLACE INTO write_checks (id, at) VALUES (1, ?)", (at,))

    return write


def _delete_settled_jobs(cutoff_ms: int, after_num: int, limit: int) -> WriteFn:
    """Delete resolved and failed jobs settled before the cutoff, walking at most `limit`
    jobs in creation order from `after_num`: a bounded step on the primary key, not a
    scan. The walk ends at the first job created after the cutoff (none later can have
    settled before it); pending jobs and late settlers on the way are kept and stepped over."""
    cutoff = iso_utc(cutoff_ms)  # documents hold ISO times, which sort like the times

    def write(conn: sqlite3.Connection, events: list[Event]) -> DeletedBatch:
        rows = conn.execute(
            "SELECT num, status, json_extract(doc, '$.created_at'), json_extract(doc, '$.resolved_at')"
            " FROM jobs WHERE num > ? ORDER BY num LIMIT ?", (after_num, limit),
        ).fetchall()
        doomed: list[int] = []
        last_num = after_num
        for num, status, created_at, resolved_at in rows:
            if created_at >= cutoff:
                return DeletedBatch(_delete_nums(conn, doomed), last_num, done=True)
            if status != PENDING and resolved_at is not None and resolved_at < cutoff:
                doomed.append(num)
            last_num = num
        return DeletedBatch(_delete_nums(conn, doomed), last_num, done=len(rows) < limit)

    return write


def _delete_nums(conn: sqlite3.Connection, nums: list[int]) -> int:
    conn.executemany("DELETE FROM jobs WHERE num = ?", ((num,) for num in nums))
    return len(nums)


def _checkpoint(conn: sqlite3.Connection, events: list[Event]) -> tuple[int, int, int]:
    """Copy the WAL into the database and truncate it, waiting at most briefly for
    readers (the writer thread must not stall): (busy, wal frames, frames copied).
    busy=1 means a reader held an old snapshot; the next checkpoint finishes the job."""
    conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS}")
    try:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy, frames, copied
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


class _OperationFailed(Exception):
    """An operation of a group raised; the group is run again, each in a savepoint."""


class WriteRequests:
    """The writes the rest of Calo Jobs may ask for, each answered by an asyncio future on
    the caller's loop. Every method returns at once. Implemented by the server's side of
    the writer process (`calo.storage.sqlite_writer.WriterProcess`), whose `_request` carries
    the operation's name and arguments to the store's `Writer` in the child."""

    def _request(self, name: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        raise NotImplementedError

    def create_job(self, job: Job, idempotency_key: str | None = None) -> asyncio.Future[CreateResult]:
        """Future of a CreateResult."""
        return self._request("create_job", (job, idempotency_key))

    def apply_outcomes(self, outcomes: list[Outcome]) -> asyncio.Future[list[str | NotStored | None]]:
        """Future of each job's new status (None where it was not pending, `NotStored`
        where that outcome's data could not be written), in order: one operation (and
        one wake-up of the caller) for a whole batch of photos, each outcome isolated."""
        return self._request("apply_outcomes", (outcomes,))

    def retry_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        """Future of the job's new document (pending, due at `at`), None if there is no
        such job; raises NotRetryable unless it is failed."""
        return self._request("retry_job", (job_id, at))

    def cancel_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        """Future of the job's new document (cancelled at `at`), None if there is no such
        job; raises NotCancellable unless it is pending."""
        return self._request("cancel_job", (job_id, at))

    def retry_failed(self, after_num: int, limit: int, at: int) -> asyncio.Future[RetriedBatch]:
        """Future of a RetriedBatch: up to `limit` failed jobs after `after_num` made
        pending again, due at `at`, each with its `job.retried` event."""
        return self._request("retry_failed", (after_num, limit, at))

    def prune_events(self, older_than_ms: int) -> asyncio.Future[int]:
        """Future of how many events created before `older_than_ms` were deleted."""
        return self._request("prune_events", (older_than_ms,))

    def ping(self) -> asyncio.Future[None]:
        """Future of None once a real write (the one row of `write_checks`) has committed:
        the health check, so that a full disk shows as not ready."""
        return self._request("ping", (now_ms(),))

    def delete_settled_jobs(self, cutoff_ms: int, after_num: int, limit: int) -> asyncio.Future[DeletedBatch]:
        """Future of a DeletedBatch: one bounded batch of job retention (no events)."""
        return self._request("delete_settled_jobs", (cutoff_ms, after_num, limit))

    def checkpoint(self) -> asyncio.Future[tuple[int, int, int]]:
        """Future of (busy, wal frames, frames copied) of a TRUNCATE WAL checkpoint, run
        on the writer thread outside any transaction (SQLite refuses one inside)."""
        return self._request("checkpoint", ())


class _Plans:
    """The writer thread's side of each `WriteRequests` method, under the same name (the
    name and the arguments are what cross the pipe from the server): the `_Op` that runs
    it in the next group."""

    @staticmethod
    def create_job(tag: object, job: Job, key: str | None) -> _Op:
        """A create without a key is inserted together with the group's others."""
        return _Op(tag, _create_job(job, key), new_job=job if key is None else None)

    @staticmethod
    def apply_outcomes(tag: object, outcomes: list[Outcome]) -> _Op:
        return _Op(tag, _apply_outcomes(outcomes))

    @staticmethod
    def retry_job(tag: object, job_id: str, at: int) -> _Op:
        return _Op(tag, _retry_job(job_id, at))

    @staticmethod
    def cancel_job(tag: object, job_id: str, at: int) -> _Op:
        return _Op(tag, _cancel_job(job_id, at))

    @staticmethod
    def retry_failed(tag: object, after_num: int, limit: int, at: int) -> _Op:
        return _Op(tag, _retry_failed(after_num, limit, at))

    @staticmethod
    def prune_events(tag: object, older_than_ms: int) -> _Op:
        return _Op(tag, _prune_events(older_than_ms))

    @staticmethod
    def ping(tag: object, at: int) -> _Op:
        return _Op(tag, _write_check(at))

    @staticmethod
    def delete_settled_jobs(tag: object, cutoff_ms: int, after_num: int, limit: int) -> _Op:
        return _Op(tag, _delete_settled_jobs(cutoff_ms, after_num, limit))

    @staticmethod
    def checkpoint(tag: object) -> _Op:
        """Bare: SQLite refuses a checkpoint inside the group's transaction."""
        return _Op(tag, _checkpoint, bare=True)


WRITES = frozenset(name for name in vars(WriteRequests) if not name.startswith("_"))  # what may cross the pipe


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path` now, or None if there is none (or it cannot
    be reached any more)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Writer:
    """The one write connection, on its own thread, committing requests in groups.

    `submit(tag, name, args)` queues the `WriteRequests` method `name` (see `_Plans`) from any
    thread. After each group, on the writer thread, `on_group(completions, events)` gets
    every operation's (tag, result, error) and the events the commit appended. Each group
    is a unit of failure: one failing operation is undone alone (savepoints), a failing
    commit fails its group (nothing of it stored), and the thread goes on.

    It stops taking writes for good, and says why by `on_fatal(reason)` once, when it can
    no longer trust its connection: the database file at `path` was removed or replaced
    by another (checked before every group, and every IDLE_CHECK_SECONDS when idle), a
    rollback failed, or the thread met an error it does not know. From then on every
    operation fails with that reason (certainly not stored) until `stop`.
    """

    def __init__(self, path: str, on_group: Callable[[list[Completion], list[Event]], None],
                 on_fatal: Callable[[str], None] = lambda reason: None):
        self._path = path
        self._on_group = on_group
        self._on_fatal = on_fatal
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()  # None: stop
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._identity: tuple[int, int] | None = None
        self._refusing: str | None = None  # why every write now fails
        self._thread = threading.Thread(target=self._run, name="calo-writer", daemon=True)

    def start(self) -> None:
        """Open the connection on the writer thread; raises StoreError if it cannot."""
        self._thread.start()
        self._ready.result()

    def submit(self, tag: object, name: str, args: tuple[Any, ...]) -> None:
        """Queue one operation. Safe from any thread. Raises StoreError for a name that is
        no `WriteRequests` method."""
        if name not in WRITES:
            raise StoreError(f"no such write: {name!r}")
        plan: Callable[..., _Op] = getattr(_Plans, name)
        self._queue.put(plan(tag, *args))

    def stop(self) -> None:
        """Commit what was submitted, checkpoint and truncate the WAL (so that `calo.db`
        alone holds everything), close. Idempotent; safe from any thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = _connect(self._path, readonly=False)
            conn.execute("PRAGMA synchronous = FULL")  # a 201 means on disk, not in a cache
            self._identity = _file_identity(self._path)
        except sqlite3.Error as exc:
            self._ready.set_exception(StoreError(f"cannot open {self._path} for writing: {exc}"))
            return
        self._ready.set_result(None)
        try:
            while self._serve_one_group(conn):
                pass
            if self._refusing is None:
                self._final_checkpoint(conn)
        except BaseException as exc:  # never silently: the server hears it and restarts
            self._refuse(f"the writer thread failed: {exc!r}")
            raise
        finally:
            conn.close()

    def _next_group(self) -> tuple[list[_Op], bool]:
        """The operations waiting (at most MAX_GROUP), and whether stop was asked."""
        try:
            queued = [self._queue.get(timeout=IDLE_CHECK_SECONDS)]
        except queue.Empty:
            return [], False
        while len(queued) < MAX_GROUP:
            try:
                queued.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [op for op in queued if op is not None], None in queued

    def _serve_one_group(self, conn: sqlite3.Connection) -> bool:
        """Commit the next group of operations; False once asked to stop."""
        group, stopping = self._next_group()
        if self._refusing is None:
            self._check_file()
        if not group:
            return not stopping
        if self._refusing is not None:
            self._hand_over([(op.tag, None, StoreError(self._refusing)) for op in group], [])
            return not stopping
        try:
            completions, events = self._commit(conn, [op for op in group if not op.bare])
            completions += [self._run_bare(conn, op) for op in group if op.bare]
        except Exception as exc:  # a failed rollback, or a bug: nothing of the group committed
            self._refuse(f"the writer stopped after an unexpected error: {exc!r}")
            completions, events = [(op.tag, None, StoreError(self._refusing)) for op in group], []
        self._hand_over(completions, events)
        return not stopping

    def _hand_over(self, completions: list[Completion], events: list[Event]) -> None:
        try:
            self._on_group(completions, events)
        except Exception as exc:  # its callers would never hear: stop taking writes, loudly
            self._refuse(f"the writer could not hand over a group's results: {exc!r}")

    def _check_file(self) -> None:
        """Is `path` still the file this connection writes to? A removed or replaced
        database would take writes that no restart ever sees."""
        now = _file_identity(self._path)
        if now != self._identity:
            what = "removed" if now is None else "replaced by another file"
            self._refuse(f"{self._path} was {what} while the server ran; writes stopped")

    def _refuse(self, reason: str) -> None:
        if self._refusing is None:
            self._refusing = reason
            self._on_fatal(reason)

    def _final_checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # readers finish their read
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            busy = f"{exc}"
        if busy:
            print(f"calo-writer: the WAL checkpoint at stop did not finish ({busy}); calo.db needs "
                  "its -wal file until the next start", file=sys.stderr)

    def _run_bare(self, conn: sqlite3.Connection, op: _Op) -> Completion:
        try:
            return op.tag, op.fn(conn, []), None
        except sqlite3.Error as exc:
            return op.tag, None, StoreError(f"{op.fn.__name__.strip('_')} failed: {exc}")

    def _commit(self, conn: sqlite3.Connection, group: list[_Op]) -> tuple[list[Completion], list[Event]]:
        """Commit a group in one transaction. Operations run plainly first (failures are
        rare); if one raises, the group is rolled back and run again with each operation
        in its own savepoint, so that only the failing one is undone. If the commit itself
        fails (a full disk), nothing of the group is stored and each operation says so."""
        if not group:
            return [], []
        try:
            try:
                return self._run_group(conn, group, isolated=False)
            except _OperationFailed:
                return self._run_group(conn, group, isolated=True)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # if this raises, _serve_one_group stops the writer
            return [(op.tag, None, StoreError(f"write failed: {exc}")) for op in group], []

    def _run_group(
        self, conn: sqlite3.Connection, group: list[_Op], isolated: bool,
    ) -> tuple[list[Completion], list[Event]]:
        """Plainly, the group's new jobs are inserted together first, then the other
        operations run one by one; isolated, every operation runs alone in a savepoint."""
        events: list[Event] = []
        completions: list[Completion] = []
        conn.execute("BEGIN IMMEDIATE")
        if isolated:
            completions = [self._run_in_savepoint(conn, op, events) for op in group]
        else:
            try:
                creates = [op for op in group if op.new_job is not None]
                if creates:
                    results = _insert_new_jobs(conn, events, [op.new_job for op in creates if op.new_job])
                    completions.extend((op.tag, result, None) for op, result in zip(creates, results, strict=True))
                completions.extend((op.tag, op.fn(conn, events), None) for op in group if op.new_job is None)
            except Exception:  # run again, isolated, by _commit
                conn.execute("ROLLBACK")
                raise _OperationFailed from None
        conn.execute("COMMIT")
        return completions, events

    @staticmethod
    def _run_in_savepoint(conn: sqlite3.Connection, op: _Op, events: list[Event]) -> Completion:
        """Run one operation so that its failure undoes only its own writes."""
        own_events: list[Event] = []
        conn.execute("SAVEPOINT op")
        try:
            result = op.fn(conn, own_events)
        except Exception as exc:  # handed to the caller's future, not swallowed
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return op.tag, None, exc
        conn.execute("RELEASE op")
        events.extend(own_events)
        return op.tag, result, None
