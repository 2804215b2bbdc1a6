"""The access log and request ids: one logfmt line per request, and `X-Request-Id`.

Owns how a request is identified and logged. Every request gets an id: the caller's own
`X-Request-Id` when it is a short plain token (so a reverse proxy's id carries through),
else a new random one. The id goes back as the `X-Request-Id` header on every answer
(errors and WebSocket upgrades included) and onto the request's access line:

    ts=... level=info logger=calo.access msg=request method=GET path=/jobs status=200
    duration_ms=1.8 request_id=4f1c0e9a2b7d6c35 remote=127.0.0.1

Client errors (4xx) are logged at info with their `error` code (e.g. `error=bad_parameter`):
they are the client's to mend. Server errors (5xx) are errors.

Wiring (calo/app.py): `RequestIdTransform` is added to the Application's output transforms
and `log_request` is its `log_function` setting.

Threads: IOLoop thread only (Tornado calls both while it handles a request).
Must never: log a query string, a header value or a body. Only the path is logged: a
WebSocket may carry the API token as `?access_token=`, and secrets never reach the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import tornado.httputil
import tornado.web

from calo.tokens import random_token

log = logging.getLogger("calo.access")

HEADER = "X-Request-Id"
GIVEN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # nothing that could forge a log field
# Probes and scrapes come every few seconds; their successes are logged at debug level
# so that the log stays about the service, not about its monitoring.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def request_id(request: tornado.httputil.HTTPServerRequest) -> str:
    """The request's id: its `X-Request-Id` header when that is a short plain token, else
    a new random one, which replaces the header so that every later call finds it."""
    given = request.headers.get(HEADER, "")
    if not GIVEN_ID.fullmatch(given):
        given = random_token()
        request.headers[HEADER] = given
    return given


class RequestIdTransform(tornado.web.OutputTransform):
    """Adds `X-Request-Id` to every response. Tornado makes one per request and applies
    it when the headers are written, after `send_error` may have cleared the others."""

    def __init__(self, request: tornado.httputil.HTTPServerRequest):
        super().__init__(request)
        self._id = request_id(request)

    def transform_first_chunk(
        self, status_code: int, headers: tornado.httputil.HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, tornado.httputil.HTTPHeaders, bytes]:
        headers[HEADER] = self._id
        return status_code, headers, chunk


def access_logger(log_successes: bool) -> Callable[[tornado.web.RequestHandler], None]:
    """Tornado's `log_function`: one line per finished request. Errors are always
    logged; successes at info level only with `--access-log` (else at debug level:
    the line costs about a sixth of a small request's CPU time)."""
    success_level = logging.INFO if log_successes else logging.DEBUG

    def log_request(handler: tornado.web.RequestHandler) -> None:
        _log_request(handler, success_level)

    return log_request


LOGGED_PATH_CHARS = 200  # a client's 60 KB path makes a line this long at most


def _shortened(path: str) -> str:
    return path if len(path) <= LOGGED_PATH_CHARS else path[:LOGGED_PATH_CHARS] + "…"


def _log_request(handler: tornado.web.RequestHandler, success_level: int) -> None:
    request, status = handler.request, handler.get_status()
    if status >= 500:
        level = logging.ERROR
    elif status >= 400:
        level = logging.INFO  # the client's mistake: the operator has nothing to do
    elif request.path in QUIET_PATHS:
        level = logging.DEBUG
    else:
        level = success_level
    if not log.isEnabledFor(level):
        return
    fields = {
        "method": request.method, "path": _shortened(request.path), "status": status,
        "duration_ms": f"{request.request_time() * 1000:.1f}",
        "request_id": request_id(request), "remote": request.remote_ip,
    }
    code = getattr(handler, "calo_error_code", None)  # set by calo.errors on every error answer
    if code is not None:
        fields["error"] = code
    extra: dict[str, object] = {"fields": fields}
    if status >= 500 or (status >= 400 and success_level < logging.INFO):
        # A kind per status for the log's rate limit (calo.logs.RateLimit). Client errors
        # too, unless the operator asked for every request (--access-log): one client
        # sending garbage must not fill the disk.
        extra["rate_key"] = status
    log.log(level, "request", extra=extra)
