"""When the upstream may be called next: backoff after failures, a pause on rate limits.

Owns the policy that keeps Calo Jobs from hammering Unsplash. After a failed round of
calls the whole upstream backs off (exponential, capped, with "equal jitter": each wait is
drawn between half and all of its step, so servers that failed together do not retry in
step), and only one request at a time probes it until one succeeds, so the calls per
minute stay bounded however many jobs are due. A round is the calls that were already
running when a failure was counted: their failures say nothing new, so several parallel
calls failing together escalate the backoff once, not once each, and a short outage costs
about its own length. When the request budget is spent, every call waits until the window
can have reset, or as long as the upstream's `Retry-After` says. A refused key (401, or a
403 that is not a rate limit) makes the state `rejected` until a call works again.

Every time here is on the monotonic clock (calo.clockwatch): a wall-clock step neither ends a
pause early nor stretches a backoff by the size of the step.

How many calls the budget still allows is not decided here but by the budget every server
shares (calo.budget, held by the storage); `budget_report` says what an answer told it.

It logs when its state changes (failing, recovered, rate limited, rejected), and `state()`
says what it is now, for `/readyz` and `/metrics`.

Threads: IOLoop thread only (plain state, no locks).
Must never: sleep, do I/O beyond those log lines, or know about jobs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Literal, NotRequired, TypedDict

from calo.budget import BudgetReport
from calo.clock import iso_utc
from calo.clockwatch import Clock

log = logging.getLogger("calo.upstream")

BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 60_000
RATE_LIMIT_PAUSE_MS = 3_600_000  # Unsplash's budget is per hour, and its reset time is not sent
RETRY_AFTER_CAP_MS = 86_400_000  # a Retry-After is honoured up to a day


class UpstreamState(TypedDict):
    """What `UpstreamGate.state` says; times are monotonic ms (calo.clockwatch)."""

    state: Literal["ok", "failing", "rate_limited", "rejected"]
    since: NotRequired[int | None]  # ok: when calls last started working (None: always); failing, rejected: since when
    until: NotRequired[int]  # rate_limited: no call before this
    failures: NotRequired[int]  # failing: consecutive failed rounds of calls
    reason: NotRequired[str]  # rejected: what the upstream said


class UpstreamGate:
    def __init__(
        self, workers: int, rate_limit_pause_ms: int = RATE_LIMIT_PAUSE_MS, rng: random.Random | None = None,
        clock: Clock | None = None,
    ):
        self._workers = workers
        self._clock = clock or Clock()  # wall-clock times for log lines and other servers only
        self.on_rate_limited: Callable[[int], None] = lambda until: None  # e.g. tell the other servers
        self._rate_limit_pause_ms = rate_limit_pause_ms
        self._rng = rng or random.Random()
        self.failures = 0  # consecutive failed rounds of calls
        self._escalated_at: int | None = None  # when the backoff last grew; calls started before are that round
        self.open_at = 0  # monotonic ms; no call starts before this
        self.rate_limited_until = 0  # monotonic ms
        self.rate_limit: int | None = None
        self.rate_remaining: int | None = None
        self.failing_since: int | None = None  # first failure of the current run of failures
        self.healthy_since: int | None = None  # the last recovery (None: never failed)
        self.rejected_since: int | None = None  # the key was refused, and no call has worked since
        self.rejected_reason = ""

    def allowed_now(self, now: int, in_flight: int) -> bool:
        """May one more call start now, with `in_flight` calls already running?"""
        if now < self.open_at:
            return False
        limit = 1 if self.failures else self._workers  # one probe at a time while failing
        return in_flight < limit

    def is_rate_limited(self, now: int) -> bool:
        return now < self.rate_limited_until

    def budget_report(self, remaining: int | None, now: int) -> BudgetReport:
        """What an answer at `now` (monotonic ms) that said `remaining` tells the shared
        budget (calo.budget), once `succeeded` or `rate_limited` has taken it in: spent
        until the pause ends while one runs, else `remaining` for one window (the pause's
        length: Unsplash renews its budget hourly, and sends no reset time)."""
        if remaining == 0 or self.is_rate_limited(now):  # a Retry-After of 0 ends the pause at once
            return BudgetReport(0, self._clock.wall_at(max(now, self.rate_limited_until)))
        return BudgetReport(remaining, self._clock.wall_at(now + self._rate_limit_pause_ms))

    def state(self, now: int) -> UpstreamState:
        """Read-only, times in monotonic ms: "rate_limited" (with `until`), "rejected"
        (with `since` and `reason`), "failing" (with `since`), or "ok" (with `since`:
        when calls last started working again; None if they never stopped)."""
        if self.is_rate_limited(now):
            return {"state": "rate_limited", "until": self.rate_limited_until}
        if self.rejected_since is not None:
            return {"state": "rejected", "since": self.rejected_since, "reason": self.rejected_reason}
        if self.failures:
            return {"state": "failing", "since": self.failing_since, "failures": self.failures}
        ends = [t for t in (self.healthy_since, self.rate_limited_until or None) if t is not None]
        return {"state": "ok", "since": max(ends) if ends else None}

    def succeeded(self, limit: int | None, remaining: int | None, now: int) -> None:
        if self.rejected_since is not None:
            log.info("upstream accepts the access key again")
        if self.failures:
            log.info("upstream recovered after %d failed rounds of calls", self.failures)
        if self.failures or self.rejected_since is not None:
            self.healthy_since, self.failing_since = now, None
        self.failures, self._escalated_at, self.rejected_since = 0, None, None
        self.rate_limit, self.rate_remaining = limit, remaining
        if remaining == 0:  # the budget is spent: don't spend a call to learn it
            self.rate_limited(now)

    def failed(self, now: int, started_at: int, retry_after_ms: int | None = None) -> None:
        """A transient failure of a call started at `started_at`. The backoff grows only
        if the call started after the last time it grew (a new round); `retry_after_ms`
        (the upstream's Retry-After) holds calls back at least that long."""
        if self._escalated_at is None or started_at >= self._escalated_at:
            if not self.failures:
                log.warning("upstream failing since %s", iso_utc(self._clock.wall()))
                self.failing_since = now
            self.failures += 1
            self._escalated_at = now
            ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** min(self.failures - 1, 20))
            self.open_at = max(self.open_at, now + self._rng.randint(ceiling // 2, ceiling))  # jitter
        if retry_after_ms is not None:
            self.open_at = max(self.open_at, now + min(retry_after_ms, RETRY_AFTER_CAP_MS))

    def pause_until(self, until: int) -> None:
        """Another server found the budget spent: no call before `until` (wall-clock ms,
        the one clock servers share), held here on the monotonic clock."""
        until_monotonic = self._clock.monotonic_at(until)
        if until_monotonic > self.rate_limited_until:
            self.rate_remaining = 0
            self.rate_limited_until = until_monotonic
            log.warning("upstream rate limited until %s (found by another server)", iso_utc(until))
            self.open_at = max(self.open_at, until_monotonic)

    def rate_limited(self, now: int, pause_ms: int | None = None) -> None:
        """The budget is spent: no call for `pause_ms` (the upstream's Retry-After), or
        `--rate-limit-pause` when it gave none."""
        pause = self._rate_limit_pause_ms if pause_ms is None else min(pause_ms, RETRY_AFTER_CAP_MS)
        self.rate_remaining = 0
        self.rate_limited_until = max(self.rate_limited_until, now + pause)
        log.warning("upstream rate limited until %s (%.0f s)", iso_utc(self._clock.wall_at(self.rate_limited_until)),
                    (self.rate_limited_until - now) / 1000)
        self.open_at = max(self.open_at, self.rate_limited_until)
        self.on_rate_limited(self._clock.wall_at(self.rate_limited_until))

    def rejected(self, now: int, reason: str) -> None:
        """The upstream refused the access key (401, or a 403 that is not a rate limit)."""
        if self.rejected_since is None:
            log.error("upstream rejected the access key: %s", reason)
            self.rejected_since = now
        self.rejected_reason = reason
