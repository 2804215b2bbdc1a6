"""The OpenAPI 3 description of the REST API, served at `/openapi.json`.

Owns the machine-readable contract. The test suite checks real responses against it and
runs schemathesis (property-based requests) against a running server, so this document
and `calo/api.py` cannot drift apart unnoticed.

Must never: describe behaviour the handlers do not have.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import tornado.web

from calo import __version__
from calo.errors import JSON_TYPE, JsonErrors
from calo.jobs import STATUSES

if TYPE_CHECKING:
    from calo.access import AccessPolicy


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


STRING, INTEGER, NUMBER = {"type": "string"}, {"type": "integer"}, {"type": "number"}
TIME = {"type": "string", "format": "date-time", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"}

IMAGE = {
    "type": "object",
    "required": ["source", "url", "thumb_url", "width", "height", "color", "blur_hash", "alt",
                 "photographer", "unsplash_url"],
    "properties": {
        "source": {"type": "string", "enum": ["unsplash", "demo"]},
        "url": STRING,
        "thumb_url": _nullable(STRING),
        "width": _nullable(INTEGER),
        "height": _nullable(INTEGER),
        "color": _nullable(STRING),
        "blur_hash": _nullable(STRING),
        "alt": _nullable(STRING),
        "photographer": _nullable({
            "type": "object",
            "required": ["name", "profile_url"],
            "properties": {"name": _nullable(STRING), "profile_url": _nullable(STRING)},
        }),
        "unsplash_url": _nullable(STRING),
    },
}

ERROR_DETAIL = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": STRING, "message": STRING},
    "additionalProperties": False,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Job": {
        "type": "object",
        "required": ["id", "status", "result", "created_at", "due_at", "resolved_at",
                     "delay_seconds", "attempts", "error", "image"],
        "properties": {
            "id": STRING,
            "status": {"type": "string", "enum": list(STATUSES)},
            "result": _nullable({**STRING, "description": "the photo URL once resolved"}),
            "created_at": TIME,
            "due_at": TIME,
            "resolved_at": _nullable(TIME),
            "delay_seconds": {**NUMBER, "minimum": 0},
            "attempts": {**INTEGER, "minimum": 0},
            "error": _nullable(ERROR_DETAIL),
            "image": _nullable(IMAGE),
        },
    },
    "Event": {
        "type": "object",
        "required": ["seq", "type", "at", "job"],
        "properties": {
            "seq": {**INTEGER, "minimum": 1, "description": "the event's place in the log (also on /ws)"},
            "type": {"type": "string", "enum": ["job.created", "job.updated", "job.resolved", "job.failed",
                                                 "job.retried", "job.cancelled"]},
            "at": {**TIME, "description": "when the change was committed"},
            "job": {"$ref": "#/components/schemas/Job"},  # the job after the change
        },
    },
    "Stats": {
        "type": "object",
        "required": ["at", "seq", "total", "counts", "upstream", "minutes"],
        "properties": {
            "at": TIME,
            "seq": {**INTEGER, "minimum": 0, "description": "the latest event seq"},
            "total": {**INTEGER, "minimum": 0},
            "counts": {"type": "object", "required": list(STATUSES),
                       "properties": {status: {**INTEGER, "minimum": 0} for status in STATUSES}},
            "upstream": {"type": "object", "required": ["state"], "properties": {"state": STRING},
                         "description": "as /readyz shows it: ok, demo, failing (since), rate_limited (until)"},
            "minutes": {
                "type": "array", "minItems": 60, "maxItems": 60, "description": "the last hour, oldest first",
                "items": {
                    "type": "object",
                    "required": ["start", "created", "resolved", "failed", "cancelled", "retried", "lateness"],
                    "properties": {
                        "start": TIME,
                        **{name: {**INTEGER, "minimum": 0} for name in
                           ("created", "resolved", "failed", "cancelled", "retried")},
                        "lateness": _nullable({
                            "type": "object", "required": ["count", "p50_ms", "p99_ms", "max_ms"],
                            "properties": {"count": INTEGER, "p50_ms": NUMBER, "p99_ms": NUMBER, "max_ms": NUMBER},
                        }),
                    },
                },
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": ERROR_DETAIL},
        "additionalProperties": False,
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {400: "bad parameter, body or header; a malformed request or Host", 401: "the API token is required",
               403: "a page from a foreign origin may not change jobs", 404: "no such job",
               409: "the job's status does not allow this", 413: "body over 64 KiB",
               415: "a body that is not JSON", 421: "a Host name this server does not answer to",
               431: "a request line and headers over 64 KiB",
               503: "too many pending jobs, or storage unavailable; see Retry-After"}
    # Any operation may meet a malformed request or Host (400), a foreign Host, oversized headers.
    every = dict.fromkeys((*statuses, 400, 421, 431))
    return {str(status): _json(_ref("Error"), reasons[status]) for status in sorted(every)}


# POSTs take no fields: an empty body or {} (anything else is a 400 naming the fields).
NO_FIELDS = {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "maxProperties": 0, "additionalProperties": False}}}}
MAX_INT64 = (1 << 63) - 1


JOB_ID = {"name": "id", "in": "path", "required": True, "schema": STRING}
LOCATION = {"Location": {"schema": STRING, "description": "/jobs/{id}"}}

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/jobs": {
        "get": {
            "summary": "List jobs, newest first",
            "parameters": [
                {"name": "status", "in": "query", "schema": SCHEMAS["Job"]["properties"]["status"]},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INT64},
                 "description": "the page after this position; take it from the Link header's next URL"},
            ],
            "responses": {
                "200": _json({"type": "array", "items": _ref("Job")}, "a page of jobs",
                             {"Link": {"schema": STRING, "description": '<url>; rel="next" when there is more'}}),
                **_errors(400, 401),
            },
        },
        "post": {
            "summary": "Create a job",
            "parameters": [
                {"name": "Idempotency-Key", "in": "header",
                 "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"},
                 "description": "a repeated key returns the same job (200) and creates nothing"},
            ],
            "requestBody": NO_FIELDS,
            "responses": {
                "201": _json(_ref("Job"), "created, durably", LOCATION),
                "200": _json(_ref("Job"), "this key was used before: that job", LOCATION),
                **_errors(400, 401, 403, 413, 415, 503),
            },
        },
    },
    "/jobs/{id}": {
        "get": {
            "summary": "One job",
            "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Job"), "the job"), **_errors(400, 401, 404)},
        },
    },
    "/jobs/{id}/retry": {
        "post": {
            "summary": "Put a failed job back to pending, due now",
            "parameters": [JOB_ID],
            "requestBody": NO_FIELDS,
            "responses": {"200": _json(_ref("Job"), "the job, pending again"),
                          **_errors(400, 401, 403, 404, 409, 413, 415, 503)},
        },
    },
    "/jobs/retry-failed": {
        "post": {
            "summary": "Put every failed job back to pending, due now",
            "requestBody": NO_FIELDS,
            "responses": {
                "200": _json({"type": "object", "required": ["retried"],
                              "properties": {"retried": {**INTEGER, "minimum": 0}}}, "how many were retried"),
                **_errors(400, 401, 403, 413, 415, 503),
            },
        },
    },
    "/jobs/{id}/cancel": {
        "post": {
            "summary": "Cancel a pending job before its photo is fetched",
            "description": "409 job_not_pending unless it is pending; 409 job_resolving once its photo is "
            "being recorded.",
            "parameters": [JOB_ID],
            "requestBody": NO_FIELDS,
            "responses": {"200": _json(_ref("Job"), "the job, cancelled"),
                          **_errors(400, 401, 403, 404, 409, 413, 415, 503)},
        },
    },
    "/jobs/{id}/events": {
        "get": {
            "summary": "The job's timeline: its retained events, oldest first",
            "parameters": [
                JOB_ID,
                {"name": "after", "in": "query",
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT64, "default": 0},
                 "description": "only events with a higher seq (the Link header's next URL sets it)"},
            ],
            "responses": {
                "200": _json({"type": "array", "maxItems": 1000, "items": _ref("Event")}, "up to 1000 events",
                             {"Link": {"schema": STRING, "description": '<url>; rel="next" when there is more'}}),
                **_errors(400, 401, 404),
            },
        },
    },
    "/stats": {
        "get": {
            "summary": "The dashboard's numbers: counts by status, the last hour per minute, the upstream",
            "responses": {"200": _json(_ref("Stats"), "the numbers"), **_errors(400, 401)},
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Calo Jobs",
        "version": __version__,
        "description": "Delayed jobs that fetch a random food photo from Unsplash. "
        "Live updates: the /ws WebSocket (see the README).",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "CALO_API_TOKEN: for changes when it is set; with "
                                       "--private, for everything"}},
    },
}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def document(access: AccessPolicy) -> dict[str, Any]:
    """The document as this server's access rules make it: the bearer scheme on exactly
    the operations that need the token (none without one; POSTs with one; every
    operation with --private), and 401 among the answers of those only."""
    paths: dict[str, Any] = {}
    for path, operations in PATHS.items():
        paths[path] = {}
        for method, operation in operations.items():
            stated: dict[str, Any] = dict(operation)
            if access.needs_token(method.upper()):
                stated["security"] = BEARER
            else:
                responses: dict[str, Any] = stated["responses"]
                stated["responses"] = {code: answer for code, answer in responses.items() if code != "401"}
            paths[path][method] = stated
    return {**DOCUMENT, "paths": paths}


def document_json(access: AccessPolicy) -> str:
    return json.dumps(document(access), indent=1)


class OpenApiHandler(JsonErrors, tornado.web.RequestHandler):
    """GET /openapi.json: the document, as `document(access)` makes it."""

    def initialize(self, document_json: str) -> None:
        self.document_json = document_json

    def get(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(self.document_json)
