"""Errors as JSON, the one shape of every non-2xx answer, and how handler failures are logged.

Owns the error contract shared by every route (README "Errors"):

    {"error": {"code": "job_not_found", "message": "no job with this id"}}

`ApiError` is raised by handlers for an answer they mean; `JsonErrors` (a handler mixin)
turns it, Tornado's own errors (405, 400 for a malformed request) and unexpected
exceptions (500) into that shape, with `Allow` on every 405.

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
from types import TracebackType
from typing import Any

import tornado.web

from calo.requestlog import request_id

log = logging.getLogger("calo.errors")

JSON_TYPE = "application/json; charset=utf-8"
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 421: "misdirected_request",
    503: "unavailable",
}


class ApiError(tornado.web.HTTPError):
    """An error answered as JSON with a stable machine-readable `code`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, log_message=message)
        self.code = code
        self.message = message
        self.headers = headers or {}  # set on the error answer (send_error clears others)


def error_json(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def allowed_methods(handler: tornado.web.RequestHandler) -> list[str]:
    """The methods `handler`'s class implements, for `Allow` on a 405."""
    methods = [
        method for method in handler.SUPPORTED_METHODS
        if getattr(type(handler), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())
    ]
    return sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()) | {"OPTIONS"})


class JsonErrors(tornado.web.RequestHandler):
    """Handler mixin, listed before the handler's Tornado base: every error answer is
    JSON, and logged without its URI."""

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
            handler.set_header("Allow", ", ".join(allowed_methods(handler)))
        handler.set_header("Content-Type", JSON_TYPE)
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
