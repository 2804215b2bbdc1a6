"""The HTTP server: Tornado's, guarded against slow clients, too many connections, running
out of file descriptors, and being stopped in the middle of a burst.

Owns four things about connections, below the web application:
- **Slow clients.** A connection must deliver each whole request, headers and body,
  within `request_timeout` of starting to wait for it; one that sends nothing, a byte at
  a time, stops mid-body or idles between keep-alive requests is cut off. Tornado's
  `idle_connection_timeout` and `body_timeout` do this with a timer and a wrapped future
  per request (a tenth of a small request's CPU time); here one sweep a second looks at
  the connections still waiting.
- **A cap on open connections** (`max_connections`, HTTP and WebSocket alike, counted from
  accept to the socket's close). Past it a new connection gets a canned `503` JSON answer
  and is closed at once, before Tornado builds anything for it. `connection_cap` picks
  the cap at start so that it sits below the process's descriptor limit (RLIMIT_NOFILE).
- **Running out of descriptors anyway** (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` from
  `accept`): Tornado's accept handler would raise from the IOLoop callback, and since the
  listening socket stays readable the loop spins at a full core logging a traceback each
  time. Here accepting pauses (50 ms, doubling to 1 s while it keeps failing) and the
  failure is logged through the log's rate limit (calo.logs).
- **Draining at shutdown** (`drain`, `wait_answered`): once stopping, each request that
  arrives on a kept-alive connection gets a `503 shutting_down` answer and the connection
  is closed after it; requests already being answered are waited for, so that nothing
  read goes unanswered.

Threads: IOLoop thread only, like Tornado's server.
Must never: close a connection whose request has fully arrived (a request being
answered, or a WebSocket), hold a connection after Tornado has closed it, or call
`accept` in a loop that cannot make progress.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import tornado.httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, UnsatisfiableReadError

from calo.clockwatch import Repeating
from calo.config import DEFAULT_CLIENT_TIMEOUT
from calo.errors import ARRIVED, JSON_TYPE, SECURITY_HEADERS, error_json
from calo.requestlog import HEADER as REQUEST_ID_HEADER
from calo.tokens import random_token

log = logging.getLogger("calo.http")

SWEEP_EVERY_MS = 1000
DEFAULT_MAX_CONNECTIONS = 1000
# Descriptors kept for everything but client connections: stdio, the listening sockets,
# epoll and its wake-up pipe, SQLite's files for two readers, the writer's pipes, the
# data-dir lock, the export's temporary file, /proc reads, the pool's upstream sockets.
RESERVED_DESCRIPTORS = 64
RESERVED_PER_WORKER = 2
ACCEPT_PAUSE_FIRST = 0.05  # seconds accepting pauses after the first failure
ACCEPT_PAUSE_MAX = 1.0
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
RETRY_AFTER_SECONDS = 5
IDLE_LINGER_SECONDS = 1.0  # at shutdown, how long an idle keep-alive connection may still send a request


class ConnectionCapError(Exception):
    """The descriptor limit is too low for the connections asked for; one line."""


def connection_cap(requested: int | None, workers: int) -> int:
    """The number of connections to allow: `requested`, or if None as many as fit (at
    most DEFAULT_MAX_CONNECTIONS). Raises the soft RLIMIT_NOFILE towards the hard one
    when that makes room. Raises ConnectionCapError if `requested` does not fit."""
    reserve = RESERVED_DESCRIPTORS + RESERVED_PER_WORKER * workers
    wanted = (requested or DEFAULT_MAX_CONNECTIONS) + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    room = wanted if soft == resource.RLIM_INFINITY else soft - reserve
    if requested is None:
        return max(1, min(DEFAULT_MAX_CONNECTIONS, room))
    if requested > room:
        raise ConnectionCapError(
            f"--max-connections {requested} needs {requested + reserve} file descriptors "
            f"({reserve} kept for the server itself) but the limit is {soft}; raise it "
            f"(LimitNOFILE= in the unit, ulimit -n) or lower --max-connections"
        )
    return requested


def _canned_answer(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole JSON error answer, closing the connection, with the headers every answer
    carries (calo.errors); a 503 says when to try again."""
    body = error_json(code, message).encode()
    headers = {"Content-Type": JSON_TYPE, "Content-Length": str(len(body)), **SECURITY_HEADERS,
               "Cache-Control": "no-store", "Connection": "close"}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode() + body


TOO_MANY_CONNECTIONS = _canned_answer(
    503, "Service Unavailable", "too_many_connections", "the server has as many connections as it serves; try again")
# What Tornado's HTTP/1 parser writes, and nothing else, when it refuses a request itself
# (a malformed request line, header or chunk; a header value with a control character):
TORNADO_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
MALFORMED_REQUEST = _canned_answer(
    400, "Bad Request", "malformed_request", "the request is not well-formed HTTP/1.1 (RFC 9112)")
# Where Tornado gives up without a word (a request line or headers past max_header_size,
# 64 KiB; a chunk-size line past 64 bytes): the stream closes on UnsatisfiableReadError.
REQUEST_TOO_LARGE = _canned_answer(
    431, "Request Header Fields Too Large", "request_too_large",
    "the request line and headers may take 64 KiB at most (and a chunk-size line 64 bytes)")
UNREAD_DRAINED = 1 << 20  # bytes of an oversized request read before closing (so: FIN, not RST)
SHUTTING_DOWN_BODY = error_json("shutting_down", "the server is stopping; try again shortly").encode()


def with_request_id(answer: bytes) -> bytes:
    """A canned answer with an `X-Request-Id` of its own, as every answer has (calo.requestlog)."""
    status_line, _, rest = answer.partition(b"\r\n")
    return status_line + f"\r\n{REQUEST_ID_HEADER}: {random_token()}\r\n".encode() + rest


def _answer_before_closing(sock: socket.socket, answer: bytes) -> None:
    """Send a canned answer on a non-blocking socket that is about to be closed, then read
    what the client already sent (up to UNREAD_DRAINED bytes), so that closing sends a FIN
    rather than a reset that could overtake the answer. Best effort, never raises."""
    try:
        sock.send(answer)
        drained = 0
        while drained < UNREAD_DRAINED and (chunk := sock.recv(65536)):
            drained += len(chunk)
    except OSError:
        pass  # nothing more to read yet (EAGAIN), a full buffer, or a peer already gone


class GuardedHTTPServer(HTTPServer):
    """An HTTPServer with slow clients cut off, a cap on connections, a pause on
    descriptor exhaustion, and a drain for shutdown (see the module docstring)."""

    def initialize(
        self, *args: Any, request_timeout: float = DEFAULT_CLIENT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS, **kwargs: Any,
    ) -> None:
        super().initialize(*args, **kwargs)
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self.open_connections = 0  # accepted and not yet closed, WebSockets included
        self._waiting: dict[Any, float] = {}  # connection -> deadline for its next request
        self.answering: set[Any] = set()  # connections whose request arrived and is being answered
        self.draining = False
        self._accept_pause = 0.0
        # Repeating, not PeriodicCallback: its timer is monotonic, so a backward wall-clock
        # step does not stop the sweep (and slow clients stay cut off) for the step's length.
        self._sweep = Repeating(self._cut_off_slow_clients, min(SWEEP_EVERY_MS, request_timeout * 250) / 1000)
        self._sweep.start()

    # -- accepting ---------------------------------------------------------------------------

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Listen on these sockets with our own accept handler (see `_accept`)."""
        for sock in sockets:
            sock.setblocking(False)
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._watch(sock)

    def _watch(self, sock: socket.socket) -> Callable[[], None]:
        """Accept on `sock` whenever it is readable; returns what stops that (TCPServer.stop
        calls it). During a pause the socket is not watched, and the returned callable
        still stops it for good."""
        loop = IOLoop.current()
        state = {"watched": True, "stopped": False}

        def on_readable(fd: Any, events: int) -> None:
            pause = self._accept(sock)
            if pause and not state["stopped"]:
                loop.remove_handler(sock)
                state["watched"] = False
                loop.call_later(pause, resume)

        def resume() -> None:
            if not state["stopped"]:
                loop.add_handler(sock, on_readable, IOLoop.READ)
                state["watched"] = True

        def stop() -> None:
            state["stopped"] = True
            if state["watched"]:
                loop.remove_handler(sock)

        loop.add_handler(sock, on_readable, IOLoop.READ)
        return stop

    def _accept(self, sock: socket.socket) -> float:
        """Accept what is waiting (at most a backlog's worth per call, like Tornado);
        returns seconds to pause accepting, or 0."""
        for _ in range(128):
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                break
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_DESCRIPTORS:  # about that one connection (EPROTO...)
                    log.warning("accept failed: %s", exc.strerror)
                    continue
                self._accept_pause = min(ACCEPT_PAUSE_MAX, max(ACCEPT_PAUSE_FIRST, 2 * self._accept_pause))
                log.error("cannot accept connections: %s (%d open); pausing accepts for %g s",
                          exc.strerror, self.open_connections, self._accept_pause)
                return self._accept_pause
            self._accept_pause = 0.0
            if self.open_connections >= self._max_connections:
                self._refuse(connection)
            else:
                self._serve(connection, address)
        return 0.0

    def _refuse(self, connection: socket.socket) -> None:
        """Answer 503 and close, without reading the request: it costs one descriptor
        for microseconds. Whatever of the request already arrived is read first, so
        that closing sends a FIN rather than a reset that could overtake the answer."""
        log.warning("connection refused: %d connections open, the most --max-connections allows",
                    self.open_connections)
        connection.setblocking(False)
        _answer_before_closing(connection, with_request_id(TOO_MANY_CONNECTIONS))
        connection.close()

    def _serve(self, connection: socket.socket, address: Any) -> None:
        self.open_connections += 1
        stream = _CountedStream(self, connection, max_buffer_size=self.max_buffer_size,
                                read_chunk_size=self.read_chunk_size)
        self.handle_stream(stream, address)

    def connection_closed(self) -> None:
        """Called by a connection's stream when its socket is closed."""
        self.open_connections -= 1

    # -- requests ------------------------------------------------------------------------------

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        """Tornado calls this when a connection starts waiting for its next request."""
        self.answering.discard(server_conn)
        self._waiting[server_conn] = time.monotonic() + self._request_timeout
        setattr(request_conn, ARRIVED, False)  # read by calo.errors: an answer before then closes
        return _Request(self, server_conn, request_conn, super().start_request(server_conn, request_conn))

    def request_arrived(self, server_conn: object) -> None:
        """The request's last byte arrived: the connection no longer waits for it."""
        self._waiting.pop(server_conn, None)

    def on_close(self, server_conn: object) -> None:
        self._waiting.pop(server_conn, None)
        self.answering.discard(server_conn)
        super().on_close(server_conn)

    def stop(self) -> None:
        self._sweep.stop()
        super().stop()

    def drain(self) -> None:
        """From now on every request gets `503 shutting_down` and its connection closes
        after the answer (call `stop` first, so that no new connection comes)."""
        self.draining = True
        self.conn_params.no_keep_alive = True  # Tornado then closes after each answer

    async def wait_answered(self, timeout: float) -> bool:
        """Wait until no request that arrived is still being answered, at most `timeout`
        seconds; then up to IDLE_LINGER_SECONDS more for idle keep-alive connections, so
        that a client about to send its next request gets a 503 rather than a closed
        connection. True if no request is left unanswered."""
        deadline = time.monotonic() + timeout
        while self.answering and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        linger = min(deadline, time.monotonic() + IDLE_LINGER_SECONDS)
        while self._connections and time.monotonic() < linger:
            await asyncio.sleep(0.01)
        return not self.answering

    def _cut_off_slow_clients(self) -> None:
        now = time.monotonic()
        late = [conn for conn, deadline in self._waiting.items() if deadline <= now]
        for conn in late:
            del self._waiting[conn]
            conn.stream.close()  # Tornado then ends the connection and calls on_close


class _CountedStream(IOStream):
    """An IOStream that tells the server when its socket is closed, however that happens
    (an answer with `Connection: close`, a WebSocket's end, an error, a cut-off), and
    answers Tornado's own refusals of malformed requests in JSON like every other error."""

    def __init__(self, server: GuardedHTTPServer, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._server = server

    def write(self, data: bytes | memoryview, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        if data == TORNADO_BARE_400:
            data = with_request_id(MALFORMED_REQUEST)  # Tornado closes the connection right after
        return super().write(data, *args, **kwargs)

    def close(self, exc_info: Any = False) -> None:
        if isinstance(exc_info, UnsatisfiableReadError) and not self.closed():
            self._answer_too_large()
        super().close(exc_info)

    def _answer_too_large(self) -> None:
        """431, straight to the socket: the stream is closing."""
        _answer_before_closing(self.socket, with_request_id(REQUEST_TOO_LARGE))

    def close_fd(self) -> None:
        super().close_fd()
        self._server.connection_closed()


def _origin_form(
    start_line: tornado.httputil.RequestStartLine, headers: tornado.httputil.HTTPHeaders,
) -> tornado.httputil.RequestStartLine:
    """A request target in absolute form (`GET http://host/jobs HTTP/1.1`, which RFC 9112
    3.2.2 says a server must accept) as origin form, its authority taking the place of the
    `Host` header (the RFC's rule), so routing and the Host check see what they expect."""
    target = start_line.path
    if not target.lower().startswith(("http://", "https://")):
        return start_line
    try:
        parts = urlsplit(target)
    except ValueError:
        return start_line  # left as it is: no route matches it, a JSON 404
    if "Host" in headers:
        del headers["Host"]
    headers["Host"] = parts.netloc
    path = parts.path or "/"
    return start_line._replace(path=f"{path}?{parts.query}" if parts.query else path)


class _Request(tornado.httputil.HTTPMessageDelegate):
    """One request on a connection. Passes everything on to Tornado's delegate (the
    application's), unless the server drains by the time the headers arrive: then it
    reads the request and answers `503 shutting_down` itself. Its headers make the
    connection count as being answered (until its next request starts); its last byte
    ends the slow-client wait."""

    def __init__(self, server: GuardedHTTPServer, server_conn: object,
                 request_conn: tornado.httputil.HTTPConnection, delegate: tornado.httputil.HTTPMessageDelegate):
        self._server = server
        self._conn = server_conn
        self._request_conn = request_conn
        self._delegate: tornado.httputil.HTTPMessageDelegate | None = delegate

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self._server.answering.add(self._conn)  # from here on, shutdown waits for its answer
        if isinstance(start_line, tornado.httputil.RequestStartLine):
            start_line = _origin_form(start_line, headers)
        delegate = self._delegate
        if delegate is None or self._server.draining:
            self._delegate = None  # the application never sees it
            return None
        return delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self._delegate is None else self._delegate.data_received(chunk)

    def finish(self) -> None:
        setattr(self._request_conn, ARRIVED, True)
        self._server.request_arrived(self._conn)
        if self._delegate is None:
            self._answer_shutting_down()
        else:
            self._delegate.finish()

    def on_connection_close(self) -> None:
        if self._delegate is not None:
            self._delegate.on_connection_close()

    def _answer_shutting_down(self) -> None:
        headers = tornado.httputil.HTTPHeaders({
            "Content-Type": JSON_TYPE, "Content-Length": str(len(SHUTTING_DOWN_BODY)), **SECURITY_HEADERS,
            "Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store", REQUEST_ID_HEADER: random_token(),
        })
        start_line = tornado.httputil.ResponseStartLine("HTTP/1.1", 503, "Service Unavailable")
        self._request_conn.write_headers(start_line, headers, SHUTTING_DOWN_BODY)
        self._request_conn.finish()
