"""What every answer of every route has in common: JSON errors, methods, security headers.

Owns the parts of the HTTP contract that are not one route's (README "The API"):
- errors: every non-2xx answer is `{"error": {"code": "...", "message": "..."}}` with
  `Content-Type: application/json`: a handler's `ApiError`, Tornado's own errors (405, 400
  for a malformed request), unexpected exceptions (500), static files and the WebSocket's
  refused upgrades alike;
- security headers on every answer: `nosniff`, no referrer, no framing, no `Server`
  version, and a CSP that lets a JSON answer run nothing (the page sets its own);
- methods: `HEAD` answers every `GET` route like `GET` without a body; `OPTIONS` answers
  204 with `Allow`; any other method a route does not implement is a 405 with `Allow`,
  decided before any access check (so a token never turns it into a 401).

Mix `JsonErrors` into every handler, before the Tornado class:
`class JobsHandler(JsonErrors, tornado.web.RequestHandler)`. (Named for its first duty; it
carries the methods too, since a 405's `Allow` and `OPTIONS` must agree.)

Logging: a request's failure is told by its access line (calo.requestlog), which shows the
path and never the query string. Unexpected exceptions are logged once more with their
traceback, by method and path only: Tornado's own line would print the whole URI, and a
WebSocket URL may carry `?access_token=`.

Threads: IOLoop thread only, like every Tornado handler.
Must never: send HTML, or log a query string, a header value or a body.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

import tornado.web

from calo.requestlog import request_id

log = logging.getLogger("calo.errors")

JSON_TYPE = "application/json; charset=utf-8"
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
    421: "misdirected_request", 426: "upgrade_required", 503: "unavailable",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors' older twin
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
# RFC 9112 §3.2's Host: a reg-name or IPv4 address, or an IPv6 literal in brackets; a port.
HOST_HEADER = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(?::(?P<port>[0-9]{1,5}))?")
MAX_PORT = 65535
# Set on a request's HTTP connection by calo.httpserver: False until its last byte arrived.
ARRIVED = "calo_request_arrived"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")  # in the order Allow lists them


class ApiError(tornado.web.HTTPError):
    """An error answered as JSON with a stable machine-readable `code`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, log_message=message)
        self.code = code
        self.message = message
        self.headers = headers or {}  # set on the error answer (send_error clears others)


def error_json(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def allowed_methods(handler_class: type) -> tuple[str, ...]:
    """The methods a handler class answers: those it implements, HEAD with GET, OPTIONS."""
    def implements(method: str) -> bool:
        if method == "HEAD":
            return implements("GET")
        return getattr(handler_class, method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())

    return (*(method for method in METHODS if implements(method)), "OPTIONS")


class JsonErrors(tornado.web.RequestHandler):
    """Handler mixin, listed before the handler's Tornado base: JSON errors, HEAD, OPTIONS,
    405 with Allow, the Host check, security headers; no URI in logs."""

    calo_error_code: str | None = None  # the error answered, for the access line

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        self.clear_header("Server")  # Tornado's names its version

    def check_request(self) -> None:
        """421 for a Host we do not answer to, 405 for a method this route does not
        answer; call first in `prepare`."""
        self.check_host()
        if self.request.method not in allowed_methods(type(self)):
            raise tornado.web.HTTPError(405)

    def check_host(self) -> None:
        """400 unless the request has one well-formed Host header (HTTP/1.0 may have
        none); 421 unless it names us (application setting `calo_hosts`, from
        calo.access.answered_hosts; None answers any). Tornado itself would take a missing
        or empty Host as 127.0.0.1, a loopback name."""
        given = self.request.headers.get_list("Host")
        match = HOST_HEADER.fullmatch(given[0]) if len(given) == 1 else None
        port = match and match.group("port")
        if len(given) > 1 or (given and (not match or (port and int(port) > MAX_PORT))) or (
                not given and self.request.version != "HTTP/1.0"):
            raise ApiError(400, "bad_host", "a request needs one Host header naming a host "
                           "(and an optional port), as RFC 9112 section 3.2 requires")
        hosts = self.settings.get("calo_hosts")
        if hosts is not None and (not given or self.request.host_name not in hosts):
            raise ApiError(421, "unknown_host", "this server does not answer to that Host name "
                           "(see --allowed-hosts)")

    def prepare(self) -> Awaitable[None] | None:
        self.check_request()
        return None

    def head(self, *args: Any, **kwargs: Any) -> Any:
        """As GET; Tornado drops the body of an answer to HEAD and keeps its length."""
        return self.get(*args, **kwargs)

    def options(self, *args: Any, **kwargs: Any) -> None:
        """204 with Allow (and, on the API, CORS preflight headers from set_default_headers)."""
        self.set_header("Allow", ", ".join(allowed_methods(type(self))))
        self.set_status(204)
        self.finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        handler = self
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            code, message = error.code, error.message
            for name, value in error.headers.items():
                handler.set_header(name, value)
        else:  # Tornado's own errors (405, a bad request line) and unexpected exceptions
            code = ERROR_CODES.get(status_code, "internal_error" if status_code >= 500 else "error")
            message = handler._reason if status_code < 500 else "internal server error"
        if status_code == 405:
            handler.set_header("Allow", ", ".join(allowed_methods(type(self))))
        if getattr(self.request.connection, ARRIVED, True) is False:
            # Refused before its body was read (a check in a streaming handler's prepare):
            # Tornado closes the connection after this answer, so say so, and the client
            # sends its next request on a new one instead of losing it.
            handler.set_header("Connection", "close")
        handler.set_header("Content-Type", JSON_TYPE)
        self.calo_error_code = code  # for the access line (calo.requestlog)
        handler.finish(error_json(code, message))

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None,
    ) -> None:
        """An HTTPError is told by the access line alone; anything else gets a traceback."""
        if value is None or isinstance(value, tornado.web.HTTPError):
            return
        request = self.request
        fields = {"method": request.method, "path": request.path, "request_id": request_id(request)}
        log.error("uncaught exception", extra={"fields": fields}, exc_info=(type(value), value, tb))
