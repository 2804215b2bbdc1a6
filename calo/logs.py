"""Logging: one line per event on stderr, as key=value pairs (logfmt) with a timestamp.

Owns the log format, and the one mechanism that keeps a repeating line from flooding
the log: `RateLimit`, installed on the handler by `configure_logging`, lets through at
most `BURST` warnings or errors of one kind (same logger, same message template, same
`rate_key`) per `INTERVAL_SECONDS`; the first line of that kind let through after a
quiet spell carries `suppressed=N`, the count of those dropped meanwhile. Info and debug
lines are never dropped, except those that carry a `rate_key`: client errors (4xx) in
the access log when `--access-log` is off (calo.requestlog); with it, every request is
logged.

Threads: any (logging's handler lock serialises `filter`).
Must never: log a secret (the Unsplash key is never passed to a logger: `Settings` hides
it from its repr, and the client never puts it in a message).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Hashable

from calo.clock import iso_utc

BURST = 5  # lines of one kind per interval, before the rest are counted instead
INTERVAL_SECONDS = 10.0
MAX_KINDS = 1000  # kinds remembered at most; the oldest window is forgotten first


def _quote(value: str) -> str:
    """Bare when plain; else a JSON string, so that no value (a path from a client, a
    message) can forge a field, break the line or send control characters to a terminal."""
    if value and value.isprintable() and not any(c in value for c in ' "='):
        return value
    return json.dumps(value)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"ts={iso_utc(int(record.created * 1000))} level={record.levelname.lower()} "
            f"logger={record.name} msg={_quote(record.getMessage())}"
        )
        # Structured fields: log.info("request", extra={"fields": {"status": 200}})
        for key, value in getattr(record, "fields", {}).items():
            line += f" {key}={_quote(str(value))}"
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            line += f" suppressed={suppressed}"
        if record.exc_info:
            line += f" exc={_quote(self.formatException(record.exc_info))}"
        return line


class HideRequestBytes(logging.Filter):
    """Tornado logs a malformed request with its parse error, and the error can quote the
    request's own bytes (`Invalid header value 'Bearer <token>\\x01'`, a query string):
    keep who sent it, drop what it sent."""

    MALFORMED = "Malformed HTTP message from %s: %s"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "tornado.general" and record.msg == self.MALFORMED and isinstance(record.args, tuple):
            record.msg, record.args = "malformed HTTP request from %s", record.args[:1]
        return True


class RateLimit(logging.Filter):
    """At most `burst` warnings or errors of one kind per `interval` seconds, and lines of
    lower levels that carry a `rate_key` (client errors in the access log). A kind is
    (logger, level, message template, the record's `rate_key` if given): a line logged
    as `log.error("accept failed: %s", exc)` is one kind whatever `exc` is; callers whose
    lines share a template but differ in meaning pass `extra={"rate_key": ...}`."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._windows: dict[Hashable, list[float]] = {}  # kind -> [window start, lines let through, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and getattr(record, "rate_key", None) is None:
            return True
        kind = (record.name, record.levelno, str(record.msg), getattr(record, "rate_key", None))
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self._interval:
            dropped = window[2] if window else 0
            self._forget_old(now)
            self._windows[kind] = [now, 1, 0]
            record.suppressed = dropped
            return True
        if window[1] < self._burst:
            window[1] += 1
            return True
        window[2] += 1
        return False

    def _forget_old(self, now: float) -> None:
        if len(self._windows) < MAX_KINDS:
            return
        for kind in [kind for kind, window in self._windows.items() if now - window[0] >= self._interval]:
            del self._windows[kind]
        while len(self._windows) >= MAX_KINDS:  # all recent: drop the oldest
            del self._windows[next(iter(self._windows))]


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(HideRequestBytes())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
