"""A hard deadline on a whole HTTP call made with `requests`, and a way to cut every call short.

Owns the sockets of the calls in flight. `requests` only has a timeout per socket read,
so an upstream that sends a byte every few seconds (headers or body) holds a call, and
its pool thread, for ever. Here each call (`CallGuard.call`) gets a timer; the
connection's socket is registered when the request has been sent (`DeadlineAdapter`
makes `requests` use connections that do that), and when the deadline passes, or the
server stops (`CallGuard.abort_all`), the socket is shut down: the blocked read returns
at once, `requests` raises, and the call says whether it was cut by its deadline or by
the stop. Connecting is bounded by the connect timeout, which the caller keeps short.

Threads: `call` runs on the worker thread making the request; the timer runs on a thread
of its own; `abort_all` from any thread (the IOLoop's, at shutdown). State is under locks.
Must never: close a socket another call is using (only the calling thread's own are
registered), or block: shutting a socket down does not wait.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import requests.adapters
import urllib3.connection
import urllib3.connectionpool

_current = threading.local()  # the call the worker thread is making, for its connection to find


class Call:
    """One call's deadline and sockets. `expired` or `aborted` once it was cut short."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._over = False
        self.expired = False
        self.aborted = False

    def watch(self, sock: socket.socket) -> None:
        """Register the socket this call now reads from (cut at once if the call is over)."""
        with self._lock:
            self._sockets.append(sock)
            cut = self.expired or self.aborted
        if cut:
            _shut_down(sock)

    def cut(self, *, aborted: bool) -> None:
        """Shut this call's sockets down: its deadline passed, or the server is stopping."""
        with self._lock:
            if self._over:
                return
            if aborted:
                self.aborted = True
            else:
                self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut_down(sock)

    def finish(self) -> None:
        """The call returned: its connection may go back to the pool, untouched from now on."""
        with self._lock:
            self._over = True
            self._sockets.clear()


def _shut_down(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown, which would unwrap the TLS object
    # under the reading thread's feet; the kernel wakes the blocked read either way.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class CallGuard:
    """Deadlines for one client's calls, and `abort_all` for its shutdown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[Call] = set()
        self._closed = False

    @contextlib.contextmanager
    def call(self, seconds: float) -> Iterator[Call]:
        """Make the HTTP call inside this block: past `seconds` (or after `abort_all`) its
        socket is shut down and the request raises."""
        call = Call()
        with self._lock:
            self._calls.add(call)
            if self._closed:
                call.aborted = True
        timer = threading.Timer(seconds, call.cut, kwargs={"aborted": False})
        timer.daemon = True
        timer.start()
        _current.call = call
        try:
            yield call
        finally:
            _current.call = None
            call.finish()
            timer.cancel()
            with self._lock:
                self._calls.discard(call)

    def abort_all(self) -> None:
        """Cut every call in flight short, and every later one at once. Any thread."""
        with self._lock:
            self._closed = True
            calls = list(self._calls)
        for call in calls:
            call.cut(aborted=True)


class _WatchedConnection:
    """Registers its socket with the calling thread's call once the request is sent."""

    sock: socket.socket | None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        call = getattr(_current, "call", None)
        if call is not None and self.sock is not None:
            call.watch(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """A `requests` adapter whose connections (direct or through an HTTP proxy) take
    part in `CallGuard` deadlines. Mount it on a Session for http:// and https://."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager
