"""Wall-clock time as the service stores and shows it: integer milliseconds since the epoch
(UTC), and ISO 8601 text with a `Z` suffix.

Owns the one time format of job documents, events, logs and the JSON export.

Threads: pure functions, safe on any thread.
Must never: sleep, keep state, or be used to measure intervals (use `time.monotonic`).
"""

from __future__ import annotations

import datetime
from typing import overload


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch (UTC)."""
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)


@overload
def iso_utc(ms: int) -> str: ...


@overload
def iso_utc(ms: None) -> None: ...


@overload
def iso_utc(ms: int | None) -> str | None: ...


def iso_utc(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC with a `Z` suffix, or None."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@overload
def parse_iso_utc(text: str) -> int: ...


@overload
def parse_iso_utc(text: None) -> None: ...


@overload
def parse_iso_utc(text: str | None) -> int | None: ...


def parse_iso_utc(text: str | None) -> int | None:
    """Inverse of `iso_utc`; raises ValueError for text that is not an ISO 8601 time."""
    if text is None:
        return None
    # fromisoformat reads the "Z" (Python 3.11+) and is many times faster than strptime.
    return round(datetime.datetime.fromisoformat(text).timestamp() * 1000)
