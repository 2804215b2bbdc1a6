"""Recent activity for the dashboard: `GET /stats`, kept by the server itself (no Prometheus).

Owns the per-minute series the page draws as small charts: over the last hour, jobs
created, resolved, failed, cancelled and retried per minute, and how late jobs resolved
(`resolved_at - due_at`: count, p50, p99 and max per minute, the quantiles from a uniform
sample of at most `SAMPLES` resolutions per minute). It is fed from the writer's commits
(`observe`, like the metrics), and seeded at start-up from the event log of the last hour,
so a restart does not empty the charts. The seed is read by the storage off the IOLoop
(`Storage.activity_since`: the database counts and samples; Python sees a few thousand
rows at most) and merged on the IOLoop. With a shared database it is fed every server's
events (the app's `_on_events`), so every server's dashboard shows them all.

`StatsReport.document()` is the body of `GET /stats`:
{"at", "seq", "total", "counts": {status: n}, "upstream": {...as /readyz shows it},
 "minutes": [{"start", "created", "resolved", "failed", "cancelled", "retried",
              "lateness": null | {"count", "p50_ms", "p99_ms", "max_ms"}}, ... 60 of them,
              oldest first, the last one the current minute]}

Threads: IOLoop thread only; the seed's read is a coroutine of the storage.
Must never: block the IOLoop, or count an event twice: the seed reads only events up to the
seq the server started at, and every later commit is observed live.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop

from calo.clock import iso_utc, now_ms
from calo.jobs import CANCELLED_EVENT, CREATED, EVENT_FOR_STATUS, FAILED, RESOLVED, RETRIED, STATUSES

if TYPE_CHECKING:
    from calo.health import Health
    from calo.service import JobService
    from calo.storage.base import Event, Storage, StoredActivity

log = logging.getLogger("calo.stats")

MINUTE_MS = 60_000
WINDOW_MINUTES = 60
SAMPLES = 256  # lateness values kept per minute (a uniform sample: reservoir sampling)
COUNTED = {
    CREATED: "created", EVENT_FOR_STATUS[RESOLVED]: "resolved", EVENT_FOR_STATUS[FAILED]: "failed",
    CANCELLED_EVENT: "cancelled", RETRIED: "retried",
}


@dataclasses.dataclass
class _Minute:
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    late_count: int = 0
    late_max: float = 0.0
    late_sample: list[float] = dataclasses.field(default_factory=list)
    summary: dict[str, float] | None = None  # lateness(), kept until the next value

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def late(self, ms: float, rng: random.Random) -> None:
        self.summary = None
        self.late_count += 1
        self.late_max = max(self.late_max, ms)
        if len(self.late_sample) < SAMPLES:
            self.late_sample.append(ms)
        else:
            slot = rng.randrange(self.late_count)
            if slot < SAMPLES:
                self.late_sample[slot] = ms

    def lateness(self) -> dict[str, float] | None:
        """Count, p50, p99 and max; sorted once per change, so a past minute costs
        nothing on each GET /stats (the sort was 2.6 ms a call for a busy hour)."""
        if not self.late_count:
            return None
        if self.summary is None:
            self.summary = self._summarize()
        return self.summary

    def _summarize(self) -> dict[str, float]:
        ordered = sorted(self.late_sample)
        return {
            "count": self.late_count, "p50_ms": round(_quantile(ordered, 0.5), 1),
            "p99_ms": round(_quantile(ordered, 0.99), 1), "max_ms": round(self.late_max, 1),
        }


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


class Activity:
    """Per-minute counts and lateness over the last hour. IOLoop thread only."""

    def __init__(self, clock: Callable[[], int] = now_ms, rng: random.Random | None = None):
        self._clock = clock
        self._rng = rng or random.Random()
        self._minutes: dict[int, _Minute] = {}

    def observe(self, events: Iterable[Event]) -> None:
        """IOLoop thread, after a commit: count its events in the current minute."""
        minute = self._minute(self._clock())
        for event in events:
            name = COUNTED.get(event.type)
            if name is None:
                continue
            minute.count(name)
            if event.lateness_ms is not None:
                minute.late(max(0, event.lateness_ms), self._rng)

    def minutes(self) -> list[dict[str, Any]]:
        """The last WINDOW_MINUTES minutes, oldest first, the current one last."""
        now = self._clock() // MINUTE_MS * MINUTE_MS
        first = now - (WINDOW_MINUTES - 1) * MINUTE_MS
        for start in [start for start in self._minutes if start < first]:
            del self._minutes[start]
        series = []
        for start in range(first, now + 1, MINUTE_MS):
            minute = self._minutes.get(start) or _Minute()
            series.append({
                "start": iso_utc(start), **{name: minute.counts.get(name, 0) for name in COUNTED.values()},
                "lateness": minute.lateness(),
            })
        return series

    def _minute(self, at: int) -> _Minute:
        start = at // MINUTE_MS * MINUTE_MS
        minute = self._minutes.get(start)
        if minute is None:
            minute = self._minutes[start] = _Minute()
        return minute

    # -- the seed from the event log ------------------------------------------------------------

    def seed(self, storage: Storage, up_to_seq: int) -> None:
        """Read the last hour of the event log (events up to `up_to_seq`, the latest when
        the server started) in the background, then add it in. Call on the IOLoop thread,
        before anything is committed."""
        since = self._clock() // MINUTE_MS * MINUTE_MS - (WINDOW_MINUTES - 1) * MINUTE_MS

        async def read() -> None:
            try:
                rows = await storage.activity_since(since, up_to_seq, SAMPLES)
            except Exception as exc:  # the charts start empty; the server is fine
                log.warning("could not read the last hour of events for the dashboard: %s", exc)
                return
            self._merge(rows)

        IOLoop.current().add_callback(read)

    def _merge(self, activity: StoredActivity) -> None:
        for start, sampled_late in activity.samples:
            self._minute(start).late(max(0.0, sampled_late), self._rng)
        for start, kind, count, max_late in activity.counts:
            name = COUNTED.get(kind)
            if name is None:
                continue
            minute = self._minute(start)
            minute.count(name, count)
            if max_late is not None:
                # The sample holds at most SAMPLES of them; the count and maximum are exact.
                minute.late_count += count - min(count, SAMPLES)
                minute.late_max = max(minute.late_max, max_late)
                minute.summary = None


class StatsReport:
    """The body of `GET /stats`, from the job counts, the activity and the upstream's
    state. IOLoop thread only."""

    def __init__(self, service: JobService, activity: Activity, health: Health):
        self._service = service
        self._activity = activity
        self._health = health

    async def document(self) -> dict[str, Any]:
        """Raises StoreError when the counts cannot be read."""
        counts = await self._service.counts()
        by_status = {status: counts.get(status, 0) for status in STATUSES}
        return {
            "at": iso_utc(now_ms()), "seq": await self._service.latest_seq(),
            "total": sum(by_status.values()), "counts": by_status,
            "upstream": self._health.upstream(), "minutes": self._activity.minutes(),
        }
