"""The storage interface: what the rest of Calo Jobs may ask of a database, documented once.

Two backends implement it: `calo.storage.sqlite` (the embedded default: one data dir, one
server) and `calo.storage.postgres` (several servers on one PostgreSQL). The web layer,
the scheduler, the hub, health and upkeep see only this class; `calo.storage.open_storage`
picks the backend from the settings.

Every operation is a coroutine or returns an `asyncio.Future` on the server's loop. Reads
never block the IOLoop for longer than an indexed lookup in a local file (SQLite) and never
wait on the network (PostgreSQL reads are asynchronous). Writes are durable when their
future completes: a `CreateResult` means the job is committed (fsync'd) and will run.

Errors: any operation may raise `StoreError` (one line for the operator: the database is
unreachable or refuses the write; nothing was committed), or its subclasses `WriterBusy`
(too many writes wait already: nothing was committed) and `CommitUnknown` (the write was
handed over but its answer never came: the caller cannot know and must retry
idempotently). `retry_job` raises `NotRetryable`.

Threads: every method is called on the IOLoop thread, except `export_reader()`, whose
result is used on the exporter's own thread.
Must never: import Tornado, or let a caller see which backend runs.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

from calo.jobs import FAILED, PENDING

if TYPE_CHECKING:
    from calo.budget import BudgetReport
    from calo.jobs import Job, Outcome

__all__ = [
    "CallBudget", "CommitUnknown", "CreateResult", "DeletedBatch", "Event", "ExportReader", "NotCancellable",
    "NotRetryable", "NotStored", "RetriedBatch", "Storage", "StoreError", "StoredActivity", "WriterBusy", "WrongStatus",
]

# -- the values and errors every backend hands back (they cross the SQLite writer's pipe) --


class StoreError(Exception):
    """The database cannot be opened or used; the message is one line for the operator.
    Raised by a write, it means that write was certainly not stored."""


class CommitUnknown(StoreError):
    """The write reached the writer but its answer did not come back (the writer died,
    stopped, or took longer than the time limit): it may or may not be stored. Retrying
    with the same Idempotency-Key is safe."""


class WriterBusy(StoreError):
    """Too many writes are already waiting for the writer; this one was not stored."""


class Event(NamedTuple):
    seq: int
    type: str
    job_id: str
    job_json: str
    lateness_ms: int | None = None  # resolved_at - due_at, on a fresh resolution (for metrics)
    due_at: int | None = None  # when a job created or put back to pending is due (for the scheduler)


class WrongStatus(Exception):
    """The job is not in a status that allows this change; `status` is its current one."""

    needed = "?"

    def __init__(self, status: str):
        super().__init__(f"job is {status}, not {self.needed}")
        self.status = status

    def __reduce__(self) -> tuple[type[WrongStatus], tuple[str]]:
        return type(self), (self.status,)  # it crosses the pipe from the writer process


class NotRetryable(WrongStatus):
    """Only a failed job can be retried."""

    needed = FAILED


class NotCancellable(WrongStatus):
    """Only a pending job can be cancelled."""

    needed = PENDING


class StoredActivity(NamedTuple):
    """What `Storage.activity_since` reads: (minute start ms, event type, count, max lateness
    ms or None) and (minute start ms, lateness ms) samples."""

    counts: list[tuple[int, str, int, float | None]]
    samples: list[tuple[int, float]]


class CreateResult(NamedTuple):
    job_id: str
    job_json: str
    created: bool  # False: the idempotency key was used before, this is that job


class NotStored(NamedTuple):
    """An outcome whose job could not be written with it (its data, not the database,
    was at fault); the job was left as it was. `reason` is one line for the log."""

    reason: str


class RetriedBatch(NamedTuple):
    job_ids: list[str]  # now pending, due at the batch's `at`
    last_num: int  # where the next batch starts (exclusive)
    done: bool  # no failed job is left after `last_num`


class DeletedBatch(NamedTuple):
    deleted: int
    last_num: int  # where the next batch starts (exclusive)
    done: bool  # reached jobs created after the cutoff: nothing older is left to look at


def jobs_page_query(status: str | None, limit: int, before: int | None,
                    placeholder: str) -> tuple[str, tuple[str | int, ...]]:
    """The SELECT of up to `limit` (num, doc) rows, newest first, of `status` if given and
    with num < `before` if given, and its parameters, written with the driver's
    `placeholder` ("?" for sqlite3, "%s" for psycopg). Both backends page alike."""
    where: list[str] = []
    params: list[str | int] = []
    if status is not None:
        where.append(f"status = {placeholder}")
        params.append(status)
    if before is not None:
        where.append(f"num < {placeholder}")
        params.append(before)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return f"SELECT num, doc FROM jobs {clause}ORDER BY num DESC LIMIT {placeholder}", (*params, limit)


# -- the interface -------------------------------------------------------------------------

OnEvents = Callable[[list[Event]], None]


class OutcomeWriter(Protocol):
    """What the scheduler needs of a storage: a place to apply outcomes."""

    def apply_outcomes(self, outcomes: list[Outcome]) -> asyncio.Future[list[str | NotStored | None]]: ...


class CallBudget(Protocol):
    """What the scheduler needs of a storage: the Unsplash budget, shared by every server
    using it (calo.budget says how it is counted)."""

    def reserve_calls(self, wanted: int, now: int) -> asyncio.Future[int]: ...

    def release_calls(self, count: int, report: BudgetReport | None, now: int) -> asyncio.Future[None]: ...


OnClaimed = Callable[[list[tuple[int, str]]], None]


class ExportReader(Protocol):
    """A reader for the JSON exporter's thread (made and used on that thread only)."""

    def iter_job_chunks(self) -> Iterator[tuple[int, str]]:
        """Every job's document, oldest first, from one consistent snapshot, as
        (count, documents joined by ",\\n") chunks."""

    def close(self) -> None: ...


class Storage(abc.ABC):
    """One open database. Lifecycle: `await start(...)` once, then any operation, then
    `await stop()` (idempotent)."""

    name: str  # "sqlite" or "postgresql", for logs and /readyz
    location: str  # where the data lives, for the `ready` log line (no password)
    wal_checkpoint: bool  # does upkeep need to checkpoint a WAL (SQLite only)?
    runs_upkeep: bool = True  # may this server run upkeep and the export now (one at a time)?
    shared: bool = False  # may other servers hold (schedule and settle) pending jobs too?

    # -- lifecycle ------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(
        self, loop: asyncio.AbstractEventLoop, *, on_events: OnEvents, on_commit: OnEvents,
        on_death: Callable[[str], None], on_claimed: OnClaimed, on_rate_limit: Callable[[int], None],
    ) -> None:
        """Open (create, migrate) the database and start its writer. Raises StoreError.
        Callbacks run on `loop`:
        - `on_events(events)`: every event committed to the database, by this server or
          any other sharing it, exactly once each, in seq order (for the live feed);
        - `on_commit(events)`: the events of each commit made by this server, once its
          futures are completed (for metrics and the export);
        - `on_death(reason)`: the storage can never write again (the server should stop
          and be restarted). A database that is only unreachable for a while is not a
          death: writes fail with StoreError meanwhile and work again once it is back;
        - `on_claimed(jobs)`: (due_at, id) of pending jobs this server must now run as
          well (taken over from a server that is gone; a job may come twice, and is
          settled once);
        - `on_rate_limit(until_ms)`: another server found the upstream's budget spent."""

    def start_background(self) -> None:  # noqa: B027 (a default that does nothing, on purpose)
        """Start the duties a shared database needs (heartbeat, taking over jobs, bidding
        for upkeep). Call once the scheduler takes `on_claimed` jobs. SQLite: none."""

    def share_rate_limit(self, until_ms: int) -> None:  # noqa: B027 (as above)
        """This server found the upstream's budget spent until `until_ms`: tell the others
        (their `on_rate_limit`). SQLite: nobody to tell."""

    @abc.abstractmethod
    async def stop(self, timeout: float = 10.0) -> bool:
        """Commit what was submitted, deliver its results, close every connection. A
        writer still busy after `timeout` seconds is stopped without waiting (its callers
        learn their commit is unknown). True if everything stopped in time. Idempotent."""

    @abc.abstractmethod
    def export_reader(self) -> ExportReader:
        """A new reader for the JSON exporter, to be made and used on its own thread."""

    # -- reads: coroutines, IOLoop thread -------------------------------------------------

    @abc.abstractmethod
    async def job(self, job_id: str) -> str | None:
        """The job's JSON document, or None."""

    @abc.abstractmethod
    async def job_by_idempotency_key(self, key: str) -> tuple[str, str] | None:
        """(id, document) of the job created with this key, if any."""

    @abc.abstractmethod
    async def jobs_page(self, status: str | None, limit: int, before: int | None) -> list[tuple[int, str]]:
        """Up to `limit` (num, document) pairs, newest first, with num < `before` if given.
        `num` is the creation order, never reused."""

    @abc.abstractmethod
    async def jobs_to_schedule(self) -> list[tuple[int, str]]:
        """(due_at, id) of the pending jobs this server must run, earliest first: at
        start, every pending job (SQLite), or the ones this server claimed (PostgreSQL)."""

    @abc.abstractmethod
    async def count_by_status(self) -> dict[str, int]:
        """Jobs per status (statuses with none may be missing). Never a table scan."""

    @abc.abstractmethod
    async def pending_count(self) -> int:
        """Pending jobs in the whole database, for --max-pending (may trail by a moment)."""

    @abc.abstractmethod
    async def oldest_pending(self) -> tuple[str, int] | None:
        """(id, due_at) of the pending job due first that this server runs (with SQLite,
        every one), or None: the readiness check's "is the scheduler keeping up?"."""

    @abc.abstractmethod
    async def latest_seq(self) -> int:
        """The highest event seq ever committed (0 if none), even if since pruned."""

    @abc.abstractmethod
    async def oldest_seq(self) -> int | None:
        """The lowest event seq still kept, or None if none is."""

    @abc.abstractmethod
    async def events_after(self, seq: int, limit: int) -> list[Event]:
        """Up to `limit` events with seq > `seq`, in seq order."""

    @abc.abstractmethod
    async def job_events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, int, str]]:
        """Up to `limit` (seq, type, created_at ms, job document) of one job's retained
        events with seq > `after`, oldest first."""

    @abc.abstractmethod
    async def activity_since(self, since_ms: int, up_to_seq: int, samples: int) -> StoredActivity:
        """The events committed since `since_ms` with seq <= `up_to_seq`, by minute (see
        `StoredActivity`), for the dashboard's seed. May take a while: never on the IOLoop."""

    # -- writes: futures on the loop, durable when done ------------------------------------

    @abc.abstractmethod
    def create_job(self, job: Job, idempotency_key: str | None = None) -> asyncio.Future[CreateResult]:
        """Commit a new pending job (and its job.created event). With a key used before,
        that job instead (`created=False`), and nothing is written."""

    @abc.abstractmethod
    def apply_outcomes(self, outcomes: list[Outcome]) -> asyncio.Future[list[str | NotStored | None]]:
        """Apply what upstream attempts did: each job's new status, in order; None where it
        was not pending (or, shared, is no longer this server's to settle); `NotStored`
        where that outcome's data could not be written (the others still are)."""

    @abc.abstractmethod
    def retry_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        """A failed job back to pending, due at `at`: its new document, None if there is
        no such job; NotRetryable unless it is failed."""

    @abc.abstractmethod
    def cancel_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        """A pending job cancelled at `at`: its new document, None if there is no such
        job; NotCancellable unless it is pending."""

    @abc.abstractmethod
    def retry_failed(self, after_num: int, limit: int, at: int) -> asyncio.Future[RetriedBatch]:
        """Up to `limit` failed jobs after `after_num` (creation order) back to pending,
        due at `at`, each with its `job.retried` event (and, shared, claimed by this server)."""

    @abc.abstractmethod
    def prune_events(self, older_than_ms: int) -> asyncio.Future[int]:
        """Delete events created before this time; how many."""

    @abc.abstractmethod
    def delete_settled_jobs(self, cutoff_ms: int, after_num: int, limit: int) -> asyncio.Future[DeletedBatch]:
        """One bounded batch of job retention (see `DeletedBatch`); adds no event."""

    @abc.abstractmethod
    def checkpoint(self) -> asyncio.Future[tuple[int, int, int]]:
        """Checkpoint the WAL: (busy, WAL frames, frames copied). Only where
        `wal_checkpoint` is true."""

    @abc.abstractmethod
    def ping(self) -> asyncio.Future[None]:
        """Completes once a write has committed (the readiness check; SQLite rewrites a
        row, so that a full disk shows)."""

    # -- the Unsplash budget (calo.budget): futures on the loop ---------------------------

    @abc.abstractmethod
    def reserve_calls(self, wanted: int, now: int) -> asyncio.Future[int]:
        """Reserve up to `wanted` Unsplash calls at `now` (wall-clock ms) against the budget
        every server shares; how many were granted (0 to `wanted`: each may start now).
        Never raises through the future: a database that cannot be asked grants 0.
        Each granted call is given back with `release_calls` once it is answered."""

    @abc.abstractmethod
    def release_calls(self, count: int, report: BudgetReport | None, now: int) -> asyncio.Future[None]:
        """`count` reserved calls ended (answered, failed, or never started), at `now`
        (wall-clock ms); `report`: what the answer said of the budget (None: nothing). Never
        raises through the future: a release the database missed is made good later (with
        PostgreSQL, at the next heartbeat), and meanwhile the calls still count as reserved."""

    # -- what only a shared database needs ------------------------------------------------

    @property
    @abc.abstractmethod
    def write_failure(self) -> str | None:
        """Why writes fail now (one line), or None while they work."""

    @property
    @abc.abstractmethod
    def writes_waiting(self) -> int:
        """Writes handed to the database and not yet answered: a few at most while it keeps
        up; it grows while the disk or the database stalls (/metrics shows it)."""

    def describe(self) -> dict[str, object]:
        """Backend facts for /readyz's database check (beyond ok and write_ms)."""
        return {"backend": self.name}
