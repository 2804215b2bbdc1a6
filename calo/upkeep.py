"""Upkeep without cron: periodic tasks that run inside the server on the IOLoop.

Owns the schedule of housekeeping, so that a server needs no cron:
- `prune_events`: delete events older than `--event-retention`;
- `checkpoint_wal` (SQLite only): copy the WAL into `calo.db` and truncate it (SQLite's
  own automatic checkpoints never shrink the file after a burst of writes);
- `retain_jobs` (only with `--retain-days`): delete resolved and failed jobs settled more
  than that many days ago, in bounded batches, so other writes never wait long.
Each task only submits work to the writer thread and records when it ran, how long it
took and whether it worked (`/metrics` shows it), so the IOLoop never waits on it.

Threads: IOLoop thread only (calo.clockwatch.Repeating: monotonic, unlike PeriodicCallback).
Must never: block the IOLoop, or run a task again while its previous run is unfinished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from calo.clock import now_ms
from calo.clockwatch import Repeating

if TYPE_CHECKING:
    from calo.storage.base import Storage

log = logging.getLogger("calo.upkeep")

PRUNE_EVERY_SECONDS = 600
CHECKPOINT_EVERY_SECONDS = 300
RETAIN_EVERY_SECONDS = 3600
RETAIN_BATCH = 500  # jobs looked at per transaction: other writes wait one batch at most
RETAIN_MAX_BATCHES = 200  # per run; a bigger backlog is finished by the next runs


class Task:
    """One periodic task and what is known of its last run."""

    def __init__(self, name: str, every_seconds: float, run: Callable[[], Awaitable[object]],
                 may_run: Callable[[], bool] = lambda: True):
        self.name = name
        self._run = run
        self._may_run = may_run  # False: another server runs it now
        self._running = False
        self.last_run_at: int | None = None
        self.last_duration: float | None = None
        self.last_ok: bool | None = None
        self._callback = Repeating(self.trigger, every_seconds, jitter=0.1)

    def start(self) -> None:
        self._callback.start()

    def stop(self) -> None:
        self._callback.stop()

    async def trigger(self) -> None:
        if self._running or not self._may_run():
            return
        self._running, started, clock, ok = True, now_ms(), time.monotonic(), False
        try:
            await self._run()
            ok = True
        except Exception:  # a failed run is logged and tried again next period
            log.exception("upkeep task %s failed", self.name)
        finally:
            self._running = False
            self.last_run_at, self.last_duration, self.last_ok = started, time.monotonic() - clock, ok


def _every(longest: float, age_limit_seconds: float) -> float:
    """How often to enforce an age limit: every half of it, but not more often than once a
    second, nor less often than every `longest` seconds."""
    return min(longest, max(1.0, age_limit_seconds / 2))


class Upkeep:
    """The periodic tasks of one server. `start`/`stop` and every task: IOLoop thread only."""

    def __init__(
        self,
        writer: Storage,
        event_retention_seconds: float,
        *,
        retain_days: float | None = None,
        on_jobs_deleted: Callable[[], None] = lambda: None,
        prune_every: float = PRUNE_EVERY_SECONDS,
    ):
        self._writer = writer
        self._retention_ms = int(event_retention_seconds * 1000)
        self._retain_ms = None if retain_days is None else int(retain_days * 86_400_000)
        self._on_jobs_deleted = on_jobs_deleted  # e.g. refresh jobs.json: deleting adds no event
        self._stopped = False
        def leader() -> bool:  # with a shared database, one server at a time runs upkeep
            return writer.runs_upkeep

        self.tasks = [
            Task("prune_events", _every(prune_every, event_retention_seconds), self.prune_events, leader),
        ]
        if writer.wal_checkpoint:
            self.tasks.append(Task("checkpoint_wal", CHECKPOINT_EVERY_SECONDS, self.checkpoint_wal))
        if self._retain_ms is not None:
            every = _every(RETAIN_EVERY_SECONDS, self._retain_ms / 1000)
            self.tasks.append(Task("retain_jobs", every, self.retain_jobs, leader))

    def start(self) -> None:
        for task in self.tasks:
            task.start()

    def stop(self) -> None:
        """No new runs; a run in progress ends after its current batch."""
        self._stopped = True
        for task in self.tasks:
            task.stop()

    async def prune_events(self) -> int:
        """Delete events older than the retention; returns how many."""
        pruned = await self._writer.prune_events(now_ms() - self._retention_ms)
        if pruned:
            log.info("pruned %d events older than %d s", pruned, self._retention_ms // 1000)
        return pruned

    async def checkpoint_wal(self) -> tuple[int, int, int]:
        """Checkpoint and truncate the WAL (on the writer thread); returns SQLite's
        (busy, wal frames, frames copied)."""
        busy, frames, copied = await self._writer.checkpoint()
        if busy:  # a reader (the exporter, a long replay) held an old snapshot
            log.info("WAL checkpoint left for next time: a reader is busy (%d of %d frames copied)", copied, frames)
        return busy, frames, copied

    async def retain_jobs(self) -> int:
        """Delete resolved and failed jobs settled before the retention, batch by batch;
        returns how many."""
        if self._retain_ms is None:
            return 0  # jobs are kept forever (no --retain-days)
        retain_ms = self._retain_ms
        cutoff, after, deleted = now_ms() - retain_ms, 0, 0
        for _ in range(RETAIN_MAX_BATCHES):
            if self._stopped:
                break
            batch = await self._writer.delete_settled_jobs(cutoff, after, RETAIN_BATCH)
            deleted, after = deleted + batch.deleted, batch.last_num
            if batch.done:
                break
        if deleted:
            log.info("deleted %d resolved or failed jobs older than %g days", deleted, retain_ms / 86_400_000)
            self._on_jobs_deleted()
        return deleted
