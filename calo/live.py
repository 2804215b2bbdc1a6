"""The live feed: the `/ws` WebSocket and the hub that fans committed events out to it.

Owns the WebSocket protocol (README "Live updates"):
- the upgrade: refusals are JSON like every error (426 not a WebSocket upgrade, 403 a
  foreign origin, 401 no token under --private, 400 a bad `since`); the token comes as the
  offered subprotocol `calo.bearer.<base64url>` (calo.access), and the server selects
  `calo.v1` when it is offered, never the bearer entry;
- first {"type": "hello", "seq": latest}; then, with `?since=N`, every retained event
  with seq > N in order, then live events, with no gap and no duplicate in between;
- {"type": "reset", "seq": latest} instead of a replay when events after N were pruned;
- an event is {"type": "job.created" | "job.resolved" | ..., "seq": N, "job": {...}};
  several events may come as one JSON array, in seq order.
- from the client: {"type": "ping"} (other fields ignored) is answered {"type": "pong"};
  any other text message is ignored; a binary message closes with 1003, one over
  `MAX_CLIENT_MESSAGE_BYTES` with 1009 (Tornado refuses it from its frame header, before
  reading the payload).

How replay meets live without a gap: a socket registers with the hub BEFORE it reads the
latest seq and the backlog. Until the hello and the backlog are sent it holds the live
events it is given (reads are asynchronous: an event may be published while a read is on
its way, and not be in what the read returns); then, in one IOLoop callback, it sends
the held ones above its cursor and goes live. From then on only events with a seq above
the socket's cursor are sent.

Threads: IOLoop thread only. Committed events reach `Hub.publish` on the IOLoop (the app's
`_on_commit`). Reads of the event log go through the JobService's reader.
Must never: let one slow client slow the others or grow memory without bound (past
`MAX_BUFFERED_BYTES` unsent, the client is cut off and will reconnect and replay).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, NamedTuple

import tornado.httputil
import tornado.iostream
import tornado.websocket
from tornado.ioloop import IOLoop

from calo.access import SUBPROTOCOL, AccessPolicy, bearer_from_subprotocols
from calo.errors import ApiError, JsonErrors
from calo.params import query_argument, whole_number
from calo.storage.base import StoreError

if TYPE_CHECKING:
    from calo.service import JobService
    from calo.storage.base import Event

log = logging.getLogger("calo.live")

COALESCE_SECONDS = 0.02  # events of commits this close together go out as one message
SLICE = 250  # sockets served per IOLoop callback
REPLAY_CHUNK = 500  # events read and sent per step of a replay
MAX_BUFFERED_BYTES = 4 << 20  # per client: sent to Tornado but not yet on the wire
MAX_CLIENT_MESSAGE_BYTES = 4096  # a ping is 15 bytes; the app's websocket_max_message_size
PONG = '{"type":"pong"}'


def encode_event(event: Event) -> str:
    """One event's message text; built once and shared by every client."""
    return f'{{"type":{json.dumps(event.type)},"seq":{event.seq},"job":{event.job_json}}}'


def encode_events(encoded: list[str]) -> str:
    return encoded[0] if len(encoded) == 1 else "[" + ",".join(encoded) + "]"


class _Batch(NamedTuple):
    """Events to fan out, each encoded once, and all of them as one message."""

    events: list[Event]
    encoded: list[str]
    message: str


class Hub:
    """The connected sockets. IOLoop thread only.

    Fan-out is paced so that many clients never hold the IOLoop for long: the events of
    the commits that arrive within COALESCE_SECONDS go out together, as one message per
    socket (encoded once and shared by every socket that needs all of it), and the sockets
    are served SLICE at a time, one IOLoop callback each, so requests get in between. A
    flush starts only after the previous one has reached every socket, which keeps each
    socket's events in seq order."""

    def __init__(self, max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self._sockets: set[EventsSocket] = set()
        self.max_buffered_bytes = max_buffered_bytes  # per client, unsent
        self.events_sent = 0
        self._pending: list[Event] = []
        self._flushing = False

    def __len__(self) -> int:
        return len(self._sockets)

    def add(self, socket: EventsSocket) -> None:
        self._sockets.add(socket)

    def remove(self, socket: EventsSocket) -> None:
        self._sockets.discard(socket)

    def publish(self, events: list[Event]) -> None:
        """Send committed events (in seq order) to every live socket, shortly."""
        self._pending.extend(events)
        if not self._flushing:
            self._flushing = True
            IOLoop.current().call_later(COALESCE_SECONDS, self._flush)

    def _flush(self) -> None:
        events, self._pending = self._pending, []
        encoded = [encode_event(event) for event in events]
        batch = _Batch(events, encoded, encode_events(encoded))
        self._send_slice(batch, list(self._sockets), 0)  # a copy: a send may drop a socket

    def _send_slice(self, batch: _Batch, sockets: list[EventsSocket], start: int) -> None:
        for socket in sockets[start:start + SLICE]:
            self.events_sent += socket.deliver(batch)
        if start + SLICE < len(sockets):
            IOLoop.current().add_callback(self._send_slice, batch, sockets, start + SLICE)
        elif self._pending:
            IOLoop.current().call_later(COALESCE_SECONDS, self._flush)
        else:
            self._flushing = False

    def close_all(self) -> None:
        for socket in list(self._sockets):
            socket.close(1001, "server shutting down")


def client_message_type(message: str) -> str | None:
    """The `type` of a client's JSON object message; None for anything else."""
    try:
        parsed = json.loads(message)
    except (ValueError, RecursionError):  # at most 4 KiB, but 2,000 `[` still nest too deep
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


def offered_subprotocols(request: tornado.httputil.HTTPServerRequest) -> list[str]:
    """Every entry of every Sec-WebSocket-Protocol header, in order."""
    values = request.headers.get_list("Sec-WebSocket-Protocol")
    return [entry.strip() for value in values for entry in value.split(",") if entry.strip()]


class EventsSocket(JsonErrors, tornado.websocket.WebSocketHandler):
    def initialize(self, service: JobService, hub: Hub, access: AccessPolicy) -> None:
        self.service = service
        self.hub = hub
        self.access = access
        self.cursor = 0  # highest seq this client has been sent (or told about)
        self.replaying = True  # until the hello and any backlog are sent: hold live events
        self.held: list[Event] = []
        self.buffered_bytes = 0

    def check_origin(self, origin: str) -> bool:
        """The page's own origin (Tornado's check), or one listed in --allowed-origins."""
        return super().check_origin(origin) or self.access.origin_allowed(origin)

    def prepare(self) -> None:
        """Refuse, as JSON, what Tornado's `get` would refuse as text, then check the
        token and `since`. Tornado repeats its checks after this; they pass by then."""
        self.check_request()
        if self.request.method == "OPTIONS":
            return
        self._check_upgrade()
        if self._check_cross_origin(self.check_origin) is not None:
            raise ApiError(403, "origin_not_allowed", "this origin may not open the WebSocket (see --allowed-origins)")
        if self.access.needs_token("GET") and not self.access.token_ok(
            self.request.headers.get("Authorization"), self._offered_token()
        ):
            raise ApiError(401, "unauthorized", "this needs the API token: offer the subprotocols "
                           f"'{SUBPROTOCOL}, calo.bearer.<token as base64url>'",
                           {"WWW-Authenticate": 'Bearer realm="calo"'})
        since = query_argument(self, "since")
        self.since = whole_number(since, "since") if since is not None else None

    def _check_upgrade(self) -> None:
        headers = self.request.headers
        connection = {part.strip().lower() for part in headers.get("Connection", "").split(",")}
        upgrade = headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in connection
        if self.request.method != "GET" or not upgrade:
            raise ApiError(426, "upgrade_required", "this is a WebSocket: upgrade the connection",
                           {"Upgrade": "websocket"})
        if headers.get("Sec-WebSocket-Version") != "13":
            raise ApiError(426, "upgrade_required", "only WebSocket version 13 is spoken",
                           {"Sec-WebSocket-Version": "13"})
        if self.request.version != "HTTP/1.1":  # an upgrade needs HTTP/1.1 (RFC 6455 4.1)
            raise ApiError(400, "bad_request", "a WebSocket opens over HTTP/1.1")
        if len(headers.get_list("Sec-WebSocket-Key")) != 1 or not headers.get("Sec-WebSocket-Key"):
            raise ApiError(400, "bad_request", "send one Sec-WebSocket-Key header")

    def _offered_token(self) -> str | None:
        """The subprotocol's token, else the (discouraged) `?access_token=`."""
        offered = bearer_from_subprotocols(offered_subprotocols(self.request))
        return offered if offered is not None else self.get_query_argument("access_token", None)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """`calo.v1` when offered: a browser that offered subprotocols needs one chosen.
        Never the bearer entry, which would echo the token."""
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    def on_message(self, message: str | bytes) -> None:
        """A ping is answered; other text is ignored (forward compatible); binary closes."""
        if isinstance(message, bytes):
            self.close(1003, "only JSON text messages are accepted")
        elif client_message_type(message) == "ping":
            self._send(PONG)

    async def open(self) -> None:
        self.hub.add(self)
        try:
            latest = await self.service.latest_seq()
            self.cursor = latest
            self._send(f'{{"type":"hello","seq":{latest}}}')
            if self.since is not None and self.since != latest:
                if await self.service.replay_start(self.since):
                    self.cursor = self.since
                    await self._replay()
                else:
                    self._send(f'{{"type":"reset","seq":{latest}}}')
        except StoreError as exc:
            log.warning("closing a WebSocket client: the event log cannot be read (%s)", exc)
            self.hub.remove(self)
            self.close(1011, "the event log cannot be read; reconnect with since=")
            return
        self._go_live()

    def _go_live(self) -> None:
        """Send the held live events the client has not had, then deliver directly."""
        held, self.held, self.replaying = self.held, [], False
        fresh = [event for event in held if event.seq > self.cursor]
        if fresh:
            self._send(encode_events([encode_event(event) for event in fresh]))
            self.cursor = fresh[-1].seq

    async def _replay(self) -> None:
        """Send every event after the cursor, REPLAY_CHUNK at a time, paced by the client."""
        while self.ws_connection is not None:
            events = await self.service.events_after(self.cursor, REPLAY_CHUNK)
            sent = None
            if events:
                sent = self._send(encode_events([encode_event(e) for e in events]))
                self.cursor = events[-1].seq
            if len(events) < REPLAY_CHUNK or sent is None:
                return
            try:
                await sent  # pace the replay by the client's reading speed
            except (tornado.iostream.StreamClosedError, tornado.websocket.WebSocketClosedError):
                return

    def deliver(self, batch: _Batch) -> int:
        """Send the events this client has not had; returns how many were sent."""
        events = batch.events
        if self.replaying:
            self.held.extend(events)
            return 0
        if not events or events[-1].seq <= self.cursor:
            return 0
        if events[0].seq > self.cursor:  # the usual case: all of it, as already encoded
            text, count = batch.message, len(events)
        else:  # it replayed some of these from the log already
            fresh = [text for event, text in zip(events, batch.encoded, strict=True) if event.seq > self.cursor]
            text, count = encode_events(fresh), len(fresh)
        self.cursor = events[-1].seq
        self._send(text)
        return count

    def _send(self, text: str) -> asyncio.Future[None] | None:
        """Queue a message; cut the client off if it has stopped reading."""
        if self.buffered_bytes + len(text) > self.hub.max_buffered_bytes:
            log.warning("closing a WebSocket client that stopped reading (%d bytes unsent)", self.buffered_bytes)
            self.hub.remove(self)
            self.close(1013, "too far behind: reconnect with since=")
            return None
        try:
            sent = self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            self.hub.remove(self)  # it can die without on_close reaching us first
            return None
        self.buffered_bytes += len(text)
        sent.add_done_callback(lambda future: self._sent(len(text), future))
        return sent

    def _sent(self, size: int, future: asyncio.Future[None]) -> None:
        self.buffered_bytes -= size
        if not future.cancelled():
            future.exception()  # a closed stream is handled by on_close; mark it seen

    def on_close(self) -> None:
        self.hub.remove(self)
