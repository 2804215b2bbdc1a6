"""Fake Unsplash API for the Calo Jobs test suite and benchmarks.

Owns: a loopback stand-in for https://api.unsplash.com that answers
``GET /photos/random`` (and the ``download_location`` ping) the way the real API
documents them -- ``Client-ID`` auth, ``X-Ratelimit-*`` headers, a plain-text 403
"Rate Limit Exceeded" once the budget is spent -- plus the SVG images its photo
URLs point at, and thread-safe knobs for injecting faults from a test.

Must never: reach the real network, import project code, or need anything beyond
the Python standard library (benchmarks run it as a bare script).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import random
import re
import signal
import socket
import string
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

Json = dict[str, Any]

# Its own generator: the global one belongs to the test process (Hypothesis watches it).
_RNG = random.Random()
ID_ALPHABET = string.ascii_letters + string.digits + "_-"
BLURHASH_ALPHABET = string.digits + string.ascii_letters + "#$%*+,-.:;=?@[]^_{|}~"
MAX_PHOTOS_PER_CALL = 30
MAX_RECORDED_CALLS = 10_000  # bounds memory during long benchmark runs
STOP_JOIN_SECONDS = 0.5
INVALID_KEY_MESSAGE = "OAuth error: The access token is invalid"
DOWNLOAD_PATH = re.compile(r"/photos/([^/]+)/download")
IMAGE_PATH = re.compile(r"/img/([^/]+)\.svg")
PHOTOGRAPHERS = [
    ("mira_tanaka", "Mira Tanaka"),
    ("jonas.feld", "Jonas Feld"),
    ("amaka_eats", "Amaka Obi"),
]
ALT_DESCRIPTIONS = [
    "a bowl of ramen on a wooden table",
    "sliced avocado toast on a white plate",
    "a stack of pancakes with berries",
    "green salad in a ceramic bowl",
]


@dataclass
class _Fault:
    status: int | None  # None means: reset the connection instead of answering
    times_left: int | None  # None means: until clear_faults() (or `until`)
    answer: _Answer | None = None  # a canned answer instead of the status's usual one
    until: float | None = None  # time.monotonic() at which the fault ends by itself


@dataclass
class _Trickle:
    interval: float  # seconds between two bytes
    stage: str  # "headers": the status line and headers trickle; "body": the body does
    times_left: int | None


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str | None] = field(default_factory=dict)  # None: left out


def _random_token(length: int, alphabet: str = ID_ALPHABET) -> str:
    return "".join(_RNG.choices(alphabet, k=length))


def _color_for(name: str) -> str:
    return "#" + hashlib.sha1(name.encode()).hexdigest()[:6]


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _deep_merge(base: Json, override: Json) -> Json:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _json_answer(status: int, payload: Any) -> _Answer:
    return _Answer(status, json.dumps(payload).encode())


def _error_answer(status: int, message: str) -> _Answer:
    return _json_answer(status, {"errors": [message]})


def _parse_count(raw: str | None) -> int | None:
    """Return the photo count, None when absent; raise ValueError when out of range."""
    if raw is None:
        return None
    count = int(raw)
    if not 1 <= count <= MAX_PHOTOS_PER_CALL:
        raise ValueError(raw)
    return count


def build_user(base_url: str) -> Json:
    username, name = _RNG.choice(PHOTOGRAPHERS)
    api_user = f"{base_url}/users/{username}"
    return {
        "id": _random_token(11),
        "username": username,
        "name": name,
        "links": {
            "self": api_user,
            "html": f"https://unsplash.com/@{username}",
            "photos": f"{api_user}/photos",
            "likes": f"{api_user}/likes",
            "portfolio": f"{api_user}/portfolio",
        },
    }


def build_photo(base_url: str) -> Json:
    photo_id = _random_token(11)
    created = datetime.now(UTC) - timedelta(days=_RNG.randint(30, 2000))
    image = f"{base_url}/img/{photo_id}.svg"
    alt_description = _RNG.choice(ALT_DESCRIPTIONS)
    return {
        "id": photo_id,
        "created_at": _timestamp(created),
        "updated_at": _timestamp(created + timedelta(days=_RNG.randint(0, 29))),
        "width": _RNG.randint(3000, 6000),
        "height": _RNG.randint(2000, 6000),
        "color": _color_for(photo_id),
        "blur_hash": "L" + _random_token(27, BLURHASH_ALPHABET),  # "L" = 4x3 components
        "description": alt_description.capitalize() + ".",
        "alt_description": alt_description,
        "urls": {
            "raw": f"{image}?ixid={photo_id}",
            "full": f"{image}?q=85",
            "regular": f"{image}?w=1080",
            "small": f"{image}?w=400",
            "thumb": f"{image}?w=200",
            "small_s3": f"{image}?s3=1",
        },
        "links": {
            "self": f"{base_url}/photos/{photo_id}",
            "html": f"https://unsplash.com/photos/{photo_id}",
            "download": f"https://unsplash.com/photos/{photo_id}/download",
            "download_location": f"{base_url}/photos/{photo_id}/download",
        },
        "likes": _RNG.randint(0, 900),
        "user": build_user(base_url),
    }


def render_svg(name: str) -> bytes:
    """A 400x300 'bowl on a plate' whose background colour is derived from the name."""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300">'
        f'<rect width="400" height="300" fill="{_color_for(name)}"/>'
        '<ellipse cx="200" cy="205" rx="150" ry="40" fill="#f4efe6"/>'
        '<path d="M110 150 A90 70 0 0 0 290 150 Z" fill="#ffffff"/>'
        '<circle cx="170" cy="145" r="16" fill="#e2603f"/>'
        '<circle cx="215" cy="140" r="13" fill="#7cb342"/>'
        "</svg>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 gives keep-alive, which clients built on requests.Session rely on.
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.fake._serve_request(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: per-request stderr lines would drown test output."""

    def send_trickled(self, answer: _Answer, trickle: _Trickle, stopping: threading.Event) -> None:
        """Send `answer` a byte every `trickle.interval` seconds (only its headers, or only
        its body), as a sick upstream or a stalled proxy does; stop() cuts it short."""
        lines = [f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}",
                 f"Content-Type: {answer.content_type}", f"Content-Length: {len(answer.body)}",
                 *(f"{name}: {value}" for name, value in answer.headers.items())]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        slow, fast = (head, answer.body) if trickle.stage == "headers" else (answer.body, head)
        self.close_connection = True
        if trickle.stage == "body":
            self.wfile.write(fast)
        for index in range(len(slow)):
            self.wfile.write(slow[index:index + 1])
            self.wfile.flush()
            if stopping.wait(trickle.interval):
                return
        if trickle.stage == "headers":
            self.wfile.write(fast)

    def send_answer(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            if value is not None:
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    def reset_connection(self) -> None:
        # Linger 0 makes close() send RST: clients see a reset, not a clean EOF.
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.close_connection = True
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    block_on_close = False  # the stdlib would join every thread without a deadline

    def __init__(self, address: tuple[str, int], fake: FakeUnsplash) -> None:
        self.fake = fake
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connection_threads: list[threading.Thread] = []  # every connection's, until stop() joins it
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="fake-unsplash-conn",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
            self._connection_threads = [*(t for t in self._connection_threads if t.is_alive()), thread]
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer (timeouts, stop()) are expected: no traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_connections(self, timeout: float) -> None:
        """Unblock idle keep-alive readers and wait (bounded) for every connection's
        thread, including one that has just answered its last request and is ending."""
        with self._connections_lock:
            open_connections = list(self._connections)
            threads = list(self._connection_threads)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class FakeUnsplash:
    """In-process fake of api.unsplash.com; every public method is thread-safe."""

    def __init__(
        self,
        access_key: str = "test-access-key",
        rate_limit: int = 5000,
        host: str = "127.0.0.1",
    ) -> None:
        self._access_key = access_key
        self._host = host
        self._lock = threading.Lock()
        self._limit = rate_limit
        self._remaining = rate_limit
        self._rate_limit_status = 403
        self._window: float | None = None  # seconds a budget lasts before it is renewed; None: never
        self._window_started: float | None = None  # time.monotonic() of the window's first metered call
        self._over_budget = 0  # calls refused because the budget was spent
        self._fault: _Fault | None = None
        self._trickle: _Trickle | None = None
        self._body_filter: Callable[[bytes], bytes] | None = None
        self._delay = 0.0
        self._photo_override: Json = {}
        self._calls: deque[Json] = deque(maxlen=MAX_RECORDED_CALLS)
        self._photo_requests = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._base_url = ""

    # -- lifecycle -------------------------------------------------------------
    def start(self, port: int = 0) -> Self:
        self._stopping = threading.Event()
        self._server = _Server((self._host, port), self)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # bounds how long stop() waits
            name="fake-unsplash",
            daemon=True,
        )
        # Cached: handler threads build URLs from it even while stop() runs.
        self._base_url = self.url
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        if self._server is None or self._serve_thread is None:
            return
        self._stopping.set()  # wakes handlers sleeping in set_delay()
        self._server.shutdown()
        self._server.server_close()
        self._serve_thread.join(STOP_JOIN_SECONDS)
        self._server.close_connections(STOP_JOIN_SECONDS)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeUnsplash is not running; call start() first")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- knobs -----------------------------------------------------------------
    def fail_with(self, status: int, times: int | None = None, seconds: float | None = None) -> None:
        """Answer API calls with `status` (5xx): `times` calls, or for `seconds`, or
        until cleared."""
        if not 500 <= status <= 599:
            raise ValueError(f"fail_with expects a 5xx status, got {status}")
        self._set_fault(_Fault(status, _checked_times(times), until=_until(seconds)))

    def answer_with(
        self, status: int, body: bytes | str = b"", headers: dict[str, str | None] | None = None,
        content_type: str = "text/plain", times: int | None = None, seconds: float | None = None,
    ) -> None:
        """Answer API calls with exactly this: any status, body and headers (a header
        given as None is left out, e.g. `{"X-Ratelimit-Remaining": None}`), for `times`
        calls, or `seconds`, or until cleared. For odd 403s, 429 with Retry-After and
        the like."""
        raw = body.encode() if isinstance(body, str) else body
        answer = _Answer(status, raw, content_type, dict(headers or {}))
        self._set_fault(_Fault(status, _checked_times(times), answer=answer, until=_until(seconds)))

    def trickle(self, interval: float, stage: str = "body", times: int | None = None) -> None:
        """Send the next answers a byte every `interval` seconds: stage "body" sends the
        status line and headers at once and then trickles the body; "headers" trickles
        from the first byte. For `times` calls, or until cleared."""
        if stage not in ("body", "headers"):
            raise ValueError("stage is 'body' or 'headers'")
        with self._lock:
            self._trickle = _Trickle(interval, stage, _checked_times(times))

    def set_body_filter(self, body_filter: Callable[[bytes], bytes] | None) -> None:
        """Pass the body of every 200 photo answer through `body_filter` (e.g. to put
        bytes that are not UTF-8 in it); None removes it."""
        with self._lock:
            self._body_filter = body_filter

    def drop_connections(self, times: int | None = None, seconds: float | None = None) -> None:
        """Reset API calls' connections instead of answering: `times` calls, or for
        `seconds`, or until cleared."""
        self._set_fault(_Fault(None, _checked_times(times), until=_until(seconds)))

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = max(0.0, seconds)

    def clear_faults(self) -> None:
        with self._lock:
            self._fault = None
            self._trickle = None
            self._body_filter = None
            self._delay = 0.0

    def set_photo_override(self, override: Json | None) -> None:
        with self._lock:
            self._photo_override = copy.deepcopy(override or {})

    def set_rate_limit_status(self, status: int) -> None:
        if status not in (403, 429):
            raise ValueError("Unsplash answers 403; some proxies answer 429")
        with self._lock:
            self._rate_limit_status = status

    def reset_rate_limit(self, limit: int | None = None) -> None:
        with self._lock:
            self._limit = self._limit if limit is None else limit
            self._remaining = self._limit
            self._window_started = None

    def set_rate_limit_window(self, seconds: float | None) -> None:
        """Renew the budget `seconds` after the first call that spends from it, as
        Unsplash renews its hourly budget (without saying when); None: never (the default)."""
        with self._lock:
            self._window = seconds
            self._window_started = None

    # -- observability ---------------------------------------------------------
    def calls(self) -> list[Json]:
        with self._lock:
            return list(self._calls)

    @property
    def requests(self) -> list[Json]:
        return self.calls()

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._photo_requests = 0
            self._over_budget = 0

    @property
    def photo_requests_count(self) -> int:
        with self._lock:
            return self._photo_requests

    @property
    def rate_limit_remaining(self) -> int:
        with self._lock:
            return self._remaining

    @property
    def over_budget_calls(self) -> int:
        """Calls refused because the budget was spent (a client that keeps to the budget
        it was told makes none)."""
        with self._lock:
            return self._over_budget

    # -- request handling (runs on connection threads) -------------------------
    def _serve_request(self, request: _Handler) -> None:
        target = urlsplit(request.path)
        pairs = parse_qs(target.query, keep_blank_values=True)
        query = {key: values[-1] for key, values in pairs.items()}
        self._record(request, target.path, query)
        image = IMAGE_PATH.fullmatch(target.path)
        if image:  # images stand in for the CDN, so API faults and delays skip them
            svg = render_svg(image.group(1))
            request.send_answer(_Answer(200, svg, "image/svg+xml"))
            return
        authorization = request.headers.get("Authorization")
        answer = self._api_answer(target.path, query, authorization)
        if answer is None:
            request.reset_connection()
            return
        trickle = self._take_trickle()
        if trickle is not None:
            request.send_trickled(answer, trickle, self._stopping)
            return
        request.send_answer(answer)

    def _api_answer(
        self, path: str, query: dict[str, str], authorization: str | None
    ) -> _Answer | None:
        """The answer to an API call, or None when the connection must be dropped."""
        delay = self._current_delay()
        # Event.wait rather than sleep: it returns at once when stop() begins.
        if delay and self._stopping.wait(delay):
            return None
        fault = self._take_fault()
        if fault is not None and fault.status is None:
            return None
        if fault is not None and fault.answer is not None:
            answer = copy.deepcopy(fault.answer)
        elif fault is not None and fault.status is not None:
            answer = _error_answer(fault.status, HTTPStatus(fault.status).phrase)
        elif authorization != f"Client-ID {self._access_key}":
            answer = _error_answer(401, INVALID_KEY_MESSAGE)
        else:
            answer = self._route(path, query)
        limit, remaining = self._budget_snapshot()
        answer.headers.setdefault("X-Ratelimit-Limit", str(limit))
        answer.headers.setdefault("X-Ratelimit-Remaining", str(remaining))
        return answer

    def _route(self, path: str, query: dict[str, str]) -> _Answer:
        if path == "/photos/random":
            return self._random_photos(query)
        download = DOWNLOAD_PATH.fullmatch(path)
        if download:
            image_url = f"{self._base_url}/img/{download.group(1)}.svg"
            return self._metered(lambda: _json_answer(200, {"url": image_url}))
        return _error_answer(404, "Couldn't find Photo")

    def _random_photos(self, query: dict[str, str]) -> _Answer:
        try:
            count = _parse_count(query.get("count"))
        except ValueError:
            return _error_answer(
                400, f"count must be between 1 and {MAX_PHOTOS_PER_CALL}"
            )
        if count is None:  # without count the API answers one object, not a list
            return self._metered(lambda: self._filtered(_json_answer(200, self._photo())))
        return self._metered(
            lambda: self._filtered(_json_answer(200, [self._photo() for _ in range(count)]))
        )

    def _metered(self, build_answer: Callable[[], _Answer]) -> _Answer:
        """Spend one unit of budget on build_answer(), or refuse once it is gone."""
        with self._lock:
            now = time.monotonic()
            if self._window is not None and self._window_started is not None \
                    and now >= self._window_started + self._window:
                self._remaining, self._window_started = self._limit, None  # a new window
            if self._window_started is None:
                self._window_started = now
            exhausted = self._remaining <= 0
            self._over_budget += exhausted
            self._remaining = max(0, self._remaining - 1)
            remaining, refusal_status = self._remaining, self._rate_limit_status
        if exhausted:
            answer = _Answer(refusal_status, b"Rate Limit Exceeded", "text/plain")
        else:
            answer = build_answer()
        # Captured under the lock so concurrent calls never report a stale count.
        answer.headers["X-Ratelimit-Remaining"] = str(remaining)
        return answer

    def _filtered(self, answer: _Answer) -> _Answer:
        with self._lock:
            body_filter = self._body_filter
        if body_filter is not None and answer.status == 200:
            answer.body = body_filter(answer.body)
        return answer

    def _photo(self) -> Json:
        with self._lock:
            override = self._photo_override
        photo = build_photo(self._base_url)
        return _deep_merge(photo, override) if override else photo

    def _current_delay(self) -> float:
        with self._lock:
            return self._delay

    def _budget_snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self._limit, self._remaining

    def _set_fault(self, fault: _Fault) -> None:
        with self._lock:
            # A new fault replaces the current one rather than queueing behind it.
            self._fault = fault

    def _take_trickle(self) -> _Trickle | None:
        with self._lock:
            trickle = self._trickle
            if trickle is not None and trickle.times_left is not None:
                trickle.times_left -= 1
                if trickle.times_left <= 0:
                    self._trickle = None
            return trickle

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            fault = self._fault
            if fault is not None and fault.until is not None and time.monotonic() >= fault.until:
                fault = self._fault = None
            if fault is not None and fault.times_left is not None:
                fault.times_left -= 1
                if fault.times_left <= 0:
                    self._fault = None
            return fault

    def _record(self, request: _Handler, path: str, query: dict[str, str]) -> None:
        call = {
            "method": request.command,
            "path": path,
            "query": query,
            "headers": dict(request.headers.items()),
            "time": time.time(),
        }
        with self._lock:
            self._calls.append(call)
            self._photo_requests += path == "/photos/random"


def _until(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _checked_times(times: int | None) -> int | None:
    if times is not None and times < 1:
        raise ValueError("times must be None (until cleared) or >= 1")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake Unsplash API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--access-key", default="test-access-key")
    parser.add_argument("--rate-limit", type=int, default=5000)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    fake = FakeUnsplash(args.access_key, args.rate_limit, args.host).start(args.port)
    fake.set_delay(args.delay)
    print(f"fake-unsplash listening on {fake.url}", flush=True)
    # Short waits keep the main thread responsive to signals.
    while not stop_requested.wait(0.2):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
