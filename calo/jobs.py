"""The job: its states, its public JSON document, and how a new one is drawn.

Owns the shape of a job as the API, the event log and the JSON export show it. A job is
kept as one JSON document (`Job.to_doc`); the store indexes a few of its fields.

Must never: do I/O, know about threads, SQLite or Tornado. Everything here is plain data
and pure functions, safe to call from any thread.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import Any

from calo import sanitize
from calo.clock import iso_utc, parse_iso_utc
from calo.tokens import random_token

PENDING = "pending"
RESOLVED = "resolved"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (PENDING, RESOLVED, FAILED, CANCELLED)

# Event types, one per kind of change; the event log and the WebSocket use these names.
CREATED = "job.created"
EVENT_FOR_STATUS = {RESOLVED: "job.resolved", FAILED: "job.failed"}
UPDATED = "job.updated"
RETRIED = "job.retried"
CANCELLED_EVENT = "job.cancelled"


def new_job_id() -> str:
    """A random, URL-safe, unguessable job id."""
    return random_token()


_EXPORTED_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_EXPORTED_DELAY = 366 * 24 * 3600
_EARLIEST_MS, _LATEST_MS = 0, 253_402_300_799_999  # 1970-01-01 to 9999-12-31T23:59:59.999Z


def _exported_time_or_none(doc: dict[str, Any], field: str) -> int | None:
    return None if doc.get(field) is None else _exported_time(doc, field)


def _exported_time(doc: dict[str, Any], field: str) -> int:
    text = doc.get(field)
    try:
        ms = parse_iso_utc(text) if isinstance(text, str) else None
    except (ValueError, OverflowError):
        ms = None
    if ms is None or not _EARLIEST_MS <= ms <= _LATEST_MS:
        raise ValueError(f"{field} must be an ISO 8601 UTC time from 1970 to 9999")
    return ms


def draw_delay(minimum: float, maximum: float, step: float, rng: random.Random) -> float:
    """A delay drawn uniformly from {minimum, minimum + step, ..., maximum}."""
    choices = int((maximum - minimum) / step + 1e-9)
    return round(minimum + step * rng.randint(0, choices), 6)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one upstream attempt did to one pending job: plain data, made on the IOLoop
    thread and applied by the store's writer (in its own process) to the job as it is in
    the database."""

    job_id: str
    at: int
    image: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str = ""
    final: bool = True  # for an error: False keeps the job pending, to be tried again
    max_attempts: int | None = None  # for a non-final error: fail once this many were made
    attempted: bool = True  # False: no call was made (e.g. waiting for the rate limit)


@dataclasses.dataclass
class Job:
    """One job. Times are integer milliseconds since the epoch (UTC)."""

    id: str
    status: str
    created_at: int
    due_at: int
    delay_seconds: float
    attempts: int = 0
    resolved_at: int | None = None
    result: str | None = None
    error: dict[str, str] | None = None
    image: dict[str, Any] | None = None

    @classmethod
    def new(cls, delay_seconds: float, created_at: int) -> Job:
        due_at = created_at + int(round(delay_seconds * 1000))
        return cls(new_job_id(), PENDING, created_at, due_at, delay_seconds)

    def to_doc(self) -> dict[str, Any]:
        """The public JSON object, exactly as `GET /jobs/{id}` returns it."""
        return {
            "id": self.id,
            "status": self.status,
            "result": self.result,
            "created_at": iso_utc(self.created_at),
            "due_at": iso_utc(self.due_at),
            "resolved_at": iso_utc(self.resolved_at),
            "delay_seconds": self.delay_seconds,
            "attempts": self.attempts,
            "error": self.error,
            "image": self.image,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_doc(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Job:
        doc = json.loads(text)
        return cls(
            id=doc["id"],
            status=doc["status"],
            created_at=parse_iso_utc(doc["created_at"]),
            due_at=parse_iso_utc(doc["due_at"]),
            delay_seconds=doc["delay_seconds"],
            attempts=doc["attempts"],
            resolved_at=parse_iso_utc(doc["resolved_at"]),
            result=doc["result"],
            error=doc["error"],
            image=doc["image"],
        )

    @classmethod
    def from_export(cls, doc: Any) -> Job:
        """A job from a JSON export (`--import-json`), checked and made storable: text is
        repaired and capped as calo.sanitize says, times must be ISO 8601 between the
        years 1970 and 9999. Raises ValueError naming the first field that is not valid."""
        if not isinstance(doc, dict):
            raise ValueError("a job must be a JSON object")
        if not isinstance(doc.get("id"), str) or not _EXPORTED_ID.fullmatch(doc["id"]):
            raise ValueError("id must be 1 to 64 letters, digits, '-' or '_'")
        if doc.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        delay = doc.get("delay_seconds")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_EXPORTED_DELAY:
            raise ValueError("delay_seconds must be a number of seconds from 0 to one year")
        attempts = sanitize.whole_number(doc.get("attempts"), 0, 1_000_000)
        if attempts is None:
            raise ValueError("attempts must be a whole number from 0 to 1000000")
        return cls(
            id=doc["id"], status=doc["status"],
            created_at=_exported_time(doc, "created_at"), due_at=_exported_time(doc, "due_at"),
            delay_seconds=delay, attempts=attempts,
            resolved_at=_exported_time_or_none(doc, "resolved_at"),
            result=sanitize.storable_url(doc.get("result")),
            error=sanitize.storable_error(doc.get("error")),
            image=sanitize.storable_image(doc.get("image")),
        )

    def apply(self, outcome: Outcome) -> str:
        """Apply what an upstream attempt did; returns the event type of the change."""
        code, message = outcome.error_code or "failed", outcome.error_message
        out_of_tries = outcome.max_attempts is not None and self.attempts + 1 >= outcome.max_attempts
        if outcome.image is not None:
            self.resolve(outcome.image, outcome.at)
        elif outcome.final or out_of_tries:
            self.fail(code, message, outcome.at)
        else:
            self.record_failed_attempt(code, message, counted=outcome.attempted)
        return EVENT_FOR_STATUS.get(self.status, UPDATED)

    def resolve(self, image: dict[str, Any], at: int) -> None:
        self.attempts += 1
        self.status = RESOLVED
        self.image = image
        self.result = image["url"]
        self.resolved_at = at
        self.error = None

    def fail(self, code: str, message: str, at: int) -> None:
        """The last attempt failed and will not be retried."""
        self.attempts += 1
        self.status = FAILED
        self.error = {"code": code, "message": message}
        self.resolved_at = at

    def record_failed_attempt(self, code: str, message: str, counted: bool = True) -> None:
        """A try that did not work (or, not counted, could not be made) and will be
        retried: the job stays pending, and says why it is still waiting."""
        self.attempts += 1 if counted else 0
        self.error = {"code": code, "message": message}

    def cancel(self, at: int) -> None:
        """A pending job is withdrawn before its photo is fetched; `resolved_at` says when."""
        self.status = CANCELLED
        self.resolved_at = at

    def retry(self, at: int) -> None:
        """A failed job goes back to pending, due now, with a fresh count of tries. Its
        earlier tries stay in the event log (`GET /jobs/{id}/events`)."""
        self.status = PENDING
        self.due_at = at
        self.attempts = 0
        self.error = self.result = self.image = self.resolved_at = None
