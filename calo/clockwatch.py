"""The two clocks, and noticing when the wall clock steps (calo.clock formats wall-clock time).

Owns which clock measures what. A job's due time is a wall-clock instant (milliseconds
since the epoch, UTC): that is the API's contract, and it survives a restart. Everything
that is a duration (a timer's wait, a retry window, a backoff, a rate-limit pause, how
long a due job has waited) is measured on the monotonic clock, which no one can set.

The wall clock can step: NTP correcting a VM that slept, an operator running `date -s`.
`ClockWatch` compares the two clocks once a second (and whenever asked); when their
difference moves by more than `STEP_MS`, the wall clock stepped, and every listener is
told at once by how much, so that timers armed for wall-clock instants are planned
again. Smaller drifts (NTP slewing, at most 0.5 ms a second) are followed silently.

Periodic work runs on `Repeating`, not Tornado's `PeriodicCallback`: Tornado 6 defines
`IOLoop.time()` as `time.time()`, and PeriodicCallback keeps its next deadline in it, so a
step back of the wall clock by an hour silences it for that hour (systemd's watchdog ping
with it, and systemd would kill a healthy server).

Threads: `Clock` is safe from any thread. `ClockWatch` and `Repeating` run on the IOLoop
thread only.
Must never: sleep, or let a listener's failure stop the others from hearing of a step.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

from calo.clock import iso_utc, now_ms

log = logging.getLogger("calo.clock")

CHECK_EVERY_MS = 1000  # how often the clocks are compared: a step is acted on within this
STEP_MS = 1000  # a change of (wall - monotonic) larger than this is a step, not a drift


def monotonic_ms() -> int:
    """Milliseconds on the monotonic clock (an arbitrary origin; only differences mean anything)."""
    return time.monotonic_ns() // 1_000_000


class Clock:
    """Both clocks, in integer milliseconds. Tests may pass another pair."""

    def __init__(self, wall: Callable[[], int] = now_ms, monotonic: Callable[[], int] = monotonic_ms):
        self.wall = wall
        self.monotonic = monotonic

    def wall_at(self, monotonic: int) -> int:
        """The wall-clock instant a monotonic instant corresponds to now (for display)."""
        return self.wall() + (monotonic - self.monotonic())

    def monotonic_at(self, wall: int) -> int:
        """The monotonic instant at which the wall clock will read `wall`, if it does not step."""
        return self.monotonic() + (wall - self.wall())


class ClockWatch:
    """Notices wall-clock steps. `last_step_at` (monotonic ms, None before any) is when
    the latest was noticed."""

    def __init__(self, clock: Clock | None = None):
        self.clock = clock or Clock()
        self._offset = self.clock.wall() - self.clock.monotonic()
        self._listeners: list[Callable[[int], None]] = []
        self._ticker: Repeating | None = None
        self.last_step_at: int | None = None
        self.steps = 0

    def on_step(self, listener: Callable[[int], None]) -> None:
        """Call `listener(step_ms)` (positive: the wall clock jumped forward) on each step."""
        self._listeners.append(listener)

    def start(self) -> None:
        self._ticker = Repeating(self.check, CHECK_EVERY_MS / 1000)
        self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()

    def check(self) -> int:
        """Compare the clocks now; returns the step found (0: none), after telling the
        listeners of it. Cheap: two clock reads."""
        offset = self.clock.wall() - self.clock.monotonic()
        step, self._offset = offset - self._offset, offset
        if abs(step) <= STEP_MS:
            return 0
        self.last_step_at, self.steps = self.clock.monotonic(), self.steps + 1
        log.warning("the wall clock stepped %s by %.1f s (now %s); planning every timer again",
                    "forward" if step > 0 else "back", abs(step) / 1000, iso_utc(self.clock.wall()))
        for listener in self._listeners:
            try:
                listener(step)
            except Exception:  # one broken listener must not keep the others planning on a stale clock
                log.exception("a clock-step listener failed")
        return step


class Repeating:
    """Call `callback` every `every_seconds` on the IOLoop, timed by the monotonic clock
    (Tornado's `PeriodicCallback` would stop for as long as a backward wall-clock step).
    Missed periods are skipped, not made up for. A callback that returns an awaitable has
    it run as a task, and is not called again while that task runs. An exception is
    logged, and the next call still comes."""

    def __init__(self, callback: Callable[[], Any], every_seconds: float, jitter: float = 0.0):
        self._callback = callback
        self._every = every_seconds
        self._jitter = jitter  # e.g. 0.1: each period drawn from 95% to 105%
        self._handle: object | None = None
        self._next = 0.0
        self._task: asyncio.Future[Any] | None = None

    def start(self) -> None:
        """Start calling, the first time one period from now. IOLoop thread."""
        self._loop = IOLoop.current()
        self._next = time.monotonic()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._loop.remove_timeout(self._handle)
            self._handle = None

    def _schedule(self) -> None:
        now = time.monotonic()
        period = self._every * (1 + self._jitter * (random.random() - 0.5))
        self._next = max(self._next + period, now)
        # call_later turns the delay into a monotonic timer at once (asyncio's clock).
        self._handle = self._loop.call_later(self._next - now, self._run)

    def _run(self) -> None:
        if self._task is not None and not self._task.done():
            self._schedule()  # the last run is still going: skip this period
            return
        try:
            result = self._callback()
            if inspect.isawaitable(result):
                self._task = asyncio.ensure_future(result)
                self._task.add_done_callback(_log_failure)
        except Exception:
            log.exception("periodic call of %r failed", self._callback)
        self._schedule()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("periodic task failed", exc_info=task.exception())
