"""Faults from the real world, part 2: the wall clock steps while jobs wait.

A real `python server.py` runs under Debian's libfaketime (`LD_PRELOAD`), whose wall
clock the test steps while it runs by rewriting `FAKETIME_TIMESTAMP_FILE`
(`FAKETIME_NO_CACHE=1`: read on every call); its monotonic clock is left alone
(`DONT_FAKE_MONOTONIC=1`), as NTP leaves it. Times in job documents are the server's
wall clock; durations here are the test's monotonic clock.
"""

from __future__ import annotations

import email.utils
import os
import socket
import tempfile
import time

import pytest

from calo.clock import parse_iso_utc
from tests.helpers import poll

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
HOUR = 3600


class SteppedClock:
    """The wall clock of the server processes started with `environ`: `step(seconds)`
    sets it that far from the real one."""

    def __init__(self, directory):
        if not os.path.exists(LIBFAKETIME):
            raise FileNotFoundError(f"{LIBFAKETIME} is missing: `bash scripts/test.sh` installs Debian's faketime")
        self.path = os.path.join(directory, "faketime")
        self.step(0)

    @property
    def environ(self) -> dict[str, str]:
        return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": self.path,
                "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1"}

    def step(self, seconds: int) -> None:
        temporary = self.path + ".new"
        with open(temporary, "w") as file:
            file.write(f"{seconds:+d}\n")
        os.replace(temporary, self.path)  # never an empty file for the server to read


@pytest.fixture
def clock(tmp_path):
    return SteppedClock(str(tmp_path))


def job_doc(server, job_id):
    return server.get(f"/jobs/{job_id}").json()


def step_noticed(server, direction, count=1):
    return sum(f"wall clock stepped {direction}" in line for line in server.lines) >= count


def clock_moved(server, seconds):
    """Has the server's wall clock (its `Date` header) moved `seconds` from the real one?"""
    shown = email.utils.parsedate_to_datetime(server.get("/healthz").headers["Date"]).timestamp()
    return abs(shown - time.time() - seconds) < 3


def holds_for(predicate, seconds):
    """True if `predicate` stays true for `seconds` (the test's monotonic clock): the
    one bounded wait a test needs to show that something does NOT happen too early."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.1)
    return True


def test_a_step_back_holds_jobs_until_their_due_time_and_the_correction_releases_them(server_process, clock):
    server = server_process("--delay-min", "3", "--delay-max", "3", env=clock.environ)
    ids = [server.post("/jobs").json()["id"] for _ in range(3)]
    clock.step(-HOUR)  # NTP on a VM that woke up: an hour back
    poll(lambda: clock_moved(server, -HOUR), timeout=5)
    # Due at T by the wall clock: never run an hour early because a timer was armed before the step.
    assert holds_for(lambda: all(job_doc(server, i)["status"] == "pending" for i in ids), 4.5)
    newcomer = server.post("/jobs").json()["id"]  # new jobs keep their own delay meanwhile
    poll(lambda: job_doc(server, newcomer)["status"] == "resolved", timeout=10)
    clock.step(0)  # the clock is corrected: the held jobs are due (overdue) and run at once
    corrected = time.monotonic()
    poll(lambda: all(job_doc(server, i)["status"] == "resolved" for i in ids), timeout=10)
    assert time.monotonic() - corrected < 6  # a step is acted on within about a second
    for job in (job_doc(server, i) for i in ids):
        assert parse_iso_utc(job["resolved_at"]) >= parse_iso_utc(job["due_at"]), job
    assert server.get("/readyz").status_code == 200


@pytest.mark.parametrize("step", [15 * 60, 3 * 24 * HOUR])
def test_a_step_forward_runs_newly_due_jobs_at_once_and_never_looks_stuck(server_process, fake_unsplash, clock,
                                                                          step):
    server = server_process("--delay-min", "120", "--delay-max", "120", "--stuck-after", "5", env=clock.environ)
    ids = [server.post("/jobs").json()["id"] for _ in range(2)]
    fake_unsplash.set_delay(3)  # the call takes a while: meanwhile the jobs are overdue by the step
    clock.step(step)
    poll(lambda: fake_unsplash.photo_requests_count >= 1, timeout=10)  # not 120 s later
    ready = server.get("/readyz")
    assert ready.status_code == 200, ready.json()["checks"]["scheduler"]  # overdue by the step, not stuck
    poll(lambda: all(job_doc(server, i)["status"] == "resolved" for i in ids), timeout=15)
    assert step_noticed(server, "forward")


def test_a_step_forward_does_not_spend_the_retry_window(server_process, fake_unsplash, clock):
    server = server_process("--retry-window", "600", env=clock.environ)
    fake_unsplash.set_delay(3)  # the first call is under way when the clock steps ...
    fake_unsplash.fail_with(503, times=1)  # ... and then fails
    job_id = server.post("/jobs").json()["id"]
    poll(lambda: fake_unsplash.photo_requests_count >= 1, timeout=10)
    clock.step(15 * 60)  # the job is now 15 minutes late by the wall clock, but has waited 3 s
    fake_unsplash.set_delay(0)
    poll(lambda: job_doc(server, job_id)["status"] != "pending", timeout=15)
    done = job_doc(server, job_id)
    assert done["status"] == "resolved" and done["attempts"] == 2, done  # one 503, then a photo


def test_a_rate_limit_pause_survives_a_step_forward(server_process, fake_unsplash, clock):
    fake_unsplash.reset_rate_limit(0)
    server = server_process("--rate-limit-pause", "60", env=clock.environ)
    server.post("/jobs")
    poll(lambda: server.get("/readyz").json()["checks"]["upstream"]["state"] == "rate_limited", timeout=10)
    calls = fake_unsplash.photo_requests_count
    clock.step(2 * HOUR)
    poll(lambda: clock_moved(server, 2 * HOUR), timeout=5)
    server.post("/jobs")  # a new due job must not reopen the upstream early either
    assert holds_for(lambda: fake_unsplash.photo_requests_count == calls, 2.5)
    assert server.get("/readyz").json()["checks"]["upstream"]["state"] == "rate_limited"


def test_a_step_back_while_backing_off_does_not_hold_the_upstream_shut(server_process, fake_unsplash, clock):
    fake_unsplash.fail_with(503)
    server = server_process(env=clock.environ)
    job_id = server.post("/jobs").json()["id"]
    poll(lambda: fake_unsplash.photo_requests_count >= 2, timeout=10)  # backing off between probes
    clock.step(-HOUR)
    poll(lambda: clock_moved(server, -HOUR), timeout=5)
    fake_unsplash.clear_faults()
    poll(lambda: job_doc(server, job_id)["status"] == "resolved", timeout=15)  # not an hour later


def test_the_systemd_watchdog_keeps_pinging_across_a_step_back(server_process, clock):
    """Tornado's PeriodicCallback keeps its next deadline on the wall clock: after a step
    back of an hour it fell silent for that hour, and systemd would have killed a healthy
    server for a missed watchdog."""
    with tempfile.TemporaryDirectory(prefix="calo-notify-") as directory, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(os.path.join(directory, "notify"))
        manager.settimeout(10)
        env = {**clock.environ, "NOTIFY_SOCKET": os.path.join(directory, "notify"), "WATCHDOG_USEC": "400000"}
        server = server_process(env=env)
        while b"WATCHDOG=1" not in manager.recv(4096):
            pass
        clock.step(-HOUR)
        poll(lambda: clock_moved(server, -HOUR), timeout=5)
        manager.settimeout(0)
        while True:  # the pings sent before the step
            try:
                manager.recv(4096)
            except BlockingIOError:
                break
        pings, deadline = 0, time.monotonic() + 2  # a ping every 0.2 s
        while time.monotonic() < deadline:
            manager.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                pings += b"WATCHDOG=1" in manager.recv(4096)
            except TimeoutError:
                break
        assert pings >= 4, f"{pings} watchdog pings in the 2 s after a step back"
