"""Following the shared event log: every committed event, in seq order, on every server.

Owns reading the `events` table forward from a cursor and handing what it finds to the
live feed (`on_events`). Seqs are assigned in commit order (calo.storage.postgres_writer),
so reading `seq > cursor` never skips an event that committed late. What wakes a read:
- `LISTEN calo_events` on a connection of its own: every commit that appends events
  sends a NOTIFY. A wake-up only: the payload is not trusted to be complete;
- this server's own commits (`wake`), so its own sockets need not wait for the NOTIFY;
- a poll every `POLL_SECONDS`, the safety net for a lost notification or listener.
After the listener (re)connects it reads at once: whatever committed while nobody
listened is caught up from the cursor.

Threads: IOLoop thread only (two asyncio tasks; psycopg's async connections).
Must never: hand an event on twice or out of order, or stop following after an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

from calo.clock import parse_iso_utc
from calo.jobs import EVENT_FOR_STATUS, RESOLVED
from calo.storage.base import Event
from calo.storage.postgres_writer import one_line

log = logging.getLogger("calo.storage")

CHANNEL = "calo_events"
POLL_SECONDS = 1.0
READ_CHUNK = 1000
RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)  # backoff of the listener, then every 5 s


class LogFollower:
    def __init__(self, url: str, pool: psycopg_pool.AsyncConnectionPool, loop: asyncio.AbstractEventLoop,
                 on_events: Callable[[list[Event]], None], connect_options: dict[str, Any]):
        self._url = url
        self._pool = pool
        self._loop = loop
        self._on_events = on_events
        self._connect_options = connect_options
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.cursor = 0  # the highest seq handed on
        self.listen_error: str | None = "not listening yet"
        self.read_error: str | None = None

    async def start(self, cursor: int) -> None:
        """Follow from `cursor` (events up to it are not handed on)."""
        self.cursor = cursor
        self._tasks = [self._loop.create_task(self._follow(), name="calo-pg-follow"),
                       self._loop.create_task(self._listen(), name="calo-pg-listen")]

    def wake(self) -> None:
        """Read soon: something was committed."""
        self._wake.set()

    async def stop(self) -> None:
        """Hand on what is committed by now, then stop."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self.catch_up()
        except psycopg.Error:
            pass  # nobody is listening any more anyway

    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.catch_up()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                if self.read_error is None:
                    log.error("cannot read the event log: %s; retrying every %g s", one_line(exc), POLL_SECONDS)
                self.read_error = one_line(exc)
            else:
                if self.read_error is not None:
                    log.info("reading the event log again")
                self.read_error = None

    async def catch_up(self) -> None:
        """Hand on every event committed after the cursor, in order."""
        while True:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT seq, type, job_id, job FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                    (self.cursor, READ_CHUNK),
                )
                events = [_event(*row) for row in await cur.fetchall()]
            if events:
                self.cursor = events[-1].seq
                self._on_events(events)
            if len(events) < READ_CHUNK:
                return

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, **self._connect_options)
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if self.listen_error is not None and failures:
                        log.info("listening for new events again; catching up")
                    self.listen_error, failures = None, 0
                    self._wake.set()  # catch up on whatever committed while nobody listened
                    async for _ in conn.notifies():
                        self._wake.set()
                finally:
                    await conn.close()
            except psycopg.Error as exc:
                if self.listen_error is None:
                    log.warning("lost the event listener (%s); polling every %g s meanwhile",
                                one_line(exc), POLL_SECONDS)
                self.listen_error = one_line(exc)
            await asyncio.sleep(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
            failures += 1


def _event(seq: int, kind: str, job_id: str, job_json: str) -> Event:
    """An event as the live feed and the dashboard take it: a resolution carries its
    lateness (resolved_at - due_at), as the writer's own events do."""
    lateness = None
    if kind == EVENT_FOR_STATUS[RESOLVED]:
        doc = json.loads(job_json)
        resolved_at, due_at = parse_iso_utc(doc.get("resolved_at")), parse_iso_utc(doc.get("due_at"))
        if resolved_at is not None and due_at is not None:
            lateness = resolved_at - due_at
    return Event(seq, kind, job_id, job_json, lateness)
