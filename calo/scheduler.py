"""Due-time scheduling: every pending job gets its photo at its due time, whatever the load.

Owns the in-memory schedule of pending jobs and the dispatch of upstream fetches to the
bounded worker pool. Pending jobs wait in a heap ordered by due time with ONE timer, for
the earliest; nothing waits in a thread. Due jobs move to the `ready` line and take
photos from a small in-memory stock of spare photos, topped up while jobs fall due within
PREFETCH_MS (so a busy server's jobs seldom wait for a call); when it runs low one fetch
of `batch` photos is started on the pool, at most `workers` at once and fewer while the
upstream is failing (see `calo.throttle`), and each only once the Unsplash budget that
every server shares grants it a call (`budget.reserve_calls`, see `calo.budget`: one
request at a time, asked again BUDGET_RETRY_MS later when it granted fewer than wanted);
its answer gives the call back (`release_calls`) with what it said of the budget. What
an attempt did to a job is an `Outcome` handed to the store's writer, which applies it
only to a job still pending, so a job never resolves twice. The database, not this
schedule, is the truth: after a crash the schedule is rebuilt from the pending jobs in
the store.

Clocks: a due time is a wall-clock instant; the one timer runs on the IOLoop's monotonic
clock, armed for the moment the wall clock should read the next due time. When the wall
clock steps (calo.clockwatch.ClockWatch), `replan` runs what is now due and arms the timer
afresh, so a step forward runs newly due jobs at once and a step back holds them until
the wall clock reaches their due time again. The retry window is measured on the
monotonic clock from the moment this process found the job due.

Threads: every method runs on the IOLoop thread. The only code that runs elsewhere is
`source.fetch`, sent to the pool with `run_in_executor`; results come back through
`IOLoop.add_future`, which calls back on the IOLoop thread, as do the budget's futures.

Must never: block, sleep, touch SQLite directly, submit more than `workers` fetches, or
start a fetch the budget did not grant.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import heapq
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop

from calo.clock import iso_utc
from calo.clockwatch import ClockWatch
from calo.jobs import PENDING, Outcome
from calo.storage.base import NotStored, StoreError
from calo.unsplash import PhotoSource, RateLimited, TransientError, UpstreamError

if TYPE_CHECKING:
    from calo.budget import BudgetReport
    from calo.storage.base import CallBudget, OutcomeWriter
    from calo.throttle import UpstreamGate

log = logging.getLogger("calo.scheduler")

PREFETCH_MS = 1000  # the stock of spare photos is topped up while a job falls due this soon
BUDGET_RETRY_MS = 500  # a reservation granted fewer calls than wanted (others hold them): ask again then
STORE_RETRY_MS = 5000  # a job whose outcome could not be written is tried again this much later
MAX_STORE_TRIES = 3  # outcomes of a job refused by the store (its data) before the job fails
NOT_STORABLE = "result_not_storable"  # its error.code then


class DueHeap:
    """Jobs waiting for their due time: (due_at, job id) pairs, earliest first. Removing a
    job is O(1): its heap entry stays behind and is skipped when it comes to the top (the
    heap is rebuilt when such entries outnumber the live ones)."""

    def __init__(self, entries: Iterable[tuple[int, str]] = ()):
        self._due: dict[str, int] = {job_id: due_at for due_at, job_id in entries}
        self._heap = [(due_at, job_id) for job_id, due_at in self._due.items()]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._due)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return ((due_at, job_id) for job_id, due_at in self._due.items())

    def push(self, due_at: int, job_id: str) -> None:
        """Schedule a job (again, at `due_at`, if it was already)."""
        self._due[job_id] = due_at
        heapq.heappush(self._heap, (due_at, job_id))

    def remove(self, job_id: str) -> int | None:
        """Unschedule a job; its due time, or None if it was not here."""
        due_at = self._due.pop(job_id, None)
        if due_at is not None and len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(due, job) for job, due in self._due.items()]
            heapq.heapify(self._heap)
        return due_at

    def earliest(self) -> int | None:
        """The earliest due time, or None when empty."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:  # removed, or pushed again
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: int) -> list[tuple[int, str]]:
        """Take out every job due at or before `now`, earliest first."""
        due = []
        while (earliest := self.earliest()) is not None and earliest <= now:
            entry = heapq.heappop(self._heap)
            del self._due[entry[1]]
            due.append(entry)
        return due


class DueLine:
    """Due jobs waiting for a photo, first come first served: (due_at, job id) pairs in a
    FIFO line with O(1) removal of any job."""

    def __init__(self) -> None:
        self._line: collections.OrderedDict[str, int] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._line)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return ((due_at, job_id) for job_id, due_at in self._line.items())

    def append(self, due_at: int, job_id: str) -> None:
        self._line[job_id] = due_at

    def extend(self, entries: Iterable[tuple[int, str]]) -> None:
        for due_at, job_id in entries:
            self._line[job_id] = due_at

    def popleft(self) -> tuple[int, str]:
        job_id, due_at = self._line.popitem(last=False)
        return due_at, job_id

    def remove(self, job_id: str) -> int | None:
        """Take a job out of line; its due time, or None if it was not in line."""
        return self._line.pop(job_id, None)


class Scheduler:
    def __init__(
        self,
        *,
        source: PhotoSource,
        writer: OutcomeWriter,
        budget: CallBudget,
        pool: concurrent.futures.Executor,
        gate: UpstreamGate,
        batch: int,
        max_attempts: int,
        retry_window_ms: int,
        clock_watch: ClockWatch | None = None,
    ):
        self._source = source
        self._writer = writer
        self._budget = budget
        self._pool = pool
        self._gate = gate
        self._batch = batch
        self._max_attempts = max_attempts
        self._retry_window_ms = retry_window_ms
        self.clock_watch = clock_watch or ClockWatch()
        self._clock = self.clock_watch.clock
        self.clock_watch.on_step(self.replan)
        self._loop = IOLoop.current()
        self._heap = DueHeap()  # not yet due
        self._ready = DueLine()  # due, no photo yet
        self._due_since: dict[str, int] = {}  # job id -> monotonic ms it was first found due
        self._spares: collections.deque[dict[str, Any]] = collections.deque()  # fetched, unused
        self._in_flight = 0
        self._reserving = False  # a budget reservation is on its way
        self._budget_retry_at = 0  # monotonic ms; no reservation is asked before it
        self._settling = 0  # outcomes handed to the writer, not yet confirmed
        self._store_failures: dict[str, int] = {}  # job id -> its outcomes the store refused
        self._told_rate_limit_until = 0  # the rate-limit pause the waiting jobs were told of (monotonic)
        self._timer: object | None = None
        self._timer_at: int | None = None  # monotonic ms the timer fires at
        self._stopping = False
        self._closed = False  # the grace is over: results that come later are dropped
        self._idle: list[Callable[[], None]] = []

    # -- public: IOLoop thread only -------------------------------------------------------

    def start(self, pending: Iterable[tuple[int, str]]) -> int:
        """Schedule the pending jobs found at start-up; returns how many are overdue."""
        self._heap = DueHeap(pending)
        now = self._clock.wall()
        overdue = sum(1 for due_at, _ in self._heap if due_at <= now)
        self._on_timer()
        return overdue

    def add(self, job_id: str, due_at: int) -> None:
        """Schedule a job that was just committed as pending (`due_at`: wall-clock ms)."""
        self._heap.push(due_at, job_id)
        if self._timer_at is None or self._clock.monotonic_at(due_at) < self._timer_at:
            self._arm_timer()

    def withdraw(self, job_id: str) -> int | None:
        """Take a job out of the schedule before any photo is given to it (it is being
        cancelled); returns its due time, or None if the schedule does not hold it: its
        outcome is already on its way to the writer, or it is not pending. O(1): a cancel
        costs the IOLoop the same with 100,000 pending jobs as with ten.
        Put it back with `add` if the cancel is not committed."""
        due_at = self._heap.remove(job_id)
        if due_at is None:
            due_at = self._ready.remove(job_id)
        if due_at is not None:
            self._due_since.pop(job_id, None)
        return due_at

    def held_ids(self) -> set[str]:
        """Ids of the jobs this schedule holds (waiting or due), so that a caller handing
        it jobs it may already hold (taken over, re-read after a reconnect) adds none twice."""
        return {job_id for _, job_id in self._heap} | {job_id for _, job_id in self._ready}

    def replan(self, step_ms: int = 0) -> None:
        """The wall clock stepped by `step_ms`: every timer was armed for a wall-clock
        instant on the old reading, so run what is due now and arm the timer afresh."""
        if not self._stopping:
            self._cancel_timer()
            self._on_timer()

    def stats(self) -> dict[str, int]:
        return {
            "scheduled": len(self._heap), "ready": len(self._ready),
            "fetches_in_flight": self._in_flight, "spare_photos": len(self._spares),
        }

    def pending_count(self) -> int:
        """Jobs this schedule still has to settle (an upper bound on pending jobs)."""
        return len(self._heap) + len(self._ready) + self._settling

    def next_due_at(self) -> int | None:
        return self._heap.earliest()

    async def stop(self, grace_seconds: float) -> bool:
        """Start no more fetches; wait up to `grace_seconds` for the running ones to
        finish and hand their outcomes to the writer, then cut the rest short (their jobs
        stay pending, to run at the next start). True if none was left running."""
        self._stopping = True
        self._cancel_timer()
        if self._in_flight:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def notify() -> None:
                if not done.done():
                    done.set_result(None)

            self._idle.append(notify)
            try:
                await asyncio.wait_for(done, grace_seconds)
            except TimeoutError:
                log.warning("shutdown: cutting %d upstream fetches short; their jobs run at the next start",
                            self._in_flight)
        self._closed = True
        self._source.abort_all()
        return self._in_flight == 0

    # -- the timer and the pump ------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now, since = self._clock.wall(), self._clock.monotonic()
        newly_due = self._heap.pop_due(now)
        for _, job_id in newly_due:
            self._due_since.setdefault(job_id, since)
        self._ready.extend(newly_due)
        if newly_due and self._told_rate_limit_until > since:
            self._tell_waiting_for_rate_limit(newly_due)
        self._pump()

    def _pump(self) -> None:
        """Give due jobs spare photos, start fetches for the rest, re-arm the timer."""
        served = []
        while self._ready and self._spares:  # also while stopping: photos fetched in the grace period
            due_at, job_id = self._ready.popleft()
            served.append((Outcome(job_id, self._clock.wall(), image=self._spares.popleft()), due_at))
        self._settle(served)
        if self._stopping:
            return
        now = self._clock.monotonic()
        if self._ready and self._gate.rate_limited_until > max(now, self._told_rate_limit_until):
            self._told_rate_limit_until = self._gate.rate_limited_until
            self._tell_waiting_for_rate_limit(self._ready)
        self._reserve(now)
        self._arm_timer()

    def _fetches_wanted(self, now: int) -> int:
        """More fetches the gate allows now that the due jobs need, or that keep the stock
        of spare photos from running out while the next jobs fall due (so that they find a
        photo at their due time instead of waiting for a call). Photos already on their way
        count: one batch serves up to `batch` jobs."""
        needed = len(self._ready) + self._stock_wanted()
        wanted = 0
        while (needed > len(self._spares) + (self._in_flight + wanted) * self._batch
               and self._gate.allowed_now(now, self._in_flight + wanted)):
            wanted += 1
        return wanted

    def _stock_wanted(self) -> int:
        """The spare photos to keep in stock: half a batch while a job falls due within
        PREFETCH_MS, none otherwise (a quiet server spends no call ahead)."""
        earliest = self._heap.earliest()
        if earliest is not None and earliest <= self._clock.wall() + PREFETCH_MS:
            return max(1, self._batch // 2)
        return 0

    def _next_wake(self) -> int | None:
        """Monotonic ms of the next thing to do: the next due time, or the gate opening."""
        earliest = self._heap.earliest()
        wake = None if earliest is None else self._clock.monotonic_at(earliest)
        now = self._clock.monotonic()
        for opens in (self._gate.open_at, self._budget_retry_at):
            if self._ready and opens > now:
                wake = opens if wake is None else min(wake, opens)
        return wake

    def _arm_timer(self) -> None:
        wake = self._next_wake()
        if wake == self._timer_at:
            return
        self._cancel_timer()
        if wake is not None and not self._stopping:
            self._timer_at = wake
            delay = max(0, wake - self._clock.monotonic()) / 1000
            self._timer = self._loop.call_later(delay, self._on_timer)  # the IOLoop's timers are monotonic

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
        self._timer = self._timer_at = None

    # -- fetches ---------------------------------------------------------------------------

    def _reserve(self, now: int) -> None:
        """Ask the budget for the fetches wanted now (one request at a time)."""
        if self._reserving or now < self._budget_retry_at:
            return
        wanted = self._fetches_wanted(now)
        if wanted:
            self._reserving = True
            future = self._budget.reserve_calls(wanted, self._clock.wall())
            self._loop.add_future(future, functools.partial(self._reserved, wanted))

    def _reserved(self, wanted: int, future: asyncio.Future[int]) -> None:
        """Start the granted fetches the gate still allows; give the others back."""
        self._reserving = False
        granted = future.result()
        now = self._clock.monotonic()
        usable = 0 if self._stopping else min(granted, self._fetches_wanted(now))
        for _ in range(usable):
            self._start_fetch(now)
        if granted > usable:
            self._release(granted - usable, None)
        if granted < wanted:
            self._budget_retry_at = now + BUDGET_RETRY_MS
        self._pump()

    def _release(self, count: int, report: BudgetReport | None) -> None:
        self._budget.release_calls(count, report, self._clock.wall())

    def _start_fetch(self, now: int) -> None:
        self._in_flight += 1
        future = self._loop.run_in_executor(self._pool, self._source.fetch, self._batch)
        self._loop.add_future(future, functools.partial(self._fetch_done, now))

    def _fetch_done(self, started_at: int, future: Any) -> None:
        self._in_flight -= 1
        if self._closed:  # after the grace: its jobs stay pending and run at the next start
            return
        now = self._clock.monotonic()
        report = None  # what the answer said of the budget
        try:
            fetched = future.result()
        except UpstreamError as exc:
            self._fetch_failed(exc, started_at, now)
            if isinstance(exc, RateLimited):
                report = self._gate.budget_report(0, now)
        except Exception as exc:  # a bug in a source must not stall the schedule
            log.exception("upstream fetch raised")
            self._fetch_failed(TransientError(f"unexpected error: {type(exc).__name__}"), started_at, now)
        else:
            self._gate.succeeded(fetched.rate_limit, fetched.rate_remaining, now)
            self._spares.extend(fetched.images)
            report = self._gate.budget_report(fetched.rate_remaining, now)
        self._budget_retry_at = 0  # the call given back may be what the budget lacked
        self._release(1, report)
        if self._in_flight == 0:
            for notify in self._idle:
                notify()
        self._pump()

    def _fetch_failed(self, exc: UpstreamError, started_at: int, now: int) -> None:
        """Tell the gate, and record the failed try on the jobs the fetch was for: the
        first in line. A rate limit is no try: it never uses up a job's attempts."""
        rate_limited = isinstance(exc, RateLimited)
        if rate_limited:
            self._gate.rate_limited(now, exc.retry_after_ms)
        elif exc.retryable:
            self._gate.failed(now, started_at, exc.retry_after_ms)
        elif exc.refuses_key:
            self._gate.rejected(now, str(exc))
        waiting = [self._ready.popleft() for _ in range(min(self._batch, len(self._ready)))]
        log.warning("upstream fetch failed (%s): %s; %d jobs affected", exc.code, exc, len(waiting))
        # Other errors have a cap on tries, and on time since the job was found due.
        self._settle([
            (Outcome(
                job_id, self._clock.wall(), error_code=exc.code, error_message=str(exc),
                final=not exc.retryable or (not rate_limited and self._past_retry_window(job_id, now)),
                max_attempts=None if rate_limited else self._max_attempts, attempted=not rate_limited,
            ), due_at)
            for due_at, job_id in waiting
        ])

    def _past_retry_window(self, job_id: str, now: int) -> bool:
        return now - self._due_since.get(job_id, now) > self._retry_window_ms

    def _tell_waiting_for_rate_limit(self, jobs: Iterable[tuple[int, str]]) -> None:
        """Record on each job (no try counted) that it waits for the request budget; the
        jobs keep their place in line."""
        until = iso_utc(self._clock.wall_at(self._gate.rate_limited_until))
        message = f"waiting for the Unsplash rate limit to reset (until {until})"
        outcomes = [
            Outcome(job_id, self._clock.wall(), error_code="rate_limited", error_message=message, final=False,
                    attempted=False)
            for _, job_id in jobs
        ]
        self._loop.add_future(self._writer.apply_outcomes(outcomes), _log_write_failure)

    # -- outcomes --------------------------------------------------------------------------

    def _settle(self, settled: list[tuple[Outcome, int]]) -> None:
        """Hand (outcome, due_at) pairs to the writer as one operation."""
        if not settled:
            return
        self._settling += len(settled)
        future = self._writer.apply_outcomes([outcome for outcome, _ in settled])
        self._loop.add_future(future, functools.partial(self._settled, settled))

    def _settled(
        self, settled: list[tuple[Outcome, int]], future: asyncio.Future[list[str | NotStored | None]]
    ) -> None:
        self._settling -= len(settled)
        try:
            statuses = future.result()
        except StoreError as exc:
            log.error("could not record %d outcomes: %s; trying those jobs again later", len(settled), exc)
            for outcome, _ in settled:
                self.add(outcome.job_id, self._clock.wall() + STORE_RETRY_MS)
            return
        retry, unwritable = [], []
        for (outcome, due_at), status in zip(settled, statuses, strict=True):
            if isinstance(status, NotStored):
                unwritable.append((outcome, due_at, status.reason))
            elif status == PENDING:  # a failed try, retried once the gate opens: back in line
                retry.append((due_at, outcome.job_id))
            else:  # settled for good, or no longer pending
                self._store_failures.pop(outcome.job_id, None)
                self._due_since.pop(outcome.job_id, None)
        self._ready.extend(retry)
        self._not_stored(unwritable)
        if retry or unwritable:
            self._pump()

    def _not_stored(self, unwritable: list[tuple[Outcome, int, str]]) -> None:
        """Outcomes whose data the store could not write (the rest of their batch was
        written): the job goes back in line for another photo, up to MAX_STORE_TRIES
        times, then fails with `result_not_storable`, logged once."""
        final = []
        for outcome, due_at, reason in unwritable:
            tries = self._store_failures[outcome.job_id] = self._store_failures.get(outcome.job_id, 0) + 1
            if outcome.error_code == NOT_STORABLE:  # even the failure cannot be written
                log.critical("job %s cannot be written at all (%s); it stays pending until a restart",
                             outcome.job_id, reason)
                self._store_failures.pop(outcome.job_id, None)
            elif tries < MAX_STORE_TRIES:
                self._ready.append(due_at, outcome.job_id)
            else:
                log.error("job %s failed: its result could not be stored after %d tries (%s)",
                          outcome.job_id, tries, reason)
                message = f"the result could not be stored after {tries} tries"
                final.append((Outcome(outcome.job_id, self._clock.wall(), error_code=NOT_STORABLE,
                                      error_message=message), due_at))
        self._settle(final)


def _log_write_failure(future: asyncio.Future[list[str | NotStored | None]]) -> None:
    if future.exception() is not None:
        log.error("could not record a job's waiting state: %s", future.exception())
