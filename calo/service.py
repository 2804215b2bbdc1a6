"""The job service: what the web layer may ask of the domain, in one small interface.

Owns creating a job (draw its delay, commit it, schedule it) and the read queries the
handlers and the WebSocket need. Handlers call this, never the store or the scheduler.

Threads: IOLoop thread only. Reads and writes are coroutines of the storage (calo.storage):
indexed, bounded queries on a local file, or asynchronous ones on PostgreSQL; writes are
awaited, so the IOLoop never waits on a commit or on the network.

Must never: format HTTP responses or know about request handlers.
"""

from __future__ import annotations

import random

from calo.jobs import Job, draw_delay, now_ms
from calo.scheduler import Scheduler
from calo.storage.base import CreateResult, Event, NotRetryable, Storage, StoreError

__all__ = ["JobService", "NotRetryable", "Overloaded", "StoreError"]


class Overloaded(Exception):
    """Too many jobs are pending; the client should try again later."""


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

    async def create_job(self, idempotency_key: str | None) -> CreateResult:
        """Commit a new pending job durably, then schedule it. With a key used before,
        return that job instead and create nothing. Raises Overloaded when too many jobs
        are pending (a repeated key still gets its job: that creates nothing)."""
        if await self._storage.pending_count() >= self._max_pending:
            earlier = await self._storage.job_by_idempotency_key(idempotency_key) if idempotency_key else None
            if earlier is not None:
                return CreateResult(*earlier, created=False)
            raise Overloaded(f"{self._max_pending} jobs are pending; try again later")
        delay = draw_delay(*self._delays, self._rng)
        job = Job.new(delay, now_ms())
        result = await self._storage.create_job(job, idempotency_key)
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
