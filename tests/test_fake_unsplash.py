"""Fast checks that the fake Unsplash API behaves like the documented real one.

Owns: tests of tests/fake_unsplash.py only. Must never reach the real network or
leave server threads running after a test.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fake_unsplash import FakeUnsplash
from tests.helpers import poll

AUTH = {"Authorization": "Client-ID test-access-key"}
TIMEOUT = 2.0


@pytest.fixture
def fake() -> Iterator[FakeUnsplash]:
    with FakeUnsplash(rate_limit=50) as server:
        yield server
    leftover = [t for t in threading.enumerate() if t.name.startswith("fake-unsplash")]
    assert leftover == []


def get(fake: FakeUnsplash, path: str, headers: dict[str, str] | None = AUTH, timeout: float = TIMEOUT,
        **kwargs: Any) -> requests.Response:
    return requests.get(fake.url + path, headers=headers, timeout=timeout, **kwargs)


def test_random_photo_has_documented_shape(fake: FakeUnsplash) -> None:
    response = get(fake, "/photos/random", params={"query": "food"})

    assert response.status_code == 200
    photo = response.json()
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}", photo["id"])
    assert re.fullmatch(r"#[0-9a-f]{6}", photo["color"])
    assert isinstance(photo["width"], int) and isinstance(photo["height"], int)
    assert photo["urls"]["regular"].startswith(f"{fake.url}/img/{photo['id']}.svg")
    assert photo["links"]["html"] == f"https://unsplash.com/photos/{photo['id']}"
    username = photo["user"]["username"]
    assert photo["user"]["links"]["html"] == f"https://unsplash.com/@{username}"
    assert response.headers["X-Ratelimit-Limit"] == "50"
    assert response.headers["X-Ratelimit-Remaining"] == "49"


def test_count_returns_a_list_even_for_one(fake: FakeUnsplash) -> None:
    one = get(fake, "/photos/random", params={"count": 1}).json()
    thirty = get(fake, "/photos/random", params={"count": 30}).json()

    assert isinstance(one, list) and len(one) == 1
    assert len({photo["id"] for photo in thirty}) == 30
    assert fake.rate_limit_remaining == 48  # one unit per call, whatever the count


@pytest.mark.parametrize("count", ["0", "31", "abc", ""])
def test_bad_count_is_400_and_free(fake: FakeUnsplash, count: str) -> None:
    response = get(fake, "/photos/random", params={"count": count})

    assert response.status_code == 400
    assert response.json() == {"errors": ["count must be between 1 and 30"]}
    assert fake.rate_limit_remaining == 50


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Client-ID wrong"}])
def test_missing_or_wrong_key_is_401(fake: FakeUnsplash, headers: dict) -> None:
    response = get(fake, "/photos/random", headers=headers)

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"errors": ["OAuth error: The access token is invalid"]}
    assert "X-Ratelimit-Remaining" in response.headers


def test_spent_budget_is_403_then_429_knob_then_reset(fake: FakeUnsplash) -> None:
    fake.reset_rate_limit(limit=1)
    assert get(fake, "/photos/random").status_code == 200

    refused = get(fake, "/photos/random")
    assert refused.status_code == 403
    assert refused.text == "Rate Limit Exceeded"
    assert refused.headers["Content-Type"] == "text/plain"
    assert refused.headers["X-Ratelimit-Remaining"] == "0"

    fake.set_rate_limit_status(429)
    assert get(fake, "/photos/random").status_code == 429
    fake.reset_rate_limit()
    assert get(fake, "/photos/random").status_code == 200


def test_a_budget_window_renews_the_budget_and_calls_past_it_are_counted(fake: FakeUnsplash) -> None:
    fake.reset_rate_limit(limit=1)
    fake.set_rate_limit_window(0.3)  # from the first call
    assert get(fake, "/photos/random").status_code == 200
    assert get(fake, "/photos/random").status_code == 403
    assert fake.over_budget_calls == 1
    # Renewed 0.3 s after the first call: the first call that gets through spends it again.
    poll(lambda: get(fake, "/photos/random").status_code == 200, timeout=5, interval=0.1)
    assert fake.rate_limit_remaining == 0


def test_fail_with_counts_down_then_recovers(fake: FakeUnsplash) -> None:
    fake.fail_with(503, times=2)
    statuses = [get(fake, "/photos/random").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    fake.fail_with(500)
    assert get(fake, "/photos/random").json() == {"errors": ["Internal Server Error"]}
    fake.clear_faults()
    assert get(fake, "/photos/random").status_code == 200


def test_dropped_connection_is_a_connection_error(fake: FakeUnsplash) -> None:
    fake.drop_connections(times=1)
    with requests.Session() as session, pytest.raises(requests.ConnectionError):
        session.get(fake.url + "/photos/random", headers=AUTH, timeout=TIMEOUT)

    assert get(fake, "/photos/random").status_code == 200


def test_delay_causes_client_timeout_and_stop_stays_quick(fake: FakeUnsplash) -> None:
    fake.set_delay(5.0)
    with pytest.raises(requests.Timeout):
        get(fake, "/photos/random", timeout=0.2)

    in_flight = threading.Thread(target=_get_ignoring_errors, args=(fake,))
    in_flight.start()
    poll(lambda: len(fake.calls()) == 2, timeout=TIMEOUT)  # it reached the server's delay
    started = time.monotonic()
    fake.stop()  # the fixture's second stop() is a no-op
    in_flight.join(TIMEOUT)
    assert time.monotonic() - started < 5.0  # it did not wait out the 5 s delay
    assert not in_flight.is_alive()


def _get_ignoring_errors(fake: FakeUnsplash) -> None:
    try:
        get(fake, "/photos/random")
    except requests.RequestException:
        pass  # the server going away mid-request is the point of the test


def test_photo_override_deep_merges(fake: FakeUnsplash) -> None:
    fake.set_photo_override(
        {
            "user": {"name": "<img src=x onerror=alert(1)>"},
            "urls": {"regular": "javascript:alert(1)"},
        }
    )
    photo = get(fake, "/photos/random").json()

    assert photo["user"]["name"] == "<img src=x onerror=alert(1)>"
    assert photo["user"]["username"]  # siblings of overridden keys survive
    assert photo["urls"]["regular"] == "javascript:alert(1)"
    assert photo["urls"]["thumb"].startswith(fake.url)


def test_image_urls_serve_svg(fake: FakeUnsplash) -> None:
    photo = get(fake, "/photos/random").json()
    image = requests.get(photo["urls"]["regular"], timeout=TIMEOUT)

    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/svg+xml"
    assert image.text.startswith("<svg") and photo["color"] in image.text


def test_unknown_route_is_404(fake: FakeUnsplash) -> None:
    response = get(fake, "/photos/nope/and/more")

    assert response.status_code == 404
    assert response.json() == {"errors": ["Couldn't find Photo"]}


def test_calls_are_recorded(fake: FakeUnsplash) -> None:
    get(fake, "/photos/random", params={"query": "food", "count": 2})
    get(fake, "/img/abc.svg")

    first = fake.calls()[0]
    assert (first["method"], first["path"]) == ("GET", "/photos/random")
    assert first["query"] == {"query": "food", "count": "2"}
    assert first["headers"]["Authorization"] == AUTH["Authorization"]
    assert fake.photo_requests_count == 1


def test_many_concurrent_clients_are_served(fake: FakeUnsplash) -> None:
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(
            pool.map(lambda _: get(fake, "/photos/random").status_code, range(50))
        )

    assert statuses == [200] * 50
    assert fake.rate_limit_remaining == 0


def test_cli_announces_url_and_exits_cleanly_on_sigterm() -> None:
    script = Path(__file__).with_name("fake_unsplash.py")
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--access-key", "K"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        match = re.fullmatch(
            r"fake-unsplash listening on (http://127\.0\.0\.1:\d+)\n", line
        )
        assert match, line
        headers = {"Authorization": "Client-ID K"}
        response = requests.get(
            match.group(1) + "/photos/random", headers=headers, timeout=TIMEOUT
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
        if process.stdout:
            process.stdout.close()
