"""Health: is the process alive, and is it ready to do its job? `/healthz` and `/readyz`.

Owns the checks and their two endpoints (JSON, `Cache-Control: no-store`):
- GET /healthz -> 200 {"status": "alive"} whenever the IOLoop answers. Liveness only: if
  this times out, the process is wedged and should be restarted.
- GET /readyz -> 200 when every required check passes, else 503, with
  {"ready": bool, "checks": {"database": {"ok", ...}, "recovery": {"ok", ...},
   "scheduler": {"ok", "next_due_at", "oldest_overdue", ...}, "upstream": {"state", ...}}}.
  Required: the database takes a real write (SQLite: the one row of `write_checks`
  rewritten through the writer process, within `WRITE_CHECK_SECONDS`: a full disk, a
  removed database or a stopped writer shows here), start-up recovery has run, the scheduler keeps up, and
  the server is not shutting down.

The scheduler is stuck when the pending job due first has waited more than `stuck_after`
seconds during which it could have run: since it was due, the server was up, the wall
clock did not step and the upstream was healthy. That wait is measured on the monotonic
clock, so a step of the wall clock never makes the server stuck at once. Then the server
is not ready, and systemd gets no WATCHDOG=1 (see calo.systemd), so it restarts the
process, which reschedules every pending job from the database. The upstream's state
(ok, demo, failing since T, rate_limited until T, rejected since T: the key was refused)
is shown but never makes the server unready: jobs wait for Unsplash by design, and a
restart cannot mend it.

Threads: IOLoop thread only. The database check awaits the writer with a timeout; the
other checks read in-memory state and a snapshot of the job counts and of the pending job
due first, which `refresh` (awaited by /readyz and /metrics, and run every second for
systemd's synchronous STATUS and watchdog) reads from the storage.
Must never: block the IOLoop or show a secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import tornado.web

from calo.clock import iso_utc
from calo.clockwatch import Repeating
from calo.errors import JSON_TYPE, JsonErrors
from calo.jobs import STATUSES
from calo.storage.base import StoreError

if TYPE_CHECKING:
    from calo.clockwatch import ClockWatch
    from calo.scheduler import Scheduler
    from calo.storage.base import Storage
    from calo.throttle import UpstreamGate

log = logging.getLogger("calo.health")

WRITE_CHECK_SECONDS = 2.0
REQUIRED = ("database", "recovery", "scheduler")
REFRESH_EVERY_SECONDS = 1.0


class Health:
    def __init__(
        self,
        *,
        storage: Storage,
        scheduler: Scheduler,
        gate: UpstreamGate,
        demo: bool,
        recovery: dict[str, int],
        stuck_after: float,
        clock_watch: ClockWatch,
    ):
        self._storage = storage
        self.counts: dict[str, int] = {}  # jobs by status, as of the last refresh
        self._oldest_pending: tuple[str, int] | None = None
        self._refresher = Repeating(self._refresh_quietly, REFRESH_EVERY_SECONDS)
        self._scheduler = scheduler
        self._gate = gate
        self._demo = demo
        self._recovery = recovery
        self._stuck_after_ms = int(stuck_after * 1000)
        self._clock_watch = clock_watch
        self._clock = clock_watch.clock
        self._started_at = self._clock.monotonic()
        self._stuck = False
        self.shutting_down = False

    def start(self) -> None:
        self._refresher.start()

    def stop(self) -> None:
        self._refresher.stop()

    async def refresh(self) -> None:
        """Read the job counts and the pending job due first. Raises StoreError."""
        self.counts = await self._storage.count_by_status()
        self._oldest_pending = await self._storage.oldest_pending()

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except StoreError:
            pass  # the database check says so; the snapshot stays as it was

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the /readyz body)."""
        await self._refresh_quietly()
        checks = {
            "database": await self.database(),
            "recovery": {"ok": True, **self._recovery},
            "scheduler": self.scheduler(),
            "upstream": self.upstream(),
        }
        ready = not self.shutting_down and all(checks[name]["ok"] for name in REQUIRED)
        return ready, {"ready": ready, "shutting_down": self.shutting_down, "checks": checks}

    async def database(self) -> dict[str, Any]:
        """Does an (empty) write transaction commit in time?"""
        started = time.monotonic()
        # shield: on a timeout the ping stays queued; the writer ends it within --write-timeout.
        ping = asyncio.shield(self._storage.ping())
        facts = self._storage.describe()
        try:
            await asyncio.wait_for(ping, WRITE_CHECK_SECONDS)
        except TimeoutError:
            return {"ok": False, "error": f"no write committed within {WRITE_CHECK_SECONDS:g} s", **facts}
        except StoreError as exc:
            return {"ok": False, "error": str(exc), **facts}
        return {"ok": True, "write_ms": round((time.monotonic() - started) * 1000, 1), **facts}

    def scheduler(self) -> dict[str, Any]:
        """Is the pending job due first being served? Logs when the answer changes."""
        self._clock_watch.check()  # a step not yet noticed must not count as waiting
        now = self._clock.wall()
        check: dict[str, Any] = {
            "ok": True, "next_due_at": iso_utc(self._scheduler.next_due_at()),
            "oldest_overdue": None, **self._scheduler.stats(),
        }
        oldest = self._oldest_pending
        if oldest is not None and oldest[1] <= now:
            job_id, due_at = oldest
            runnable_since = self._runnable_since(due_at)
            waited = 0 if runnable_since is None else self._clock.monotonic() - runnable_since
            # Counts and times, never an id: /readyz needs no token, even with --private.
            check["oldest_overdue"] = {"due_at": iso_utc(due_at), "overdue_seconds": (now - due_at) / 1000}
            check["ok"] = waited <= self._stuck_after_ms
            self._note(check, job_id)
        else:
            self._note(check, None)
        return check

    def scheduler_ok(self) -> bool:
        ok: bool = self.scheduler()["ok"]
        return ok

    def _runnable_since(self, due_at: int) -> int | None:
        """Since when (monotonic ms) a job due at `due_at` (wall clock) could have run:
        not before it was due, the server started, the wall clock last stepped or the
        upstream last recovered; None while the upstream is failing, rate limited or
        refusing the key (then waiting is expected)."""
        since = [self._clock.monotonic_at(due_at), self._started_at, self._clock_watch.last_step_at or 0]
        if not self._demo:
            state = self._gate.state(self._clock.monotonic())
            if state["state"] != "ok":
                return None
            since.append(state.get("since") or 0)
        return max(since)

    def _note(self, check: dict[str, Any], job_id: str | None) -> None:
        """Log when the scheduler turns stuck (naming the job, for the operator) or recovers."""
        stuck = not check["ok"]
        if stuck and not self._stuck:
            log.error("scheduler stuck: job %s due at %s is still pending with the upstream healthy; not ready",
                      job_id, check["oldest_overdue"]["due_at"])
        elif self._stuck and not stuck:
            log.info("scheduler caught up: ready again")
        self._stuck = stuck

    def upstream(self) -> dict[str, Any]:
        """ok, demo, failing (since), rate_limited (until) or rejected (since, reason: the
        key was refused); plus the request budget. Times as ISO 8601 UTC wall-clock times."""
        if self._demo:
            return {"state": "demo"}
        state: dict[str, Any] = dict(self._gate.state(self._clock.monotonic()))
        for key in ("since", "until"):
            if state.get(key):
                state[key] = iso_utc(self._clock.wall_at(state[key]))
            else:
                state.pop(key, None)
        state.update(rate_limit=self._gate.rate_limit, rate_limit_remaining=self._gate.rate_remaining)
        return state

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        counts = self.counts
        jobs = " ".join(f"{status}={counts.get(status, 0)}" for status in STATUSES)
        return f"{jobs} upstream={self.upstream()['state']}"


class OpsHandler(JsonErrors, tornado.web.RequestHandler):
    """Base of the operator endpoints: JSON answers, errors in the API's shape, never cached."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    def write_json(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps(body, separators=(",", ":")))


class HealthzHandler(OpsHandler):
    def get(self) -> None:
        self.write_json({"status": "alive"})


class ReadyzHandler(OpsHandler):
    def initialize(self, health: Health) -> None:
        self.health = health

    async def get(self) -> None:
        ready, body = await self.health.readiness()
        self.write_json(body, 200 if ready else 503)
