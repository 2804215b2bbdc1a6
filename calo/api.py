"""The REST API handlers: `/jobs` and `/jobs/{id}`, and JSON errors for everything else.

Owns HTTP: parsing and checking parameters, status codes, headers and JSON bodies. Every
handler is thin: it checks the request, calls the `JobService`, and writes the answer.

Contract (keep it exactly; README "API" shows it with curl):
- POST /jobs, body empty or a JSON object, optional `Idempotency-Key` (1-200 visible
  ASCII characters) -> 201 + `Location: /jobs/{id}` + the job; 200 + the same job when
  the key was used before. The job is durably committed before the answer is sent.
- GET /jobs?status=pending|resolved|failed&limit=1..1000&cursor=OPAQUE -> 200, a JSON
  array of jobs, newest first; `Link: <url>; rel="next"` when there is more.
- GET /jobs/{id} -> 200 the job, or 404.
- POST /jobs/{id}/retry -> 200 the job, pending again and due now; 409 unless it failed.
- POST /jobs/retry-failed -> 200 {"retried": n}: every failed job pending again, due now.
- POST /jobs/{id}/cancel -> 200 the job, cancelled; 409 `job_not_pending` unless it is
  pending, 409 `job_resolving` if its photo is already being recorded.
- GET /jobs/{id}/events?after=SEQ -> 200, a JSON array of the job's retained events,
  oldest first, at most 1000 (`Link: rel="next"` when there are more); 404 if no such job.
- GET /stats -> 200 the dashboard's numbers (calo/stats.py: counts, per-minute activity,
  the upstream's state).
- Any error -> {"error": {"code": "...", "message": "..."}} with 400, 401, 404, 405, 409,
  413, 503 (with Retry-After). `/openapi.json` describes all of it.

Threads: IOLoop thread only, like every Tornado handler.
Must never: import sqlite3, touch the store or the scheduler directly, or send HTML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import tornado.web

from calo.errors import JSON_TYPE, ApiError, JsonErrors
from calo.jobs import STATUSES
from calo.params import ASCII_DIGITS, decode_cursor, encode_cursor, query_argument, whole_number
from calo.service import (
    CommitUnknown,
    JobService,
    NotCancellable,
    NotRetryable,
    Overloaded,
    Resolving,
    StoreError,
    WriterBusy,
    WrongStatus,
)

if TYPE_CHECKING:
    from calo.access import AccessPolicy
    from calo.stats import StatsReport

MAX_BODY_BYTES = 64 * 1024
OVERLOAD_RETRY_AFTER_SECONDS = 5
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


@tornado.web.stream_request_body  # so an oversized body is refused before it is read
class ApiHandler(JsonErrors, tornado.web.RequestHandler):
    """Base for every JSON endpoint: access rules, body limit, errors as JSON."""

    def initialize(self, service: JobService, access: AccessPolicy) -> None:
        self.service = service
        self.access = access
        self._body = bytearray()
        self._body_size = 0
        self.set_default_headers()  # Tornado's first call came before `access` was set

    def set_default_headers(self) -> None:
        """Security and CORS headers, on every answer including errors (`send_error`
        clears headers and calls this again). Answers change by the second and may be
        private: never stored by a cache."""
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")
        if not getattr(self, "access", None) or not self.access.allowed_origins:
            return  # no CORS at all (and Tornado's first call comes before initialize)
        origin = self.request.headers.get("Origin")
        for name, value in self.access.cors_headers(origin, self.request.method == "OPTIONS").items():
            self.set_header(name, value)
        self.add_header("Vary", "Origin")

    def prepare(self) -> None:
        self.check_request()  # before the token: DELETE /jobs is a 405, not a 401
        declared = self._declared_length()
        if declared > MAX_BODY_BYTES:  # refused before a byte of it is read, whatever the method
            raise ApiError(413, "body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        if self.request.method == "POST":
            self._check_post(declared)
        if self.access.needs_token(self.request.method) and not self.access.token_ok(
            self.request.headers.get("Authorization")
        ):
            raise ApiError(401, "unauthorized", "this needs 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": 'Bearer realm="calo"'})

    def _check_post(self, declared: int) -> None:
        """A POST from a page on another origin is refused (a plain HTML form can send
        one), and so is a body the API does not read: a body must be JSON (415); an empty
        one may come with any Content-Type (HTTP clients add a form type by default)."""
        if self._check_cross_origin(self.access.origin_allowed) is not None:
            raise ApiError(403, "cross_origin_refused", "a page from another origin may not change jobs "
                           "(see --allowed-origins)")
        content_type = self.request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        has_body = declared > 0 or "Transfer-Encoding" in self.request.headers
        if has_body and content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "a body must be JSON, sent as Content-Type: application/json")

    def _declared_length(self) -> int:
        """The body's Content-Length (0 when chunked or absent). The handler sees the
        headers before Tornado reads the body and checks its framing, so this checks the
        framing first, as Tornado would (RFC 9112 section 6): one Content-Length of ASCII
        digits, or `Transfer-Encoding: chunked`, not both."""
        lengths = self.request.headers.get_list("Content-Length")
        encodings = self.request.headers.get_list("Transfer-Encoding")
        chunked = [value.strip().lower() for value in encodings] == ["chunked"]
        if len(lengths) > 1 or (lengths and not ASCII_DIGITS.fullmatch(lengths[0])) or (
                encodings and (lengths or not chunked)):
            raise ApiError(400, "malformed_request", "the request's Content-Length or Transfer-Encoding is "
                           "malformed (RFC 9112 section 6)")
        return int(lengths[0]) if lengths else 0

    def check_no_fields(self) -> None:
        """The body is empty or `{}`: these POSTs take no fields, and say so rather than
        ignore one a client thinks it is setting."""
        body = self.body().strip()
        if not body:
            return
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: 50,000 `[` fit in 64 KiB
            raise ApiError(400, "bad_json", "the body is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object, like {}")
        if parsed:
            names = ", ".join(sorted(json.dumps(name) for name in parsed))
            raise ApiError(400, "unknown_field", f"this takes no fields; got {names}"[:300])

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # An id that is not UTF-8 names no job: that is a 404, not Tornado's 400.
        return value.decode("utf-8", errors="replace")

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size <= MAX_BODY_BYTES:  # past the limit, count but keep nothing
            self._body += chunk

    def body(self) -> bytes:
        if self._body_size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        return bytes(self._body)

    def link_next(self, query: dict[str, str]) -> None:
        """`Link: <this path?query>; rel="next"`, absolute from --public-url when set, else
        from the request's Host when the server checks it (--allowed-hosts, or bound to
        loopback), else a path: a Host nobody vetted never makes a URL."""
        public_url = self.settings.get("calo_public_url")
        if public_url:
            base = public_url
        elif self.settings.get("calo_hosts") is not None:
            base = f"{self.request.protocol}://{self.request.host}"
        else:
            base = ""
        self.set_header("Link", f'<{base}{self.request.path}?{urlencode(query)}>; rel="next"')

    def write_json(self, text: str, status: int = 200) -> None:
        """Send an already-encoded JSON document (lists included: `write()` refuses them)."""
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(text)


def storage_unavailable(exc: StoreError, failed: str = "the job could not be stored") -> ApiError:
    """A write that failed, as a 503 with Retry-After whose code says what is known:
    `commit_unknown`: it reached the writer, whose answer never came (the writer died,
    or did not answer within --write-timeout): it may be stored, so retry with the same
    Idempotency-Key; `storage_busy`: too many writes wait already, nothing was stored;
    `storage_unavailable`: nothing was stored (the disk, the writer or the database failed)."""
    headers = {"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)}
    if isinstance(exc, CommitUnknown):
        return ApiError(503, "commit_unknown", f"it is not known whether this was stored ({exc}); "
                        "retry with the same Idempotency-Key", headers)
    if isinstance(exc, WriterBusy):
        return ApiError(503, "storage_busy", f"{failed}: {exc}", headers)
    return ApiError(503, "storage_unavailable", f"{failed}: {exc}", headers)


class NotFoundHandler(ApiHandler):
    """Every route that does not exist."""

    def prepare(self) -> None:
        self.check_host()
        raise ApiError(404, "not_found", "no such resource")  # whatever the method


class JobsHandler(ApiHandler):
    """GET lists jobs page by page; POST creates one."""

    async def get(self) -> None:
        status = query_argument(self, "status")
        if status is not None and status not in STATUSES:
            raise ApiError(400, "bad_parameter", f"status must be one of {', '.join(STATUSES)}")
        raw_limit = query_argument(self, "limit")
        limit = DEFAULT_LIMIT if raw_limit is None else whole_number(raw_limit, "limit", 1, MAX_LIMIT)
        cursor = query_argument(self, "cursor")
        before = decode_cursor(cursor) if cursor is not None else None
        try:
            rows = await self.service.jobs_page(status, limit + 1, before)
        except StoreError as exc:
            raise storage_unavailable(exc, "jobs could not be read") from None  # one more: is there a next page?
        if len(rows) > limit:
            rows = rows[:limit]
            self._link_next(status, limit, rows[-1][0])
        self.write_json("[" + ",".join(doc for _, doc in rows) + "]")

    def _link_next(self, status: str | None, limit: int, last_num: int) -> None:
        query = {"status": status} if status else {}
        query.update(limit=str(limit), cursor=encode_cursor(last_num))
        self.link_next(query)

    async def post(self) -> None:
        self.check_no_fields()
        keys = self.request.headers.get_list("Idempotency-Key")
        if len(keys) > 1:  # Tornado would join them into one "k1,k2"
            raise ApiError(400, "bad_idempotency_key", "send one Idempotency-Key header, not several")
        key = keys[0] if keys else None
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise ApiError(400, "bad_idempotency_key", "Idempotency-Key must be 1 to 200 visible ASCII characters")
        try:
            created = await self.service.create_job(key)
        except Overloaded as exc:
            raise ApiError(503, "too_many_pending_jobs", str(exc),
                           {"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)}) from None
        except StoreError as exc:
            raise storage_unavailable(exc) from None
        self.set_header("Location", f"/jobs/{created.job_id}")
        self.write_json(created.job_json, 201 if created.created else 200)


class JobHandler(ApiHandler):
    async def get(self, job_id: str) -> None:
        try:
            doc = await self.service.job_json(job_id)
        except StoreError as exc:
            raise storage_unavailable(exc, "the job could not be read") from None
        if doc is None:
            raise ApiError(404, "job_not_found", "no job with this id")
        self.write_json(doc)


# What a 409 says when a job's status does not allow the change asked for.
CONFLICTS = {
    NotRetryable: ("job_not_failed", "only a failed job can be retried"),
    NotCancellable: ("job_not_pending", "only a pending job can be cancelled"),
}


class JobChangeHandler(ApiHandler):
    """Base of the POSTs that change one job: the same answers for each."""

    async def answer_change(self, change: Awaitable[str | None]) -> None:
        """200 the job's new document; 404, 409 (its status does not allow it, or it is
        being resolved) or 503 (nothing was committed)."""
        try:
            doc = await change
        except StoreError as exc:
            raise storage_unavailable(exc) from None
        except WrongStatus as exc:
            code, rule = CONFLICTS[type(exc)]
            raise ApiError(409, code, f"{rule}; this one is {exc.status}") from None
        except Resolving:
            raise ApiError(409, "job_resolving", "too late to cancel: this job's photo is being recorded") from None
        if doc is None:
            raise ApiError(404, "job_not_found", "no job with this id")
        self.write_json(doc)


class RetryHandler(JobChangeHandler):
    """POST /jobs/{id}/retry: a failed job goes back to pending, due now."""

    async def post(self, job_id: str) -> None:
        self.check_no_fields()
        await self.answer_change(self.service.retry_job(job_id))


class CancelHandler(JobChangeHandler):
    """POST /jobs/{id}/cancel: a pending job is cancelled before its photo is fetched."""

    async def post(self, job_id: str) -> None:
        self.check_no_fields()
        await self.answer_change(self.service.cancel_job(job_id))


class RetryFailedHandler(ApiHandler):
    """POST /jobs/retry-failed: every failed job back to pending, due now, in one request
    (the page's "Retry all failed"); answers {"retried": n}."""

    async def post(self) -> None:
        self.check_no_fields()
        try:
            retried = await self.service.retry_failed()
        except StoreError as exc:
            raise storage_unavailable(exc) from None
        self.write_json(json.dumps({"retried": retried}))


EVENTS_PAGE = 1000


class JobEventsHandler(ApiHandler):
    """GET /jobs/{id}/events: the job's timeline, from the event log."""

    async def get(self, job_id: str) -> None:
        raw = query_argument(self, "after")
        after = 0 if raw is None else whole_number(raw, "after")
        try:
            events = await self.service.job_events(job_id, after, EVENTS_PAGE + 1)
        except StoreError as exc:
            raise storage_unavailable(exc, "the job's events could not be read") from None
        if events is None:
            raise ApiError(404, "job_not_found", "no job with this id")
        if len(events) > EVENTS_PAGE:
            events = events[:EVENTS_PAGE]
            self.link_next({"after": str(json.loads(events[-1])["seq"])})
        self.write_json("[" + ",".join(events) + "]")


class StatsHandler(ApiHandler):
    """GET /stats: job counts, the last hour's activity per minute, the upstream's state."""

    def initialize(self, service: JobService, access: AccessPolicy, report: StatsReport | None = None) -> None:
        """`report` is required; it has a default only because this signature must accept
        every call ApiHandler's does."""
        if report is None:
            raise TypeError("StatsHandler needs its StatsReport (report=)")
        super().initialize(service, access)
        self.report = report

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            document = await self.report.document()
        except StoreError as exc:
            raise storage_unavailable(exc, "the counts could not be read") from None
        self.write_json(json.dumps(document, separators=(",", ":")))
