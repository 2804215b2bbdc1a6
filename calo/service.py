"""The job service: what the web layer may ask of the domain, in one small interface.

Owns creating a job (draw its delay, commit it, schedule it) and the read queries the
handlers and the WebSocket need. Handlers call this, never the store or the scheduler.

Threads: IOLoop thread only. Reads and writes are coroutines of the storage (calo.storage):
indexed, bounded queries on a local file, or asynchronous ones on PostgreSQL; writes are
awaited, so the IOLoop never waits on a commit or on the network.

Must never: format HTTP responses or know about request handlers.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

from calo.clock import iso_utc, now_ms
from calo.jobs import PENDING, Job, draw_delay
from calo.storage.base import (
    CommitUnknown,
    CreateResult,
    Event,
    NotCancellable,
    NotRetryable,
    StoreError,
    WriterBusy,
    WrongStatus,
)

if TYPE_CHECKING:
    from calo.scheduler import Scheduler
    from calo.storage.base import Storage

__all__ = [
    "CommitUnknown", "JobService", "NotCancellable", "NotRetryable", "Overloaded", "Resolving", "StoreError",
    "WriterBusy", "WrongStatus",
]

BULK_RETRY_BATCH = 500  # failed jobs retried per transaction by `retry_failed`


class Overloaded(Exception):
    """Too many jobs are pending; the client should try again later."""


class Resolving(Exception):
    """The job is pending, but its photo is already on its way to the database: too late
    to cancel it (it is resolved, or tried again, in a moment)."""


class JobService:
    def __init__(
        self,
        *,
        storage: Storage,
        scheduler: Scheduler,
        delays: tuple[float, float, float],
        max_pending: int,
        rng: random.Random | None = None,
    ):
        self._max_pending = max_pending
        self._storage = storage
        self._scheduler = scheduler
        self._delays = delays
        self._rng = rng or random.Random()
        self._creating = 0  # creates sent to the storage and not yet answered

    async def create_job(self, idempotency_key: str | None) -> CreateResult:
        """Commit a new pending job durably, then schedule it. With a key used before,
        return that job instead and create nothing. Raises Overloaded when `max_pending`
        jobs are pending, counting this server's creates still on their way to the writer
        (a repeated key still gets its job: that creates nothing); StoreError (and its
        CommitUnknown, WriterBusy) when the write failed."""
        if await self._storage.pending_count() + self._creating >= self._max_pending:
            earlier = await self._storage.job_by_idempotency_key(idempotency_key) if idempotency_key else None
            if earlier is not None:
                return CreateResult(*earlier, created=False)
            raise Overloaded(f"{self._max_pending} jobs are pending; try again later")
        delay = draw_delay(*self._delays, self._rng)
        job = Job.new(delay, now_ms())
        self._creating += 1
        try:
            result = await self._storage.create_job(job, idempotency_key)
        finally:
            self._creating -= 1
        if result.created:
            self._scheduler.add(job.id, job.due_at)
        return result

    async def retry_job(self, job_id: str) -> str | None:
        """Put a failed job back to pending, due now; its new document, or None if there
        is no such job. Raises NotRetryable if it is not failed."""
        job_json = await self._storage.retry_job(job_id, now_ms())
        if job_json is not None:
            job = Job.from_json(job_json)
            self._scheduler.add(job.id, job.due_at)
        return job_json

    async def cancel_job(self, job_id: str) -> str | None:
        """Cancel a pending job before its photo is fetched: the schedule drops it, then
        the change is committed with its `job.cancelled` event. Its new document, or None
        if there is no such job. Raises NotCancellable if it is not pending, Resolving if
        its outcome is already being recorded, StoreError if nothing could be committed
        (then the job stays scheduled as it was). With a shared database another server
        may hold the job: the database decides (a job still pending there is cancelled,
        and the outcome its server records later is refused)."""
        due_at = self._scheduler.withdraw(job_id)
        if due_at is None and not self._storage.shared:
            doc = await self._storage.job(job_id)
            if doc is None:
                return None
            status = json.loads(doc)["status"]
            raise Resolving() if status == PENDING else NotCancellable(status)
        try:
            return await self._storage.cancel_job(job_id, now_ms())
        except StoreError:
            if due_at is not None:
                self._scheduler.add(job_id, due_at)
            raise

    async def retry_failed(self) -> int:
        """Put every job that is failed now back to pending, due now, in bounded batches
        (one transaction each); returns how many. Raises StoreError if a batch could not
        be committed (the batches before it stay retried and scheduled)."""
        at, after, retried = now_ms(), 0, 0
        while True:
            batch = await self._storage.retry_failed(after, BULK_RETRY_BATCH, at)
            for job_id in batch.job_ids:
                self._scheduler.add(job_id, at)
            retried += len(batch.job_ids)
            after = batch.last_num
            if batch.done:
                return retried

    async def job_events(self, job_id: str, after: int, limit: int) -> list[str] | None:
        """Up to `limit` of the job's retained events after seq `after`, oldest first, each
        as its JSON text {"seq", "type", "at", "job"}; None if there is no such job."""
        if await self._storage.job(job_id) is None:
            return None
        return [
            f'{{"seq":{seq},"type":{json.dumps(kind)},"at":"{iso_utc(at)}","job":{doc}}}'
            for seq, kind, at, doc in await self._storage.job_events(job_id, after, limit)
        ]

    async def job_json(self, job_id: str) -> str | None:
        return await self._storage.job(job_id)

    async def jobs_page(self, status: str | None, limit: int, before: int | None) -> list[tuple[int, str]]:
        return await self._storage.jobs_page(status, limit, before)

    async def latest_seq(self) -> int:
        return await self._storage.latest_seq()

    async def replay_start(self, since: int) -> bool:
        """Are all events after `since` still retained (so a replay has no hole)?"""
        latest = await self._storage.latest_seq()
        oldest = await self._storage.oldest_seq()
        first_kept = latest + 1 if oldest is None else oldest
        return first_kept - 1 <= since <= latest

    async def events_after(self, seq: int, limit: int) -> list[Event]:
        return await self._storage.events_after(seq, limit)

    async def counts(self) -> dict[str, int]:
        return await self._storage.count_by_status()
