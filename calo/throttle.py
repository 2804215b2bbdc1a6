"""When the upstream may be called next: backoff after failures, a pause on rate limits.

Owns the policy that keeps Calo Jobs from hammering Unsplash. After a failure the whole
upstream backs off (exponential, capped, with "equal jitter": each wait is drawn between
half and all of its step, so servers that failed together do not retry in step), and only
one request at a time probes it until one succeeds, so the calls per minute stay bounded
however many jobs are due. When the request budget is spent, every call waits until the window can have reset.

It logs when its state changes (failing, recovered, rate limited), and `state()` says
what it is now, for `/readyz` and `/metrics`.

Threads: IOLoop thread only (plain state, no locks).
Must never: sleep, do I/O beyond those log lines, or know about jobs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Literal, NotRequired, TypedDict

from calo.clock import iso_utc

log = logging.getLogger("calo.upstream")

BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 60_000
RATE_LIMIT_PAUSE_MS = 3_600_000  # Unsplash's budget is per hour, and its reset time is not sent


class UpstreamState(TypedDict):
    """What `UpstreamGate.state` says; times are ms since the epoch."""

    state: Literal["ok", "failing", "rate_limited"]
    since: NotRequired[int | None]  # ok: when calls last started working (0: always); failing: since when
    until: NotRequired[int]  # rate_limited: no call before this
    failures: NotRequired[int]  # failing: consecutive failed calls


class UpstreamGate:
    def __init__(self, workers: int, rate_limit_pause_ms: int = RATE_LIMIT_PAUSE_MS, rng: random.Random | None = None):
        self._workers = workers
        self.on_rate_limited: Callable[[int], None] = lambda until: None  # e.g. tell the other servers
        self._rate_limit_pause_ms = rate_limit_pause_ms
        self._rng = rng or random.Random()
        self.failures = 0  # consecutive failed calls
        self.open_at = 0  # ms since the epoch; no call starts before this
        self.rate_limited_until = 0
        self.rate_limit: int | None = None
        self.rate_remaining: int | None = None
        self.failing_since: int | None = None  # first failure of the current run of failures
        self.healthy_since = 0  # the last recovery from failures (0: none yet)

    def allowed_now(self, now: int, in_flight: int) -> bool:
        """May one more call start now, with `in_flight` calls already running?"""
        if now < self.open_at:
            return False
        limit = 1 if self.failures else self._workers  # one probe at a time while failing
        return in_flight < limit

    def is_rate_limited(self, now: int) -> bool:
        return now < self.rate_limited_until

    def state(self, now: int) -> UpstreamState:
        """Read-only: "rate_limited" (with `until`), "failing" (with `since`), or "ok"
        (with `since`: when calls last started working again, 0 if they never stopped)."""
        if self.is_rate_limited(now):
            return {"state": "rate_limited", "until": self.rate_limited_until}
        if self.failures:
            return {"state": "failing", "since": self.failing_since, "failures": self.failures}
        return {"state": "ok", "since": max(self.healthy_since, self.rate_limited_until)}

    def succeeded(self, limit: int | None, remaining: int | None, now: int) -> None:
        if self.failures:
            log.info("upstream recovered after %d failed calls", self.failures)
            self.healthy_since, self.failing_since = now, None
        self.failures = 0
        self.rate_limit, self.rate_remaining = limit, remaining
        if remaining == 0:  # the budget is spent: don't spend a call to learn it
            self.rate_limited(now)

    def failed(self, now: int) -> None:
        """A transient failure: no call starts for a backoff (`open_at`) that doubles with
        each failure in a row, from BACKOFF_BASE_MS to BACKOFF_CAP_MS."""
        if not self.failures:
            log.warning("upstream failing since %s", iso_utc(now))
            self.failing_since = now
        self.failures += 1
        ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** min(self.failures - 1, 20))
        backoff = self._rng.randint(ceiling // 2, ceiling)  # jitter spreads the retries
        self.open_at = max(self.open_at, now + backoff)

    def pause_until(self, until: int) -> None:
        """Another server found the budget spent: no call before `until` (ms)."""
        if until > self.rate_limited_until:
            self.rate_remaining = 0
            self.rate_limited_until = until
            log.warning("upstream rate limited until %s (found by another server)", iso_utc(until))
            self.open_at = max(self.open_at, until)

    def rate_limited(self, now: int) -> None:
        self.rate_remaining = 0
        self.rate_limited_until = now + self._rate_limit_pause_ms
        log.warning("upstream rate limited until %s", iso_utc(self.rate_limited_until))
        self.open_at = max(self.open_at, self.rate_limited_until)
        self.on_rate_limited(self.rate_limited_until)
