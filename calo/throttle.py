"""When the upstream may be called next: backoff after failures, a pause on rate limits.

Owns the policy that keeps Calo Jobs from hammering Unsplash. After a failure the whole
upstream backs off (exponential, full jitter, capped), and only one request at a time
probes it until one succeeds, so the calls per minute stay bounded however many jobs are
due. When the request budget is spent, every call waits until the window can have reset.

Threads: IOLoop thread only (plain state, no locks).
Must never: sleep, do I/O, or know about jobs.
"""

from __future__ import annotations

import random

BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 60_000
RATE_LIMIT_PAUSE_MS = 3_600_000  # Unsplash's budget is per hour, and its reset time is not sent


class UpstreamGate:
    def __init__(self, workers: int, rate_limit_pause_ms: int = RATE_LIMIT_PAUSE_MS, rng: random.Random | None = None):
        self._workers = workers
        self._rate_limit_pause_ms = rate_limit_pause_ms
        self._rng = rng or random.Random()
        self.failures = 0  # consecutive failed calls
        self.open_at = 0  # ms since the epoch; no call starts before this
        self.rate_limited_until = 0
        self.rate_limit: int | None = None
        self.rate_remaining: int | None = None

    def allowed_now(self, now: int, in_flight: int) -> bool:
        """May one more call start now, with `in_flight` calls already running?"""
        if now < self.open_at:
            return False
        limit = 1 if self.failures else self._workers  # one probe at a time while failing
        return in_flight < limit

    def is_rate_limited(self, now: int) -> bool:
        return now < self.rate_limited_until

    def succeeded(self, limit: int | None, remaining: int | None, now: int) -> None:
        self.failures = 0
        self.rate_limit, self.rate_remaining = limit, remaining
        if remaining == 0:  # the budget is spent: don't spend a call to learn it
            self.rate_limited(now)

    def failed(self, now: int) -> int:
        """A transient failure; returns the backoff in ms before the next call."""
        self.failures += 1
        ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** min(self.failures - 1, 20))
        backoff = self._rng.randint(ceiling // 2, ceiling)  # jitter spreads the retries
        self.open_at = max(self.open_at, now + backoff)
        return backoff

    def rate_limited(self, now: int) -> None:
        self.rate_remaining = 0
        self.rate_limited_until = now + self._rate_limit_pause_ms
        self.open_at = max(self.open_at, self.rate_limited_until)
