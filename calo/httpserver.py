"""The HTTP server: Tornado's, with clients that are too slow to send a request cut off.

Owns how long a connection may take to deliver its next whole request, headers and body:
a client that opens a connection and sends nothing, sends a byte at a time, stops in the
middle of its body, or keeps an idle keep-alive connection, is disconnected. Tornado's
own `idle_connection_timeout` and `body_timeout` do this with a timer and a wrapped
future for every request (even one with an empty body), about a tenth of a small
request's CPU time; here one sweep per second looks at the connections still waiting.

Threads: IOLoop thread only, like Tornado's server.
Must never: close a connection whose request has fully arrived (a request being
answered, or a WebSocket), or hold a connection after Tornado has closed it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import tornado.httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback

SWEEP_EVERY_MS = 1000
DEFAULT_REQUEST_TIMEOUT = 30.0  # seconds; `--client-timeout` sets it (calo/config.py)


class SlowClientsCutOffServer(HTTPServer):
    """An HTTPServer whose connections must deliver each whole request within
    `request_timeout` seconds of starting to wait for it (give or take one sweep)."""

    def initialize(self, *args: Any, request_timeout: float = DEFAULT_REQUEST_TIMEOUT, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._request_timeout = request_timeout
        self._waiting: dict[Any, float] = {}  # connection -> deadline for its next headers
        self._sweep = PeriodicCallback(self._cut_off_slow_clients, min(SWEEP_EVERY_MS, request_timeout * 250))
        self._sweep.start()

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        """Tornado calls this when a connection starts waiting for its next request."""
        self._waiting[server_conn] = time.monotonic() + self._request_timeout
        return _RequestArrives(super().start_request(server_conn, request_conn), self._waiting, server_conn)

    def on_close(self, server_conn: object) -> None:
        self._waiting.pop(server_conn, None)
        super().on_close(server_conn)

    def stop(self) -> None:
        self._sweep.stop()
        super().stop()

    def _cut_off_slow_clients(self) -> None:
        now = time.monotonic()
        late = [conn for conn, deadline in self._waiting.items() if deadline <= now]
        for conn in late:
            del self._waiting[conn]
            conn.stream.close()  # Tornado then ends the connection and calls on_close


class _RequestArrives(tornado.httputil.HTTPMessageDelegate):
    """Passes everything on to Tornado's delegate; the request's last byte ends the wait."""

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, waiting: dict[Any, float], conn: object):
        self._delegate = delegate
        self._waiting = waiting
        self._conn = conn

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._waiting.pop(self._conn, None)
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()
