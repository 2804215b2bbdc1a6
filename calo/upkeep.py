"""Upkeep without cron: periodic tasks that run inside the server on the IOLoop.

Owns the schedule of housekeeping: pruning events older than the retention. Each task
only submits work to the writer thread and records when it ran and how long it took,
so the IOLoop never waits on it.

Threads: IOLoop thread only (tornado PeriodicCallback).
Must never: block the IOLoop, or run a task again while its previous run is unfinished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tornado.ioloop import PeriodicCallback

from calo.jobs import now_ms
from calo.store import Writer

log = logging.getLogger("calo.upkeep")

PRUNE_EVERY_SECONDS = 600


class Task:
    """One periodic task and what is known of its last run."""

    def __init__(self, name: str, every_seconds: float, run: Callable[[], Awaitable[object]]):
        self.name = name
        self._run = run
        self._running = False
        self.last_run_at: int | None = None
        self.last_duration: float | None = None
        self.last_result: object = None
        self._callback = PeriodicCallback(self.trigger, every_seconds * 1000, jitter=0.1)

    def start(self) -> None:
        self._callback.start()

    def stop(self) -> None:
        self._callback.stop()

    async def trigger(self) -> None:
        if self._running:
            return
        self._running, started = True, now_ms()
        try:
            self.last_result = await self._run()
        except Exception:  # a failed run is logged and tried again next period
            log.exception("upkeep task %s failed", self.name)
        finally:
            self._running = False
            self.last_run_at, self.last_duration = started, (now_ms() - started) / 1000


class Upkeep:
    def __init__(self, writer: Writer, event_retention_seconds: float, prune_every: float = PRUNE_EVERY_SECONDS):
        self._writer = writer
        self._retention_ms = int(event_retention_seconds * 1000)
        self.tasks = [Task("prune_events", min(prune_every, max(1.0, event_retention_seconds / 2)), self.prune_events)]

    def start(self) -> None:
        for task in self.tasks:
            task.start()

    def stop(self) -> None:
        for task in self.tasks:
            task.stop()

    async def prune_events(self) -> int:
        """Delete events older than the retention; returns how many."""
        pruned = await asyncio.wrap_future(self._writer.prune_events(now_ms() - self._retention_ms))
        if pruned:
            log.info("pruned %d events older than %d s", pruned, self._retention_ms // 1000)
        return pruned
