"""Logging: one line per event on stderr, as key=value pairs (logfmt) with a timestamp.

Owns the log format. Must never: log a secret (the Unsplash key is never passed to a
logger: `Settings` hides it from its repr, and the client never puts it in a message).
"""

from __future__ import annotations

import json
import logging
import sys

from calo.clock import iso_utc


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


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(HideRequestBytes())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
