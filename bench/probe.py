"""The IOLoop stall probe: measures, from outside, how long the server's IOLoop stalls.

Owns one number per window: every `--interval` seconds it sends `GET /jobs/<nonexistent>`
(a 404 that costs one indexed lookup) on a keep-alive connection and times the answer.
An idle IOLoop answers in about a millisecond; an answer that takes longer waited behind
whatever held the loop (or the GIL). The worst stall is the worst answer time minus the
median one. With `--post-every S` it also sends one `POST /jobs` every S seconds on a
second connection (not timed), so that the server keeps having changes to export
(`posts` counts the 201s).

Prints one JSON line at the end: {"pings", "errors", "median_ms", "p99_ms", "max_ms",
"worst_stall_ms", "over_50ms", "posts"}.

    python -m bench.probe --url http://127.0.0.1:PORT --duration 20 --post-every 1

Must never: send more than one request per interval, or run past `--duration`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from urllib.parse import urlsplit

MISSING_JOB = "/jobs/bench-probe-no-such-job"
STALL_MS = 50


def _request(conn: http.client.HTTPConnection, method: str, path: str) -> int:
    conn.request(method, path, body=b"" if method == "POST" else None)
    response = conn.getresponse()
    response.read()
    return response.status


class Prober:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self._host, self._port = parts.hostname, parts.port
        self._pinger = self._connect()
        self._poster = self._connect()
        self.times_ms: list[float] = []
        self.errors = self.posts = 0

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._host, self._port, timeout=30)

    def ping(self) -> None:
        started = time.perf_counter()
        try:
            _request(self._pinger, "GET", MISSING_JOB)
        except (OSError, http.client.HTTPException):
            self.errors += 1
            self._pinger.close()
            return
        self.times_ms.append((time.perf_counter() - started) * 1000)

    def post(self) -> None:
        try:
            self.posts += _request(self._poster, "POST", "/jobs") == 201
        except (OSError, http.client.HTTPException):
            self.errors += 1
            self._poster.close()

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.times_ms) or [0.0]
        median = ordered[len(ordered) // 2]
        return {
            "pings": len(self.times_ms), "errors": self.errors, "posts": self.posts,
            "median_ms": round(median, 3), "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
            "max_ms": round(ordered[-1], 3), "worst_stall_ms": round(ordered[-1] - median, 3),
            "over_50ms": sum(1 for t in ordered if t - median > STALL_MS),
        }


def run(url: str, duration: float, interval: float, post_every: float | None) -> dict[str, float]:
    prober = Prober(url)
    start = time.monotonic()
    next_ping, next_post = start, start
    for _ in range(int(duration / interval) + 1):  # bounded in count as well as in time
        if time.monotonic() - start >= duration:
            break
        if post_every and time.monotonic() >= next_post:
            prober.post()
            next_post += post_every
        prober.ping()
        next_ping = max(next_ping + interval, time.monotonic())  # late: no catch-up burst
        time.sleep(max(0.0, next_ping - time.monotonic()))
    return prober.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure a server's IOLoop stalls from outside.")
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between pings")
    parser.add_argument("--post-every", type=float, default=None, help="also POST /jobs every S seconds")
    args = parser.parse_args(argv)
    print("probe started", flush=True)
    print("PROBE_JSON " + json.dumps(run(args.url, args.duration, args.interval, args.post_every)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
