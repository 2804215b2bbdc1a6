"""Text from outside made storable: valid Unicode, no stray control characters, capped.

Owns the caps on everything Calo Jobs keeps that it did not write itself (a photo's
text from Unsplash, the jobs of an imported export) and the one function that makes a
job's `image` object fit them. SQLite stores only valid UTF-8, so a lone UTF-16 surrogate
(half an emoji, as JSON's `\\ud83d` escape decodes to) makes a write fail; NUL and other
control characters have no meaning in a name or a caption; and a megabyte caption would
be sent to every browser on every change of its job. Values are repaired rather than
refused where a repair keeps their meaning: a lone surrogate becomes U+FFFD, control
characters that separate words become a space, other control characters are dropped,
and text past its cap is cut and ends in an ellipsis.

The caps (characters): a caption (`alt`) 1,000; a photographer's name 200; a URL 2,048
(a longer one, or one with spaces or control characters, is not kept); a blur hash 200;
an error message 1,000; an error code 64. Width and height are whole numbers from 1 to
1,000,000, a colour is `#rrggbb`; anything else becomes null.

Must never: do I/O, or raise on any input (every function answers None for what it
cannot repair). Pure functions, safe from any thread.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

ALT_CAP = 1000
NAME_CAP = 200
URL_CAP = 2048
BLUR_HASH_CAP = 200
MESSAGE_CAP = 1000
CODE_CAP = 64
DIMENSION_MAX = 1_000_000

ELLIPSIS = "\u2026"
_SPACING_CONTROLS = re.compile(r"[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029]")  # separate words: become a space
_OTHER_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")  # meaningless in text: dropped
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\ufffd]")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_BLUR_HASH = re.compile(r"[0-9A-Za-z#$%*+,\-.:;=?@\[\]^_{|}~]{6," + str(BLUR_HASH_CAP) + "}")


def valid_unicode(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (a well-formed pair becomes
    the character it encodes), so that it encodes as UTF-8."""
    if text.isascii():
        return text  # the common case costs one scan
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def storable_text(value: Any, cap: int) -> str | None:
    """One line of text that SQLite and a browser keep as it reads: None unless `value`
    is a string; valid Unicode, controls replaced or dropped, at most `cap` characters."""
    if not isinstance(value, str):
        return None
    text = valid_unicode(value[: cap * 2])  # never clean a megabyte to keep a thousand
    text = _OTHER_CONTROLS.sub("", _SPACING_CONTROLS.sub(" ", text))
    if len(text) > cap or len(value) > cap * 2:
        text = text[: cap - 1] + ELLIPSIS
    return text


def http_url(value: Any) -> str | None:
    """`value` if it is an absolute http(s) URL of at most 2,048 characters with no
    space, control character or broken Unicode, else None."""
    if not isinstance(value, str) or len(value) > URL_CAP or valid_unicode(value) != value:
        return None
    if _URL_UNSAFE.search(value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def storable_url(value: Any) -> str | None:
    """A URL as stored: an absolute http(s) URL (`http_url`), or a path on this server
    (demo images are `/static/demo/...`); else None."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//"):
        return http_url("http://localhost" + value) and value
    return http_url(value)


def whole_number(value: Any, low: int, high: int) -> int | None:
    """`value` if it is an int (not a bool) from `low` to `high`, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _pattern(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def storable_image(image: Any) -> dict[str, Any] | None:
    """A job's `image` object with every field made storable (see the module's caps),
    unknown fields dropped; None if it has no usable `url`."""
    if not isinstance(image, dict):
        return None
    url = storable_url(image.get("url"))
    if url is None:
        return None
    photographer = image.get("photographer")
    if isinstance(photographer, dict):
        photographer = {
            "name": storable_text(photographer.get("name"), NAME_CAP),
            "profile_url": http_url(photographer.get("profile_url")),
        }
    else:
        photographer = None
    source = image.get("source")
    return {
        "source": source if source in ("unsplash", "demo") else "unsplash",
        "url": url,
        "thumb_url": storable_url(image.get("thumb_url")),
        "width": whole_number(image.get("width"), 1, DIMENSION_MAX),
        "height": whole_number(image.get("height"), 1, DIMENSION_MAX),
        "color": _pattern(image.get("color"), _COLOR),
        "blur_hash": _pattern(image.get("blur_hash"), _BLUR_HASH),
        "alt": storable_text(image.get("alt"), ALT_CAP),
        "photographer": photographer,
        "unsplash_url": http_url(image.get("unsplash_url")),
    }


def storable_error(error: Any) -> dict[str, str] | None:
    """A job's `error` object ({"code", "message"}) made storable; None if it is not one."""
    if not isinstance(error, dict):
        return None
    code = storable_text(error.get("code"), CODE_CAP)
    return {"code": code or "failed", "message": storable_text(error.get("message"), MESSAGE_CAP) or ""}
