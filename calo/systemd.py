"""Talking to systemd: the sd_notify protocol, for a `Type=notify` unit with a watchdog.

Owns the datagrams Calo Jobs sends its service manager (deploy/calo.service):
- `READY=1` once, after the database is open, recovery has run and the port listens;
- `WATCHDOG=1` every half `WATCHDOG_USEC`, from a monotonic IOLoop timer: a wedged
  IOLoop sends none, and systemd restarts the process. None is sent either while the
  health check finds the scheduler stuck (`Health.scheduler_ok`), for the same reason;
- `STATUS=pending=.. resolved=.. failed=.. cancelled=.. upstream=..` (shown by `systemctl status`),
  sent again when it changed, checked every 5 s and with each watchdog ping;
- `STOPPING=1` when shutdown begins.
The protocol: one AF_UNIX datagram per message to the socket named by `NOTIFY_SOCKET`, a
path or, with a leading `@`, an abstract name; assignments separated by newlines.
Without `NOTIFY_SOCKET` (a shell, the tests) nothing is sent.

Threads: IOLoop thread only. A send is one non-blocking `sendto` on a local socket.
Must never: block, fail the server because systemd is gone, or need more than `socket`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Protocol

from calo.clockwatch import Repeating

log = logging.getLogger("calo.systemd")

STATUS_EVERY_SECONDS = 5.0


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """The socket address in `NOTIFY_SOCKET`, or None when there is none we can use."""
    name = environ.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return b"\0" + name[1:].encode()  # Linux abstract namespace
    if name.startswith("/"):
        return name
    if name:  # e.g. "vsock:...", which only a VM guest talks to
        log.warning("NOTIFY_SOCKET=%s is not a unix socket: not notifying systemd", name)
    return None


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when systemd
    expects none from this process (no watchdog, or `WATCHDOG_PID` names another)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 2e6


class Notifier:
    """Sends sd_notify messages; does nothing when `address` is None."""

    def __init__(self, address: str | bytes | None):
        self._address = address
        self._socket: socket.socket | None = None
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *assignments: str) -> bool:
        """Send one message of `NAME=value` lines; False if it could not be sent."""
        if self._socket is None or self._address is None:
            return False
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:  # systemd gone or its queue full: say so once, keep serving
            if not self._failed:
                log.warning("cannot notify systemd: %s", exc.strerror or exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class HealthSource(Protocol):
    """What systemd's messages report (calo.health.Health)."""

    def scheduler_ok(self) -> bool: ...

    def status_line(self) -> str: ...


class SystemdLink:
    """The server's side of the conversation: ready, alive, status, stopping."""

    def __init__(self, notifier: Notifier, health: HealthSource, watchdog: float | None):
        self._notifier = notifier
        self._health = health
        self._watchdog = watchdog
        self._last_status = ""
        self._tickers = [Repeating(self._send_status, STATUS_EVERY_SECONDS)]
        if watchdog is not None:
            self._tickers.append(Repeating(self._ping, watchdog))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], health: HealthSource) -> SystemdLink:
        return cls(Notifier(notify_address(environ)), health, watchdog_seconds(environ, os.getpid()))

    def ready(self) -> None:
        """The server is serving: tell systemd, and start the watchdog and status pings."""
        if not self._notifier.enabled:
            return
        self._last_status = self._health.status_line()
        alive = ["WATCHDOG=1"] if self._watchdog is not None else []  # start-up may have been slow
        self._notifier.send("READY=1", f"STATUS={self._last_status}", *alive)
        for ticker in self._tickers:
            ticker.start()
        watchdog = f"every {self._watchdog:g} s" if self._watchdog else "off"
        log.info("told systemd we are ready (watchdog %s)", watchdog)

    def stopping(self) -> None:
        """Shutdown has begun: no more pings, and systemd knows the stop is deliberate."""
        for ticker in self._tickers:
            ticker.stop()
        self._notifier.send("STOPPING=1", "STATUS=stopping")
        self._notifier.close()

    def _status_changes(self) -> list[str]:
        status = self._health.status_line()
        if status == self._last_status:
            return []
        self._last_status = status
        return [f"STATUS={status}"]

    def _send_status(self) -> None:
        changed = self._status_changes()
        if changed:
            self._notifier.send(*changed)

    def _ping(self) -> None:
        """Every half WATCHDOG_USEC (the status rides along when it changed). A stuck
        scheduler gets no ping: systemd restarts the process, which reschedules every
        pending job from the database."""
        message = self._status_changes()
        if self._health.scheduler_ok():
            message.append("WATCHDOG=1")
        if message:
            self._notifier.send(*message)
