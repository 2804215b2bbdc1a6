"""The SQLite backend of the storage interface: one data dir, one server (the default).

Owns putting the store's parts together behind `Storage`: the locked, migrated database
(`sqlite_store.Database`), the writer in its own process (`sqlite_writer`) and the
IOLoop's read connection. SQL and the group-committing writer live in `sqlite_store`.
With one writer for the whole database, the events of its commits are the whole log in
seq order, so `on_events` and `on_commit` receive the same events. The Unsplash budget
is this server's alone, held in memory (calo.budget.MemoryBudget).

Threads: IOLoop thread only (reads are indexed queries on a local file in WAL mode: they
never wait for the writer); `export_reader()` is called on the exporter's thread.
Must never: import Tornado, or run a write on the IOLoop thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable

from calo.budget import BudgetReport, MemoryBudget
from calo.jobs import PENDING, Job, Outcome
from calo.storage.base import (
    CreateResult,
    DeletedBatch,
    Event,
    ExportReader,
    NotStored,
    OnClaimed,
    OnEvents,
    RetriedBatch,
    Storage,
    StoredActivity,
)
from calo.storage.sqlite_store import DB_FILE, Database, Reader
from calo.storage.sqlite_writer import WriterProcess


class SqliteStorage(Storage):
    name = "sqlite"
    wal_checkpoint = True

    def __init__(self, data_dir: str, write_timeout: float = 5.0):
        self.data_dir = data_dir
        self._write_timeout = write_timeout
        self.location = data_dir
        self._database: Database | None = None
        self._reader: Reader | None = None
        self._writer: WriterProcess | None = None
        self._budget = MemoryBudget()  # one server: its own calls are all the calls

    @property
    def path(self) -> str:
        """The database file."""
        return os.path.join(self.data_dir, DB_FILE)

    async def start(
        self, loop: asyncio.AbstractEventLoop, *, on_events: OnEvents, on_commit: OnEvents,
        on_death: Callable[[str], None], on_claimed: OnClaimed, on_rate_limit: Callable[[int], None],
    ) -> None:
        self._database = Database(self.data_dir)
        try:
            def committed(events: list[Event]) -> None:
                on_events(events)
                on_commit(events)

            # A write answered commit_unknown that commits later still gets its job run.
            self._writer = WriterProcess(self._database.path, committed, loop, on_death, on_late=on_claimed,
                                         write_timeout=self._write_timeout)
            self._writer.start()
            self._reader = self._database.reader()
        except BaseException:
            self._database.close()
            raise

    async def stop(self, timeout: float = 10.0) -> bool:
        if self._database is None:
            return True
        clean = True
        if self._writer is not None:
            clean = await self._writer.stop(timeout)
        if self._reader is not None:
            self._reader.close()
        self._database.close()
        self._database = None
        return clean

    @property
    def write_failure(self) -> str | None:
        return self._writer.failure if self._writer is not None else "not started"

    @property
    def writes_waiting(self) -> int:
        return self._writer.writes_waiting if self._writer is not None else 0

    def export_reader(self) -> ExportReader:
        assert self._database is not None
        return self._database.reader()

    @property
    def _read(self) -> Reader:
        assert self._reader is not None, "storage not started"
        return self._reader

    # -- reads --------------------------------------------------------------------------

    async def job(self, job_id: str) -> str | None:
        return self._read.job(job_id)

    async def job_by_idempotency_key(self, key: str) -> tuple[str, str] | None:
        return self._read.job_by_idempotency_key(key)

    async def jobs_page(self, status: str | None, limit: int, before: int | None) -> list[tuple[int, str]]:
        return self._read.jobs_page(status, limit, before)

    async def jobs_to_schedule(self) -> list[tuple[int, str]]:
        return self._read.pending_due()

    async def count_by_status(self) -> dict[str, int]:
        return self._read.count_by_status()

    async def pending_count(self) -> int:
        return self._read.count_by_status().get(PENDING, 0)

    async def oldest_pending(self) -> tuple[str, int] | None:
        return self._read.oldest_pending()

    async def latest_seq(self) -> int:
        return self._read.latest_seq()

    async def oldest_seq(self) -> int | None:
        return self._read.oldest_seq()

    async def events_after(self, seq: int, limit: int) -> list[Event]:
        return self._read.events_after(seq, limit)

    async def job_events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, int, str]]:
        return self._read.job_events(job_id, after, limit)

    async def activity_since(self, since_ms: int, up_to_seq: int, samples: int) -> StoredActivity:
        """Read on a short-lived daemon thread with its own connection (an hour of events;
        a server stopping meanwhile does not wait for it)."""
        database = self._database
        assert database is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoredActivity] = loop.create_future()

        def settle(result: StoredActivity | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            elif result is not None:
                future.set_result(result)

        def read() -> None:
            result, error = None, None
            try:
                reader = database.reader()
                try:
                    result = reader.activity_since(since_ms, up_to_seq, samples)
                finally:
                    reader.close()
            except Exception as exc:  # handed to the awaiting coroutine
                error = exc
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop is closed: the server stopped meanwhile
                pass

        threading.Thread(target=read, name="calo-stats-seed", daemon=True).start()
        return await future

    # -- writes -------------------------------------------------------------------------

    @property
    def _write(self) -> WriterProcess:
        assert self._writer is not None, "storage not started"
        return self._writer

    def create_job(self, job: Job, idempotency_key: str | None = None) -> asyncio.Future[CreateResult]:
        return self._write.create_job(job, idempotency_key)

    def apply_outcomes(self, outcomes: list[Outcome]) -> asyncio.Future[list[str | NotStored | None]]:
        return self._write.apply_outcomes(outcomes)

    def retry_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        return self._write.retry_job(job_id, at)

    def cancel_job(self, job_id: str, at: int) -> asyncio.Future[str | None]:
        return self._write.cancel_job(job_id, at)

    def retry_failed(self, after_num: int, limit: int, at: int) -> asyncio.Future[RetriedBatch]:
        return self._write.retry_failed(after_num, limit, at)

    def prune_events(self, older_than_ms: int) -> asyncio.Future[int]:
        return self._write.prune_events(older_than_ms)

    def delete_settled_jobs(self, cutoff_ms: int, after_num: int, limit: int) -> asyncio.Future[DeletedBatch]:
        return self._write.delete_settled_jobs(cutoff_ms, after_num, limit)

    def checkpoint(self) -> asyncio.Future[tuple[int, int, int]]:
        return self._write.checkpoint()

    def ping(self) -> asyncio.Future[None]:
        return self._write.ping()

    # -- the Unsplash budget: in memory -------------------------------------------------

    def reserve_calls(self, wanted: int, now: int) -> asyncio.Future[int]:
        return self._budget.reserve_calls(wanted, now)

    def release_calls(self, count: int, report: BudgetReport | None, now: int) -> asyncio.Future[None]:
        return self._budget.release_calls(count, report, now)
