"""The outside world: where photos come from (the Unsplash API, or bundled demo images).

Owns the HTTP conversation with Unsplash (`GET /photos/random?query=food`, its headers,
its deadline and error answers) and turning a photo into the job's `image` object. Both
sources have one method, `fetch(count)`, which returns a `Fetched` or raises an
`UpstreamError` saying whether trying again later can help, and `abort_all()`, which
cuts the calls in flight short at shutdown. A call as a whole (connect, headers, body)
ends within its deadline (calo.deadline), however slowly the upstream sends. An answer
is classified by its status and headers first (429, 403 with `X-Ratelimit-Remaining: 0`
or `Retry-After`: rate limited; 401, other 403: key refused; 5xx: transient); the body's
wording is only a hint, for a 403 that sends neither header.

Threads: `fetch` blocks on the network and runs only on the bounded worker pool, never on
the IOLoop thread. It takes and returns plain data.

Must never: touch Tornado, SQLite or job state; log or return the access key; keep a URL
from upstream that is not an absolute http(s) URL.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import http.client
import json
import os
import random
import re
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import requests

from calo.clock import now_ms
from calo.deadline import CallGuard, DeadlineAdapter
from calo.sanitize import http_url, storable_image

CONNECT_TIMEOUT = 3.05  # seconds; just over a multiple of 3, TCP's retransmit window
CALL_DEADLINE = 10.0  # seconds for a whole call: connect, headers and body (--unsplash-timeout)
MAX_BODY_BYTES = 4 << 20  # 30 photos are about 150 KB; a bigger answer is not a photo list
QUERY = "food"
_SECONDS = re.compile(r"[0-9]{1,10}")  # Retry-After's delay-seconds: ASCII digits only


class UpstreamError(Exception):
    """A fetch that gave no photo. `code` goes into the job's `error.code`;
    `retry_after_ms` is the upstream's Retry-After, when it sent one."""

    code = "upstream_error"
    retryable = False  # would the same request, later, likely work?
    refuses_key = False  # does it say the access key is refused (upstream state `rejected`)?

    def __init__(self, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class TransientError(UpstreamError):
    """Timeout or deadline, refused or reset connection, 5xx, or a garbled answer."""

    code = "upstream_unavailable"
    retryable = True


class RateLimited(UpstreamError):
    """The request budget is spent: 429, or a 403 with `X-Ratelimit-Remaining: 0` or a
    Retry-After (or, with neither header, a body that says "rate limit")."""

    code = "rate_limited"
    retryable = True


class AccessKeyRejected(UpstreamError):
    """401: the access key is wrong, revoked or missing."""

    code = "unsplash_access_key_rejected"
    refuses_key = True


class RequestRejected(UpstreamError):
    """Any other 4xx: the request itself is wrong; repeating it will not help."""

    code = "upstream_rejected"


class AccessForbidden(RequestRejected):
    """403 that is not a rate limit: the key may not make this request (suspended,
    or lacking a permission)."""

    refuses_key = True


@dataclasses.dataclass(frozen=True)
class Fetched:
    images: list[dict[str, Any]]
    rate_limit: int | None = None  # X-Ratelimit-Limit of the answer, when sent
    rate_remaining: int | None = None  # X-Ratelimit-Remaining


class PhotoSource(Protocol):
    """Where photos come from: `UnsplashSource`, `DemoSource`, or a wrapper of one
    (`calo.metrics.MeteredSource`)."""

    name: str  # "unsplash" or "demo"

    def describe(self) -> str:
        """One line for the operator: which source, and where."""
        ...

    def fetch(self, count: int) -> Fetched:
        """Up to `count` photos; raises UpstreamError. Blocks: worker pool only."""
        ...

    def abort_all(self) -> None:
        """Cut the calls in flight short and refuse new ones (shutdown). Any thread."""
        ...


def image_from_photo(photo: Any) -> dict[str, Any] | None:
    """The job's `image` object for one Unsplash photo, made storable (calo.sanitize:
    valid Unicode, capped lengths), or None if it has no usable http(s) URL."""
    if not isinstance(photo, dict):
        return None
    urls = _object(photo.get("urls"))
    user = _object(photo.get("user"))
    return storable_image({
        "source": "unsplash",
        "url": http_url(urls.get("regular")),
        "thumb_url": http_url(urls.get("small")),
        "width": photo.get("width"),
        "height": photo.get("height"),
        "color": photo.get("color"),
        "blur_hash": photo.get("blur_hash"),
        "alt": photo.get("alt_description"),
        "photographer": {"name": user.get("name"), "profile_url": _object(user.get("links")).get("html")},
        "unsplash_url": _object(photo.get("links")).get("html"),
    })


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name, "").strip()
    return int(value) if _SECONDS.fullmatch(value) else None


def retry_after_ms(headers: Mapping[str, str], now: int) -> int | None:
    """The `Retry-After` header in ms from `now` (wall-clock ms): delay-seconds or an
    HTTP date (RFC 9110 10.2.3); None when absent or not understood."""
    value = headers.get("Retry-After", "").strip()
    if _SECONDS.fullmatch(value):
        return int(value) * 1000
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0, int(moment.timestamp() * 1000) - now)


def _raise_for_answer(status: int, headers: Mapping[str, str], body: bytes) -> None:
    """Classify an answer that is not a 200, by status and headers first; the body's
    wording is only a hint, for a 403 that sends neither rate-limit header."""
    remaining = _header_int(headers, "X-Ratelimit-Remaining")
    retry_after = retry_after_ms(headers, now_ms())
    if status == 429 or (status == 403 and (remaining == 0 or retry_after is not None)):
        raise RateLimited(f"Unsplash rate limit exceeded ({status})", retry_after)
    if status == 403 and remaining is None and b"rate limit" in body[:4096].lower():
        raise RateLimited(f"Unsplash rate limit exceeded ({status})", retry_after)
    if status == 401:
        raise AccessKeyRejected("Unsplash rejected the access key (401): check CALO_UNSPLASH_ACCESS_KEY")
    if status == 403:
        raise AccessForbidden("Unsplash refused the request (403, not a rate limit): check the access key")
    if status >= 500:
        raise TransientError(f"Unsplash answered {status}", retry_after)
    raise RequestRejected(f"Unsplash answered {status}")


def _read_capped(response: requests.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_content(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise TransientError(f"Unsplash sent an answer over {MAX_BODY_BYTES >> 20} MiB")
    return bytes(body)


class UnsplashSource:
    """Random food photos from the Unsplash API. `fetch` is safe to call from many
    worker threads at once (each thread has its own keep-alive session); every call
    ends within `deadline` seconds (connect, headers and body together)."""

    name = "unsplash"

    def __init__(self, api_url: str, access_key: str, deadline: float = CALL_DEADLINE):
        self._deadline = deadline
        self._timeout = (min(CONNECT_TIMEOUT, deadline), deadline)
        self._endpoint = api_url.rstrip("/") + "/photos/random"
        self._headers = {"Authorization": f"Client-ID {access_key}", "Accept-Version": "v1"}
        self._local = threading.local()
        self._guard = CallGuard()

    def describe(self) -> str:
        return f"unsplash ({self._endpoint.rsplit('/photos', 1)[0]})"

    def abort_all(self) -> None:
        """Cut every call in flight short, and refuse new ones (the server is stopping).
        Safe from any thread."""
        self._guard.abort_all()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            adapter = DeadlineAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        return session

    def fetch(self, count: int) -> Fetched:
        """Up to `count` photos in one request (`count` is sent only when above 1)."""
        params: dict[str, Any] = {"query": QUERY}
        if count > 1:
            params["count"] = count
        with self._guard.call(self._deadline) as call:
            try:
                response = self._session().get(
                    self._endpoint, params=params, headers=self._headers, timeout=self._timeout, stream=True,
                )
                with response:
                    body = _read_capped(response)
            except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                if call.aborted:
                    raise TransientError("the call to Unsplash was cut short: the server is stopping") from None
                if call.expired or isinstance(exc, requests.Timeout):
                    raise TransientError(f"Unsplash did not answer within {self._deadline:g} s") from None
                raise TransientError(f"cannot reach Unsplash ({type(exc).__name__})") from None
        if response.status_code != 200:
            _raise_for_answer(response.status_code, response.headers, body)
        return Fetched(
            _images(body, count),
            rate_limit=_header_int(response.headers, "X-Ratelimit-Limit"),
            rate_remaining=_header_int(response.headers, "X-Ratelimit-Remaining"),
        )


def _images(body: bytes, count: int) -> list[dict[str, Any]]:
    try:
        # Bytes that are not UTF-8 become U+FFFD: one damaged caption must not cost 30 photos.
        answer = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        raise TransientError("Unsplash sent a body that is not JSON") from None
    photos = answer if count > 1 and isinstance(answer, list) else [answer]
    images = [image for image in map(image_from_photo, photos) if image is not None]
    if not images:
        raise TransientError("Unsplash sent no photo with a usable http(s) URL")
    return images


class DemoSource:
    """Bundled demo images from `static/demo/`, for a server with no access key. They are
    dealt in turn from one shuffled order, so any run of as many jobs as there are images
    shows each image once (a random pick showed three identical donuts among twelve).
    `fetch` runs on the worker pool, so the turn is kept under a lock."""

    name = "demo"

    def __init__(self, static_dir: str, rng: random.Random | None = None, base_url: str = ""):
        """`base_url`: where clients reach this server (http://host:port, no slash at the
        end), so that a job's image URLs are absolute, as Unsplash's are; "" gives paths."""
        self.base_url = base_url
        with open(os.path.join(static_dir, "demo", "manifest.json"), encoding="utf-8") as file:
            self._manifest = json.load(file)
        self._order: list[dict[str, Any]] = list(self._manifest)
        (rng or random.Random()).shuffle(self._order)
        self._turn = 0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "demo images (no Unsplash access key set)"

    def abort_all(self) -> None:
        """Nothing to cut short: demo images are read from memory."""

    def fetch(self, count: int) -> Fetched:
        with self._lock:
            return Fetched([self._image(self._deal()) for _ in range(count)])

    def _deal(self) -> dict[str, Any]:
        entry = self._order[self._turn % len(self._order)]
        self._turn += 1
        return entry

    def _image(self, entry: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/static/demo/{entry['file']}"
        return {
            "source": "demo", "url": url, "thumb_url": url,
            "width": entry.get("width"), "height": entry.get("height"),
            "color": entry.get("color"), "blur_hash": None, "alt": entry.get("alt"),
            "photographer": None, "unsplash_url": None,
        }
