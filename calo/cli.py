"""The entry point of `python server.py` and `calo-server`: parse, build, listen, stop.

Owns the process: settings from flags and environment, logging, the listening socket,
signals, telling systemd when it is ready and stopping (calo.systemd), and exit codes
(0 after a clean stop; 2 for a bad setting; 1 when the data dir or the port cannot be used).
Every failure a user can cause is one clear line on stderr, never a traceback.

Threads: runs the IOLoop on the main thread. Signal handlers only set a flag (an
asyncio.Event); the shutdown itself runs as ordinary IOLoop code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from tornado.netutil import bind_sockets

from calo import __version__
from calo.app import Calo
from calo.config import ConfigError, Settings, help_text, parse_settings
from calo.export import read_export
from calo.httpserver import ConnectionCapError, GuardedHTTPServer, connection_cap
from calo.logs import configure_logging
from calo.storage.base import StoreError
from calo.storage.sqlite_store import Database
from calo.systemd import SystemdLink

# The most of a body Tornado buffers for a route that does not stream it (every route but
# the API, which refuses bodies over 64 KiB with a 413 before reading them): a GET with a
# body costs at most this much memory per connection. Past it, Tornado refuses the request.
MAX_BODY_BYTES = 128 << 10

log = logging.getLogger("calo")


class StartupError(Exception):
    """The server cannot start, or cannot go on; the message is one line for the operator."""


def _bind(settings: Settings) -> list[socket.socket]:
    """The listening sockets, bound before anything starts: the port is known (demo image
    URLs are absolute), and clients that connect meanwhile wait in the backlog."""
    try:
        return bind_sockets(settings.port, settings.host)
    except OSError as exc:
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None


def listening_url(host: str, port: int) -> str:
    """`http://host:port` where clients reach a server listening on `host`; a wildcard
    address (all interfaces) names this machine instead (--public-url overrides both)."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    fatal: list[str] = []

    def fail(reason: str) -> None:
        fatal.append(reason)
        stop_requested.set()

    try:
        max_connections = connection_cap(settings.max_connections, settings.workers)
    except ConnectionCapError as exc:
        raise StartupError(str(exc)) from None
    sockets = _bind(settings)
    port: int = sockets[0].getsockname()[1]
    calo = Calo(settings, on_fatal=fail, base_url=listening_url(settings.host, port))
    if not settings.unsplash_access_key:
        log.warning("no Unsplash access key (CALO_UNSPLASH_ACCESS_KEY): jobs get bundled demo images")
    try:
        app = await calo.start()
    except StoreError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(str(exc)) from None
    systemd = SystemdLink.from_environ(os.environ, calo.health)  # does nothing outside systemd
    server = GuardedHTTPServer(
        app,
        # A client that sends its headers or body too slowly is cut off; others never wait.
        request_timeout=settings.client_timeout,
        max_connections=max_connections,
        max_body_size=MAX_BODY_BYTES,
    )
    try:
        server.add_sockets(sockets)
        log.info(
            "ready url=http://%s:%d storage=%s data_dir=%s images=%s workers=%d max_connections=%d",
            settings.host, port, calo.storage.name if calo.storage else "-", settings.data_dir,
            calo.source.describe(), settings.workers, max_connections,
        )
        systemd.ready()  # the database is open, recovery has run, and the port listens
        await stop_requested.wait()
        log.info("stopping: no new connections, finishing in-flight work")
    finally:
        systemd.stopping()
        # No new connections; each new request on a kept-alive one is answered 503 and its
        # connection closed; the requests already read are answered before the store closes.
        server.stop()
        server.drain()
        if not await calo.stop(settings.shutdown_grace, answer_requests=server.wait_answered):
            fatal.append("the writer process did not stop within the grace period")
        await server.close_all_connections()
    if fatal:
        raise StartupError(f"stopped because {fatal[0]}")  # exit code 1: systemd restarts it
    log.info("stopped")


def import_json(settings: Settings, path: str) -> None:
    """`--import-json FILE`: rebuild an empty or missing database from an export."""
    if settings.database_url:
        raise StartupError("--import-json fills an SQLite data dir only; unset --database-url to use it")
    try:
        job_docs = read_export(path)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    try:
        database = Database(settings.data_dir)
        try:
            count = database.import_jobs(job_docs)
        finally:
            database.close()
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    log.info("imported %d jobs from %s into %s", count, path, database.path)


def print_out(text: str) -> int:
    """Print to stdout and return 0; a reader that stops early (`--help | head -1`) is
    not an error."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would try to flush again at exit and report the broken pipe then.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        return print_out(help_text())
    if "--version" in argv:
        return print_out(f"calo-server {__version__}")
    try:
        settings = parse_settings(argv)
    except ConfigError as exc:
        print(f"calo-server: error: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        if settings.import_json:
            import_json(settings, settings.import_json)
        else:
            asyncio.run(serve(settings))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0
