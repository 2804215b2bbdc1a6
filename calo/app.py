"""Wiring, in one place: the route table, and the parts built from `Settings`.

Owns which part talks to which, and the order they start and stop in:
start: storage (SQLite: lock, migrate, writer process, reader; PostgreSQL: migrate, writer,
pool, log follower) -> clock watch -> scheduler (recovery) -> JSON exporter -> upkeep ->
health checks and metrics -> the supervisor; stop (within one grace period): /readyz says
503 -> upkeep, supervisor -> scheduler (grace for in-flight fetches, then the rest cut
short) -> requests already read are answered (`answer_requests`) -> storage (commits what
was sent and, for SQLite, checkpoints the WAL; a writer that does not stop by the end of
the grace is killed) -> exporter (final flush).

Threads: `Calo.start` and `Calo.stop` run on the IOLoop thread, and so do `_on_events`,
`_on_commit` and `_storage_died`: the storage calls them on the IOLoop. Other threads
(the pool, the exporter) cross only through `run_in_executor` futures and the exporter's
thread-safe `mark_changed`.
Must never: hold logic of its own beyond building and connecting the parts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.ioloop import IOLoop
from tornado.platform.asyncio import BaseAsyncIOLoop

from calo.access import AccessPolicy, answered_hosts
from calo.api import (
    CancelHandler,
    JobEventsHandler,
    JobHandler,
    JobsHandler,
    NotFoundHandler,
    RetryFailedHandler,
    RetryHandler,
    StatsHandler,
)
from calo.clockwatch import ClockWatch
from calo.config import Settings
from calo.export import JsonExporter
from calo.health import Health, HealthzHandler, ReadyzHandler
from calo.live import MAX_CLIENT_MESSAGE_BYTES, EventsSocket, Hub
from calo.metrics import LiveCollector, LoopLag, MeteredSource, Metrics, MetricsHandler
from calo.openapi import OpenApiHandler, document_json
from calo.pages import IndexHandler, StaticFiles
from calo.requestlog import RequestIdTransform, access_logger
from calo.scheduler import Scheduler
from calo.service import JobService
from calo.stats import Activity, StatsReport
from calo.storage import Storage, open_storage
from calo.supervisor import Supervisor
from calo.throttle import UpstreamGate
from calo.unsplash import DemoSource, UnsplashSource
from calo.upkeep import Upkeep

if TYPE_CHECKING:
    from calo.config import Settings
    from calo.storage.base import Event

log = logging.getLogger("calo")

# (URL pattern, handler class[, its initialize() arguments])
Route = tuple[str, type[tornado.web.RequestHandler]] | tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]

WEBSOCKET_PING_SECONDS = 20  # finds dead connections that never said goodbye
SHUTDOWN_GRACE_SECONDS = 10
STORAGE_STOP_SECONDS = 2.0  # the least the writer gets to commit what was sent, at stop


def find_web_root() -> str:
    """The directory holding `static/` and `templates/`: the source tree when run from
    it, else where `setup.py` installed them (`<prefix>/share/calo`)."""
    candidates = (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        os.path.join(sys.prefix, "share", "calo"),
    )
    for root in candidates:
        if os.path.isfile(os.path.join(root, "templates", "index.html")):
            return root
    return candidates[0]


def make_app(
    service: JobService, hub: Hub, access: AccessPolicy, web_root: str, *, health: Health, metrics: Metrics,
    stats: StatsReport, delays: tuple[float, float] = (5.0, 300.0), access_log: bool = False,
    hosts: frozenset[str] | None = None, public_url: str | None = None,
) -> tornado.web.Application:
    """The route table: every URL Calo Jobs answers. `hosts`: the Host names answered
    (calo.access.answered_hosts); None answers any. `public_url`: --public-url."""
    api = {"service": service, "access": access}
    routes: list[Route] = [
        (r"/", IndexHandler, {"delays": delays}),
        (r"/openapi.json", OpenApiHandler, {"document_json": document_json(access)}),
        (r"/jobs", JobsHandler, api),
        (r"/jobs/retry-failed", RetryFailedHandler, api),  # before /jobs/{id}: never a job id
        (r"/jobs/([^/]+)", JobHandler, api),
        (r"/jobs/([^/]+)/retry", RetryHandler, api),
        (r"/jobs/([^/]+)/cancel", CancelHandler, api),
        (r"/jobs/([^/]+)/events", JobEventsHandler, api),
        (r"/stats", StatsHandler, {**api, "report": stats}),
        (r"/ws", EventsSocket, {"service": service, "hub": hub, "access": access}),
        (r"/healthz", HealthzHandler),
        (r"/readyz", ReadyzHandler, {"health": health}),
        (r"/metrics", MetricsHandler, {"metrics": metrics, "health": health}),
    ]
    app = tornado.web.Application(
        routes,
        static_path=os.path.join(web_root, "static"),
        static_handler_class=StaticFiles,
        template_path=os.path.join(web_root, "templates"),
        default_handler_class=NotFoundHandler,
        default_handler_args=api,
        websocket_ping_interval=WEBSOCKET_PING_SECONDS,
        websocket_ping_timeout=WEBSOCKET_PING_SECONDS,
        websocket_max_message_size=MAX_CLIENT_MESSAGE_BYTES,  # refused from the frame header
        log_function=access_logger(access_log),  # logfmt lines with each X-Request-Id
        calo_hosts=hosts,  # read by calo.errors.JsonErrors.check_host, on every route
        calo_public_url=public_url,  # read by calo.api's Link headers
    )
    app.add_transform(RequestIdTransform)
    return app


def asyncio_loop(loop: IOLoop) -> asyncio.AbstractEventLoop:
    """The asyncio event loop a Tornado IOLoop runs on (every IOLoop does, since Tornado 6)."""
    if not isinstance(loop, BaseAsyncIOLoop):
        raise TypeError(f"{loop!r} does not run on asyncio")
    return loop.asyncio_loop


def make_source(settings: Settings, web_root: str, base_url: str | None) -> DemoSource | UnsplashSource:
    """Unsplash with a key, else the demo images, with absolute URLs from --public-url or
    `base_url` (where the server listens)."""
    if settings.unsplash_access_key:
        return UnsplashSource(settings.unsplash_api_url, settings.unsplash_access_key, settings.unsplash_timeout)
    return DemoSource(os.path.join(web_root, "static"), base_url=settings.public_url or base_url or "")


class Calo:
    """The running service: every part, built from settings and wired together."""

    def __init__(
        self, settings: Settings, on_fatal: Callable[[str], None] = lambda reason: None, base_url: str | None = None,
    ):
        """`on_fatal(reason)` is called (on the IOLoop) if the service can no longer work
        (its storage can no longer write); the process should then stop and exit non-zero.
        `base_url`: http://host:port where the server listens (for demo image URLs)."""
        self.settings = settings
        self.on_fatal = on_fatal
        self.web_root = find_web_root()
        self.metrics = Metrics()
        self.source = MeteredSource(make_source(settings, self.web_root, base_url), self.metrics.upstream_requests)
        self.hub = Hub()
        self.activity = Activity()
        self._loop = IOLoop.current()
        self.storage: Storage | None = None

    async def start(self) -> tornado.web.Application:
        """Open the storage and start every part; returns the web application.
        Raises StoreError (one line) if the data dir or database is unusable."""
        settings = self.settings
        storage = open_storage(settings)
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="calo-fetch")
        self.gate = UpstreamGate(settings.workers, int(settings.rate_limit_pause * 1000))
        self.clock_watch = ClockWatch()  # wall-clock steps: the scheduler plans its timer again
        self.clock_watch.start()
        self.scheduler = Scheduler(
            source=self.source, writer=storage, budget=storage, pool=self.pool,
            gate=self.gate, batch=settings.unsplash_batch,
            max_attempts=settings.max_attempts, retry_window_ms=int(settings.retry_window * 1000),
            clock_watch=self.clock_watch,
        )
        try:
            await storage.start(
                asyncio_loop(self._loop), on_events=self._on_events, on_commit=self._on_commit,
                on_death=self._storage_died, on_claimed=self._on_claimed, on_rate_limit=self.gate.pause_until,
            )
        except BaseException:
            self.pool.shutdown(wait=False)
            raise
        self.storage = storage
        self.gate.on_rate_limited = storage.share_rate_limit
        self.exporter = JsonExporter(storage, settings.data_dir)
        self.service = JobService(
            storage=storage, scheduler=self.scheduler,
            delays=(settings.delay_min, settings.delay_max, settings.delay_step),
            max_pending=settings.max_pending,
        )
        self.activity.seed(storage, await storage.latest_seq())  # before this server commits
        pending = await storage.jobs_to_schedule()
        overdue = self.scheduler.start(pending)
        log.info("recovered %d pending jobs, %d of them overdue and run now", len(pending), overdue)
        storage.start_background()
        self.exporter.start()
        self.upkeep = Upkeep(
            storage, settings.event_retention, retain_days=settings.retain_days,
            on_jobs_deleted=self.exporter.mark_changed,
        )
        self.upkeep.start()
        self._start_watching(storage, {"pending_at_start": len(pending), "overdue_at_start": overdue})
        access = AccessPolicy(settings.api_token, settings.private, settings.allowed_origins)
        return make_app(
            self.service, self.hub, access, self.web_root, health=self.health, metrics=self.metrics,
            stats=StatsReport(self.service, self.activity, self.health),
            delays=(settings.delay_min, settings.delay_max), access_log=settings.access_log,
            hosts=answered_hosts(settings.host, settings.allowed_hosts), public_url=settings.public_url,
        )

    def _start_watching(self, storage: Storage, recovery: dict[str, int]) -> None:
        """Health checks, and the metrics that read the parts at scrape time."""
        self.health = Health(
            storage=storage, scheduler=self.scheduler, gate=self.gate,
            demo=self.source.name == "demo", recovery=recovery, stuck_after=self.settings.stuck_after,
            clock_watch=self.clock_watch,
        )
        self.health.start()
        self.metrics.registry.register(LiveCollector(
            scheduler=self.scheduler, source=self.source, gate=self.gate,
            health=self.health, hub=self.hub, upkeep=self.upkeep, exporter=self.exporter, storage=storage,
        ))
        self.loop_lag = LoopLag(self.metrics.loop_lag)
        self.loop_lag.start()
        self.supervisor = Supervisor({"the JSON export thread": self.exporter.alive}, self.on_fatal)
        self.supervisor.start()

    def _storage_died(self, reason: str) -> None:
        """Nothing can be committed any more: say so, and let the process exit (systemd
        restarts it; recovery takes well under a second)."""
        log.critical("%s; every write fails, stopping so that the service restarts", reason)
        self.on_fatal(reason)

    def _on_events(self, events: list[Event]) -> None:
        """IOLoop thread: events committed to the database (by any server), in seq order."""
        self.hub.publish(events)
        self.exporter.mark_changed()
        self.activity.observe(events)  # the dashboard shows every server's activity

    def _on_claimed(self, jobs: list[tuple[int, str]]) -> None:
        """IOLoop thread: pending jobs this server runs from now on (taken over, or
        re-read after a commit's answer was lost); those it holds already are skipped."""
        held = self.scheduler.held_ids()
        for due_at, job_id in jobs:
            if job_id not in held:
                self.scheduler.add(job_id, due_at)

    def _on_commit(self, events: list[Event]) -> None:
        """IOLoop thread, after each of this server's commits: count it."""
        self.metrics.observe_committed(events)

    async def stop(
        self, grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
        answer_requests: Callable[[float], Awaitable[object]] | None = None,
    ) -> bool:
        """Finish in-flight fetches; await `answer_requests(seconds left)` (the server
        answers the requests it has read, while the storage still takes their writes);
        commit what was sent, within the grace period (the storage gets at least
        STORAGE_STOP_SECONDS; a writer still busy then is killed); flush and close. True
        if the storage stopped cleanly. Idempotent."""
        if self.storage is None:
            return True
        deadline = time.monotonic() + grace_seconds
        self.health.shutting_down = True  # /readyz answers 503 from now on
        self.health.stop()
        self.loop_lag.stop()
        self.clock_watch.stop()
        self.upkeep.stop()
        self.supervisor.stop()
        await self.scheduler.stop(grace_seconds)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if answer_requests is not None:  # each ends within --write-timeout, even with a stopped writer
            await answer_requests(max(0.0, deadline - time.monotonic()))
        clean = await self.storage.stop(max(STORAGE_STOP_SECONDS, deadline - time.monotonic()))
        self.hub.close_all()
        self.exporter.stop()
        self.storage = None
        return clean
