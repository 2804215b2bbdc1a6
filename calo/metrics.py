"""Metrics: `GET /metrics` in the Prometheus text format, from one registry per `Calo`.

Owns what Calo Jobs measures and the names it is exported under. Most values are read
from the live parts at scrape time by `LiveCollector`: jobs by status, the scheduler's
queues, the worker pool's queue, WebSocket clients and events sent, the upstream's state
and rate-limit budget, each upkeep task's last run. What happens and is gone is counted
where it happens, by two small hooks:
- `Metrics.observe_committed(events)`, from the writer's on-commit callback: jobs
  created, resolved, failed, cancelled and retried, and how late each job resolved (`resolved_at - due_at`);
- `MeteredSource`, which wraps the photo source: upstream requests by outcome, and how
  many fetches are running (the pool's queue depth is those submitted minus those running).
IOLoop lag is measured by a timer that records how late it fires (`LoopLag`).

One `CollectorRegistry` per `Calo`, never prometheus_client's global one: the tests run
many servers in one process, and the global registry refuses a metric name twice.

Threads: `observe_committed` runs on the IOLoop thread and `MeteredSource.fetch` on the
worker pool; they touch only prometheus_client's metrics (which lock) and a counter under
a lock. `LiveCollector.collect` runs on the IOLoop thread (inside the /metrics handler).
Must never: block the IOLoop, export a secret, or use the global default registry.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from tornado.ioloop import IOLoop

from calo.health import Health, OpsHandler
from calo.jobs import CANCELLED_EVENT, CREATED, EVENT_FOR_STATUS, FAILED, RESOLVED, RETRIED, STATUSES
from calo.storage.base import StoreError
from calo.unsplash import Fetched, UpstreamError

if TYPE_CHECKING:
    from calo.export import JsonExporter
    from calo.live import Hub
    from calo.scheduler import Scheduler
    from calo.storage.base import Event, Storage
    from calo.throttle import UpstreamGate
    from calo.unsplash import PhotoSource
    from calo.upkeep import Upkeep

# The client library adds a `*_created` gauge (a start timestamp) beside every counter and
# histogram; no query of ours uses them and they double the series. Process-wide switch.
disable_created_metrics()  # type: ignore[no-untyped-call]  # (untyped in prometheus_client)

LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LAG_EVERY_SECONDS = 0.5
UPSTREAM_STATES = ("ok", "failing", "rate_limited", "rejected", "demo")


class Metrics:
    """The registry and the metrics fed by hooks. Make one per `Calo`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        by_type = {
            CREATED: ("calo_jobs_created", "Jobs created"),
            EVENT_FOR_STATUS[RESOLVED]: ("calo_jobs_resolved", "Jobs resolved with a photo"),
            EVENT_FOR_STATUS[FAILED]: ("calo_jobs_failed", "Jobs that failed for good"),
            CANCELLED_EVENT: ("calo_jobs_cancelled", "Pending jobs cancelled before their photo was fetched"),
            RETRIED: ("calo_jobs_retried", "Failed jobs put back to pending (one at a time or all at once)"),
        }
        self._counters = {kind: Counter(name, text, registry=self.registry) for kind, (name, text) in by_type.items()}
        self._lateness = Histogram(
            "calo_job_lateness_seconds", "How long after its due time a job resolved (resolved_at - due_at)",
            buckets=LATENESS_BUCKETS, registry=self.registry,
        )
        self.upstream_requests = Counter(
            "calo_upstream_requests", "Photo fetches by outcome (ok, or the error code)", ["outcome"],
            registry=self.registry,
        )
        self.upstream_requests.labels("ok")  # present at 0 from the start, not after the first fetch
        self.loop_lag = Histogram(
            "calo_ioloop_lag_seconds", "How late an IOLoop timer fired: time the loop was busy elsewhere",
            buckets=LAG_BUCKETS, registry=self.registry,
        )

    def observe_committed(self, events: list[Event]) -> None:
        """IOLoop thread, after a commit: count the changes, time the resolutions."""
        for event in events:
            counter = self._counters.get(event.type)
            if counter is None:
                continue
            counter.inc()
            if event.lateness_ms is not None:
                self._lateness.observe(max(0, event.lateness_ms) / 1000)

    def render(self, accept: str) -> tuple[bytes, str]:
        """(body, Content-Type): OpenMetrics when `accept` asks for it, else the
        Prometheus text format."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class MeteredSource:
    """A photo source that counts its fetches' outcomes and how many are running.
    `fetch` runs on the worker pool, like the source it wraps."""

    def __init__(self, source: PhotoSource, requests: Counter):
        self._source = source
        self._requests = requests
        self._lock = threading.Lock()
        self._running = 0
        self.name = source.name

    def describe(self) -> str:
        return self._source.describe()

    def abort_all(self) -> None:
        self._source.abort_all()

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    def fetch(self, count: int) -> Fetched:
        outcome = "error"  # anything but an UpstreamError: a bug, which the scheduler logs
        with self._lock:
            self._running += 1
        try:
            fetched = self._source.fetch(count)
            outcome = "ok"
            return fetched
        except UpstreamError as exc:
            outcome = exc.code
            raise
        finally:
            with self._lock:
                self._running -= 1
            self._requests.labels(outcome).inc()


class LoopLag:
    """Measures IOLoop lag: a timer due every `every` seconds notes how late it ran."""

    def __init__(self, histogram: Histogram, every: float = LAG_EVERY_SECONDS):
        self._histogram = histogram
        self._every = every
        self._loop = IOLoop.current()
        self._timer: object | None = None
        self._expected = 0.0

    def start(self) -> None:
        # The monotonic clock: IOLoop.time() is the wall clock, and a step is no lag.
        self._expected = time.monotonic() + self._every
        self._timer = self._loop.call_later(self._every, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None

    def _tick(self) -> None:
        self._histogram.observe(max(0.0, time.monotonic() - self._expected))
        self.start()


class LiveCollector:
    """Reads the running parts when Prometheus scrapes. IOLoop thread only."""

    def __init__(
        self, *, scheduler: Scheduler, source: MeteredSource, gate: UpstreamGate,
        health: Health, hub: Hub, upkeep: Upkeep, exporter: JsonExporter, storage: Storage,
    ):
        self._scheduler, self._source, self._gate = scheduler, source, gate
        self._health, self._hub, self._upkeep, self._exporter = health, hub, upkeep, exporter
        self._storage = storage

    def collect(self) -> Iterator[Metric]:
        yield self._jobs()
        yield from self._scheduler_metrics()
        yield from self._upstream()
        yield GaugeMetricFamily("calo_websocket_clients", "WebSocket clients connected", value=len(self._hub))
        yield CounterMetricFamily("calo_websocket_events_sent", "Job events sent to WebSocket clients",
                                  value=self._hub.events_sent)
        yield from self._upkeep_runs()
        yield GaugeMetricFamily("calo_writer_up", "1 while writes reach the database, 0 while they fail (SQLite: "
                                "its writer process died, and the server exits for systemd to restart it; "
                                "PostgreSQL: it is unreachable, and the server reconnects by itself)",
                                value=0 if self._storage.write_failure else 1)
        yield GaugeMetricFamily("calo_writes_waiting", "Writes handed to the database and not yet answered "
                                "(grows while the disk or the database stalls)", value=self._storage.writes_waiting)

    def _jobs(self) -> Metric:
        counts = self._health.counts  # refreshed by the handler just before
        family = GaugeMetricFamily("calo_jobs", "Jobs in the database by status", labels=["status"])
        for status in STATUSES:
            family.add_metric([status], counts.get(status, 0))
        return family

    def _scheduler_metrics(self) -> Iterator[Metric]:
        stats = self._scheduler.stats()
        queued = GaugeMetricFamily("calo_scheduler_jobs", "Pending jobs held by the scheduler: "
                                   "scheduled (not yet due) or ready (due, waiting for a photo)", labels=["queue"])
        queued.add_metric(["scheduled"], stats["scheduled"])
        queued.add_metric(["ready"], stats["ready"])
        yield queued
        yield GaugeMetricFamily("calo_scheduler_spare_photos", "Photos fetched and not yet used",
                                value=stats["spare_photos"])
        yield GaugeMetricFamily("calo_fetches_in_flight", "Fetches submitted to the worker pool",
                                value=stats["fetches_in_flight"])
        yield CounterMetricFamily("calo_wall_clock_steps", "Wall-clock steps noticed (each re-planned the timers)",
                                  value=self._scheduler.clock_watch.steps)
        running = self._source.running
        yield GaugeMetricFamily("calo_pool_queue_depth", "Fetches waiting for a free worker thread",
                                value=max(0, stats["fetches_in_flight"] - running))
        yield from self._overdue()

    def _overdue(self) -> Iterator[Metric]:
        check = self._health.scheduler()
        overdue = check["oldest_overdue"]
        yield GaugeMetricFamily("calo_scheduler_oldest_overdue_seconds", "How long the pending job due first "
                                "has been overdue (0: none is)", value=overdue["overdue_seconds"] if overdue else 0)
        yield GaugeMetricFamily("calo_scheduler_stuck", "1 while a due job waits too long with the upstream "
                                "healthy (not ready, no watchdog ping)", value=0 if check["ok"] else 1)

    def _upstream(self) -> Iterator[Metric]:
        current = self._health.upstream()["state"]
        state = GaugeMetricFamily("calo_upstream_state", "The upstream's state (1 for the current one)",
                                  labels=["state"])
        for name in UPSTREAM_STATES:
            state.add_metric([name], 1 if name == current else 0)
        yield state
        # Always present (NaN until Unsplash has told us), so that absent() alerts mean "down".
        remaining, limit = self._gate.rate_remaining, self._gate.rate_limit
        yield GaugeMetricFamily("calo_upstream_rate_limit_remaining", "Requests left in the upstream's "
                                "budget (X-Ratelimit-Remaining; NaN until known)",
                                value=math.nan if remaining is None else remaining)
        yield GaugeMetricFamily("calo_upstream_rate_limit", "The upstream's request budget per window "
                                "(X-Ratelimit-Limit; NaN until known)", value=math.nan if limit is None else limit)

    def _upkeep_runs(self) -> Iterator[Metric]:
        labels = ["task"]
        last_run = GaugeMetricFamily("calo_upkeep_last_run_timestamp_seconds", "When each upkeep task last ran "
                                     "(export_json: the jobs.json export)", labels=labels)
        duration = GaugeMetricFamily("calo_upkeep_last_duration_seconds", "How long its last run took", labels=labels)
        ok = GaugeMetricFamily("calo_upkeep_last_run_ok", "1 if its last run worked", labels=labels)
        runs = [(task.name, task.last_run_at, task.last_duration, task.last_ok) for task in self._upkeep.tasks]
        exporter = self._exporter
        runs.append(("export_json", exporter.last_run_at, exporter.last_duration, exporter.last_ok))
        for name, run_at, took, worked in runs:
            # Not run yet: timestamp 0 (never) and ok 1 (nothing failed), so that every
            # series exists from the start and absent() alerts mean "down".
            last_run.add_metric([name], 0 if run_at is None else run_at / 1000)
            duration.add_metric([name], took or 0.0)
            ok.add_metric([name], 1 if run_at is None or worked else 0)
        yield from (last_run, duration, ok)


class MetricsHandler(OpsHandler):
    """GET /metrics -> 200, the Prometheus text exposition format."""

    def initialize(self, metrics: Metrics, health: Health) -> None:
        self.metrics = metrics
        self.health = health

    async def get(self) -> None:
        try:
            await self.health.refresh()  # the job counts and the oldest pending job
        except StoreError:
            pass  # the last known counts; /readyz says what is wrong
        body, content_type = self.metrics.render(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(body)
