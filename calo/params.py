"""Query parameters: the one way a request's numbers, cursors and single values are read.

Owns what a well-formed parameter is, for every route (REST and the WebSocket):
- a whole number is ASCII digits only (`str.isdigit()` also takes "²", "١" and "５",
  which `int()` then refuses or reads), without sign, space or underscore, and within the
  range the caller names (never past SQLite's 64-bit integers);
- a parameter given twice (`?limit=5&limit=6`) is refused, not silently narrowed to one;
- a cursor is a job's position (a whole number from 1), as the Link header gives it.
Every refusal is `ApiError(400, "bad_parameter", ...)` naming the parameter.

Threads: pure functions, safe anywhere.
Must never: let a value through that SQLite or `int()` could choke on.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from calo.errors import ApiError

if TYPE_CHECKING:
    import tornado.web

MAX_INT64 = (1 << 63) - 1
# Leading zeros are fine ("0001" is 1); past 64 digits a number is refused unread, so
# that int() never works on a client's megabyte of digits. The range is checked after.
ASCII_DIGITS = re.compile(r"[0-9]{1,64}")


def bad_parameter(name: str, wanted: str) -> ApiError:
    return ApiError(400, "bad_parameter", f"{name} must be {wanted}")


def whole_number(text: str, name: str, low: int = 0, high: int = MAX_INT64) -> int:
    """`text` as an int from `low` to `high`; ApiError 400 if it is anything else."""
    if ASCII_DIGITS.fullmatch(text):
        value = int(text)
        if low <= value <= high:
            return value
    raise bad_parameter(name, f"a whole number from {low} to {high} (ASCII digits)")


def query_argument(handler: tornado.web.RequestHandler, name: str) -> str | None:
    """The query parameter `name`, or None when absent; ApiError 400 when repeated."""
    values = handler.get_query_arguments(name, strip=False)  # " 1" is not a number
    if len(values) > 1:
        raise bad_parameter(name, "given once")
    return values[0] if values else None


def encode_cursor(num: int) -> str:
    """The `cursor` for the page after the job numbered `num`."""
    return str(num)


def decode_cursor(cursor: str) -> int:
    """The job number a cursor names; ApiError 400 for anything else."""
    return whole_number(cursor, "cursor", 1)
