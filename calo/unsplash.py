"""The outside world: where photos come from (the Unsplash API, or bundled demo images).

Owns the HTTP conversation with Unsplash (`GET /photos/random?query=food`, its headers,
timeouts and error answers) and turning a photo into the job's `image` object. Both
sources have one method, `fetch(count)`, which returns a `Fetched` or raises an
`UpstreamError` saying whether trying again later can help.

Threads: `fetch` blocks on the network and runs only on the bounded worker pool, never on
the IOLoop thread. It takes and returns plain data.

Must never: touch Tornado, SQLite or job state; log or return the access key; keep a URL
from upstream that is not an absolute http(s) URL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
from typing import Any, Protocol

import requests

from calo.sanitize import http_url, storable_image

CONNECT_TIMEOUT = 3.05  # seconds; just over a multiple of 3, TCP's retransmit window
READ_TIMEOUT = 10.0
QUERY = "food"


class UpstreamError(Exception):
    """A fetch that gave no photo. `code` goes into the job's `error.code`."""

    code = "upstream_error"
    retryable = False  # would the same request, later, likely work?


class TransientError(UpstreamError):
    """Timeout, refused or reset connection, 5xx, or a garbled answer."""

    code = "upstream_unavailable"
    retryable = True


class RateLimited(UpstreamError):
    """The hourly request budget is spent (403 `Rate Limit Exceeded`, or 429)."""

    code = "rate_limited"
    retryable = True


class AccessKeyRejected(UpstreamError):
    """401: the access key is wrong, revoked or missing."""

    code = "unsplash_access_key_rejected"


class RequestRejected(UpstreamError):
    """Any other 4xx: the request itself is wrong; repeating it will not help."""

    code = "upstream_rejected"


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


def _header_int(response: requests.Response, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


def _raise_for_answer(response: requests.Response) -> None:
    status = response.status_code
    if status == 401:
        raise AccessKeyRejected("Unsplash rejected the access key (401): check CALO_UNSPLASH_ACCESS_KEY")
    if status == 429 or (status == 403 and "rate limit" in response.text.lower()):
        raise RateLimited(f"Unsplash rate limit exceeded ({status})")
    if status >= 500:
        raise TransientError(f"Unsplash answered {status}")
    if status != 200:
        raise RequestRejected(f"Unsplash answered {status}")


class UnsplashSource:
    """Random food photos from the Unsplash API. `fetch` is safe to call from many
    worker threads at once (each thread has its own keep-alive session)."""

    name = "unsplash"

    def __init__(self, api_url: str, access_key: str, read_timeout: float = READ_TIMEOUT):
        self._timeout = (CONNECT_TIMEOUT, read_timeout)
        self._endpoint = api_url.rstrip("/") + "/photos/random"
        self._headers = {"Authorization": f"Client-ID {access_key}", "Accept-Version": "v1"}
        self._local = threading.local()

    def describe(self) -> str:
        return f"unsplash ({self._endpoint.rsplit('/photos', 1)[0]})"

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def fetch(self, count: int) -> Fetched:
        """Up to `count` photos in one request (`count` is sent only when above 1)."""
        params: dict[str, Any] = {"query": QUERY}
        if count > 1:
            params["count"] = count
        try:
            response = self._session().get(
                self._endpoint, params=params, headers=self._headers,
                timeout=self._timeout,
            )
        except requests.Timeout:
            raise TransientError("Unsplash did not answer in time") from None
        except requests.RequestException as exc:
            raise TransientError(f"cannot reach Unsplash ({type(exc).__name__})") from None
        _raise_for_answer(response)
        return Fetched(
            self._images(response, count),
            rate_limit=_header_int(response, "X-Ratelimit-Limit"),
            rate_remaining=_header_int(response, "X-Ratelimit-Remaining"),
        )

    @staticmethod
    def _images(response: requests.Response, count: int) -> list[dict[str, Any]]:
        try:
            body = response.json()
        except ValueError:
            raise TransientError("Unsplash sent a body that is not JSON") from None
        photos = body if count > 1 and isinstance(body, list) else [body]
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

    def __init__(self, static_dir: str, rng: random.Random | None = None):
        with open(os.path.join(static_dir, "demo", "manifest.json"), encoding="utf-8") as file:
            self._manifest = json.load(file)
        self._order: list[dict[str, Any]] = list(self._manifest)
        (rng or random.Random()).shuffle(self._order)
        self._turn = 0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "demo images (no Unsplash access key set)"

    def fetch(self, count: int) -> Fetched:
        with self._lock:
            return Fetched([self._image(self._deal()) for _ in range(count)])

    def _deal(self) -> dict[str, Any]:
        entry = self._order[self._turn % len(self._order)]
        self._turn += 1
        return entry

    @staticmethod
    def _image(entry: dict[str, Any]) -> dict[str, Any]:
        url = f"/static/demo/{entry['file']}"
        return {
            "source": "demo", "url": url, "thumb_url": url,
            "width": entry.get("width"), "height": entry.get("height"),
            "color": entry.get("color"), "blur_hash": None, "alt": entry.get("alt"),
            "photographer": None, "unsplash_url": None,
        }
