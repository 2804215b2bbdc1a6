"""The job service: what the web layer may ask of the domain, in one small interface.

Owns creating a job (draw its delay, commit it, schedule it) and the read queries the
handlers and the WebSocket need. Handlers call this, never the store or the scheduler.

Threads: IOLoop thread only. Reads use the IOLoop's own read connection (indexed, bounded
queries on a local file: no network, no fsync); writes go to the writer process and are
awaited, so the IOLoop never waits on a commit.

Must never: format HTTP responses or know about request handlers.
"""

from __future__ import annotations

import random

from calo.jobs import Job, draw_delay, now_ms
from calo.scheduler import Scheduler
from calo.store import CommitUnknown, CreateResult, Event, NotRetryable, Reader, StoreError, WriteRequests, WriterBusy

__all__ = ["CommitUnknown", "JobService", "NotRetryable", "Overloaded", "StoreError", "WriterBusy"]


class Overloaded(Exception):
    """Too many jobs are pending; the client should try again later."""


class JobService:
    def __init__(
        self,
        *,
        reader: Reader,
        writer: WriteRequests,
        scheduler: Scheduler,
        delays: tuple[float, float, float],
        max_pending: int,
        rng: random.Random | None = None,
    ):
        self._max_pending = max_pending
        self._reader = reader
        self._writer = writer
        self._scheduler = scheduler
        self._delays = delays
        self._rng = rng or random.Random()
        self._creating = 0  # creates sent to the writer and not yet answered

    async def create_job(self, idempotency_key: str | None) -> CreateResult:
        """Commit a new pending job durably (the scheduler learns of it from the commit).
        With a key used before, return that job instead and create nothing. Raises
        Overloaded when `max_pending` jobs are pending, counting creates still on their
        way to the writer (a repeated key still gets its job: that creates nothing);
        StoreError (and its CommitUnknown, WriterBusy) when the write failed."""
        if self._scheduler.pending_count() + self._creating >= self._max_pending:
            earlier = self._reader.job_by_idempotency_key(idempotency_key) if idempotency_key else None
            if earlier is not None:
                return CreateResult(*earlier, created=False)
            raise Overloaded(f"{self._max_pending} jobs are pending; try again later")
        delay = draw_delay(*self._delays, self._rng)
        job = Job.new(delay, now_ms())
        self._creating += 1
        try:
            return await self._writer.create_job(job, idempotency_key)
        finally:
            self._creating -= 1

    async def retry_job(self, job_id: str) -> str | None:
        """Put a failed job back to pending, due now (the scheduler learns of it from the
        commit); its new document, or None if there is no such job. Raises NotRetryable
        if it is not failed, StoreError if the write failed."""
        return await self._writer.retry_job(job_id, now_ms())

    def job_json(self, job_id: str) -> str | None:
        return self._reader.job(job_id)

    def jobs_page(self, status: str | None, limit: int, before: int | None) -> list[tuple[int, str]]:
        return self._reader.jobs_page(status, limit, before)

    def latest_seq(self) -> int:
        return self._reader.latest_seq()

    def replay_start(self, since: int) -> bool:
        """Are all events after `since` still retained (so a replay has no hole)?"""
        latest = self._reader.latest_seq()
        oldest = self._reader.oldest_seq()
        first_kept = latest + 1 if oldest is None else oldest
        return first_kept - 1 <= since <= latest

    def events_after(self, seq: int, limit: int) -> list[Event]:
        return self._reader.events_after(seq, limit)

    def counts(self) -> dict[str, int]:
        return self._reader.count_by_status()
