"""Faults from the real world, part 3: an upstream that is slow, flaky or unusual.

Real `python server.py` processes against the fake Unsplash over loopback, which learns
each misbehaviour here: answers trickled a byte at a time (headers or body), runs of 5xx
while many calls are in flight, 403s worded and headed in other ways, `Retry-After` in
seconds or as an HTTP date, a refused key.
"""

from __future__ import annotations

import email.utils
import time
from datetime import datetime

import pytest

from tests.helpers import poll, scrape, value

SLOW = 0.4  # seconds between two trickled bytes: slower than any answer, faster than any read timeout


def job_doc(server, job_id):
    return server.get(f"/jobs/{job_id}").json()


def upstream(server):
    return server.get("/readyz").json()["checks"]["upstream"]


# -- a hard deadline on the whole call ---------------------------------------------------

@pytest.mark.parametrize("stage,interval", [("body", SLOW), ("headers", SLOW), ("body", 1.5)])
def test_an_answer_trickled_a_byte_at_a_time_is_cut_at_the_deadline(server_process, fake_unsplash, stage, interval):
    fake_unsplash.trickle(interval, stage=stage)
    server = server_process("--unsplash-timeout", "2", "--unsplash-batch", "1")
    started = time.monotonic()
    job_id = server.post("/jobs").json()["id"]
    failed_try = poll(lambda: (job_doc(server, job_id)["error"] or {}).get("message"), timeout=15)
    assert failed_try == "Unsplash did not answer within 2 s"
    assert time.monotonic() - started < 12  # cut at 2 s, not after the whole trickle (minutes)
    assert upstream(server)["state"] == "failing"
    fake_unsplash.clear_faults()
    poll(lambda: job_doc(server, job_id)["status"] == "resolved", timeout=15)


@pytest.mark.parametrize("fault", ["trickle_body", "trickle_headers", "silent"])
def test_sigterm_ends_within_the_grace_whatever_the_upstream_does(server_process, fake_unsplash, fault):
    if fault == "silent":
        fake_unsplash.set_delay(120)
    else:
        fake_unsplash.trickle(SLOW, stage=fault.removeprefix("trickle_"))
    server = server_process("--unsplash-timeout", "60", "--shutdown-grace", "1", "--unsplash-batch", "1")
    job_id = server.post("/jobs").json()["id"]
    poll(lambda: fake_unsplash.photo_requests_count >= 1)
    time.sleep(SLOW * 3)  # the answer is under way (a few bytes sent), as a stuck call would be
    started = time.monotonic()
    assert server.terminate(timeout=30) == 0
    took = time.monotonic() - started
    assert took < 1 + 4, f"stopping took {took:.1f} s with --shutdown-grace 1"  # grace + a small margin
    fake_unsplash.clear_faults()
    server = server_process("--unsplash-batch", "1")  # the cut call's job was kept, and runs now
    poll(lambda: job_doc(server, job_id)["status"] == "resolved", timeout=15)


# -- backoff per round of calls, not per parallel call -----------------------------------

@pytest.mark.parametrize("outage", ["503 for 4 s", "8 x 502", "resets for 3 s"])
def test_parallel_failures_escalate_the_backoff_once_per_round(server_process, fake_unsplash, outage):
    server = server_process("--unsplash-batch", "1", "--workers", "8", "--delay-min", "0", "--delay-max", "0.2",
                            "--delay-step", "0.1")
    # The first call ever goes alone, to learn the request budget (calo.budget); then 8 at once.
    first = server.post("/jobs").json()["id"]
    poll(lambda: job_doc(server, first)["status"] == "resolved", timeout=10)
    fake_unsplash.set_delay(0.5)  # the calls of one round overlap
    if outage == "503 for 4 s":
        fake_unsplash.fail_with(503, seconds=4)
    elif outage == "8 x 502":
        fake_unsplash.fail_with(502, times=8)
    else:
        fake_unsplash.drop_connections(seconds=3)
    fake_unsplash.clear_calls()
    started = time.monotonic()
    ids = [server.post("/jobs").json()["id"] for _ in range(8)]
    poll(lambda: fake_unsplash.photo_requests_count >= 8, timeout=10)
    # With one escalation per round the outage costs its own length plus a few seconds of
    # backoff; escalating once per parallel call (8 times) meant waiting 30 to 60 s.
    poll(lambda: all(job_doc(server, i)["status"] == "resolved" for i in ids), timeout=25)
    assert time.monotonic() - started < 25
    assert all(job_doc(server, i)["status"] == "resolved" for i in ids)


# -- rate limits: status and headers first, the body only a hint -------------------------

RATE_LIMITED_ANSWERS = [
    (403, {"X-Ratelimit-Remaining": "0"}, "Slow down! You have used up this hour's allowance."),
    (403, {"X-Ratelimit-Remaining": "0"}, ""),
    (403, {"X-Ratelimit-Remaining": None}, "Rate Limit Exceeded"),  # no header: the wording is the hint
    (403, {"X-Ratelimit-Remaining": None, "Retry-After": "3600"}, "<html><h1>Forbidden</h1></html>"),
    (429, {"X-Ratelimit-Remaining": "37"}, '{"errors": ["Too many requests"]}'),
]


@pytest.mark.parametrize("status,headers,body", RATE_LIMITED_ANSWERS)
def test_a_rate_limit_is_recognised_by_status_and_headers_and_never_fails_a_job(
        server_process, fake_unsplash, status, headers, body):
    fake_unsplash.answer_with(status, body, headers)
    server = server_process("--unsplash-batch", "1", "--max-attempts", "1")
    ids = [server.post("/jobs").json()["id"] for _ in range(3)]
    poll(lambda: all((job_doc(server, i)["error"] or {}).get("code") == "rate_limited" for i in ids), timeout=10)
    for job in (job_doc(server, i) for i in ids):
        assert job["status"] == "pending" and job["attempts"] == 0, job  # waiting is no try
    assert upstream(server)["state"] == "rate_limited"
    assert value(scrape(server), "calo_upstream_state", state="rate_limited") == 1


REFUSED_ANSWERS = [
    (403, {"X-Ratelimit-Remaining": "4999"}, "Forbidden: this application is suspended", "upstream_rejected"),
    (403, {"X-Ratelimit-Remaining": "4999"}, "Rate Limit Exceeded", "upstream_rejected"),  # headers win
    (403, {"X-Ratelimit-Remaining": None}, '{"errors": ["Forbidden"]}', "upstream_rejected"),
    (401, {}, '{"errors": ["OAuth error: The access token is invalid"]}', "unsplash_access_key_rejected"),
]


@pytest.mark.parametrize("status,headers,body,code", REFUSED_ANSWERS)
def test_a_refused_key_fails_jobs_and_shows_upstream_rejected_until_a_call_works(
        server_process, fake_unsplash, status, headers, body, code):
    fake_unsplash.answer_with(status, body, headers)
    server = server_process("--unsplash-batch", "1")
    job_id = server.post("/jobs").json()["id"]
    poll(lambda: job_doc(server, job_id)["status"] == "failed", timeout=10)
    assert job_doc(server, job_id)["error"]["code"] == code
    state = upstream(server)
    assert state["state"] == "rejected" and state["since"].endswith("Z") and state["reason"], state
    assert value(scrape(server), "calo_upstream_state", state="rejected") == 1
    assert value(scrape(server), "calo_upstream_state", state="ok") == 0
    assert server.get("/readyz").status_code == 200  # the key is the operator's to mend, not a restart's
    fake_unsplash.clear_faults()
    next_id = server.post("/jobs").json()["id"]
    poll(lambda: job_doc(server, next_id)["status"] == "resolved", timeout=10)
    assert upstream(server)["state"] == "ok"


# -- Retry-After -------------------------------------------------------------------------

def _http_date(seconds_from_now):
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize("status,retry_after,at_least", [
    (429, lambda: "2", 1.8), (429, lambda: _http_date(3), 1.2), (403, lambda: "1", 0.9), (503, lambda: "3", 2.8),
])
def test_retry_after_is_honoured_in_seconds_or_as_an_http_date(server_process, fake_unsplash, status, retry_after,
                                                              at_least):
    server = server_process("--unsplash-batch", "1", "--rate-limit-pause", "3600")
    headers = {"Retry-After": retry_after()}  # an HTTP date counts from now, once the server is up
    if status == 403:
        headers["X-Ratelimit-Remaining"] = "0"
    fake_unsplash.answer_with(status, "try later", headers, times=1)
    job_id = server.post("/jobs").json()["id"]
    poll(lambda: job_doc(server, job_id)["status"] == "resolved", timeout=15)  # not an hour later
    first, second = fake_unsplash.calls()[:2]
    waited = second["time"] - first["time"]
    assert waited >= at_least, f"the second call came {waited:.2f} s after Retry-After: {headers['Retry-After']}"
    if status != 503:
        assert job_doc(server, job_id)["attempts"] == 1  # the rate-limited call was no try


@pytest.mark.parametrize("garbage", ["soon", "1\u00b2", "-5", "Wed, 99 Foo 2026 25:61:00 GMT"])  # "²".isdigit()
def test_a_retry_after_that_cannot_be_read_falls_back_to_the_rate_limit_pause(server_process, fake_unsplash,
                                                                              garbage):
    fake_unsplash.answer_with(429, "", {"Retry-After": garbage})
    server = server_process("--unsplash-batch", "1", "--rate-limit-pause", "3600")
    server.post("/jobs")
    until = poll(lambda: upstream(server).get("until"), timeout=10)
    left = datetime.fromisoformat(until).timestamp() - time.time()
    assert 3000 < left <= 3601, until


def test_rate_limited_calls_never_use_up_a_jobs_tries(server_process, fake_unsplash):
    fake_unsplash.answer_with(429, "", {"Retry-After": "0"}, times=4)
    server = server_process("--unsplash-batch", "1", "--max-attempts", "2")
    job_id = server.post("/jobs").json()["id"]
    poll(lambda: job_doc(server, job_id)["status"] != "pending", timeout=15)
    done = job_doc(server, job_id)
    assert done["status"] == "resolved" and done["attempts"] == 1, done
    assert fake_unsplash.photo_requests_count >= 5


def test_an_answer_too_big_to_be_photos_is_refused_and_retried(server_process, fake_unsplash):
    fake_unsplash.set_photo_override({"description": "x" * (5 << 20)})  # a field we do not even keep
    server = server_process("--unsplash-batch", "1")
    job_id = server.post("/jobs").json()["id"]
    message = poll(lambda: (job_doc(server, job_id)["error"] or {}).get("message"), timeout=15)
    assert message == "Unsplash sent an answer over 4 MiB" and job_doc(server, job_id)["status"] == "pending"
    fake_unsplash.set_photo_override(None)
    poll(lambda: job_doc(server, job_id)["status"] == "resolved", timeout=15)
