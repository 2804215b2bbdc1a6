"""Several `python server.py` processes on one PostgreSQL: the guarantees of issue 14.

Every test runs real server processes against the throwaway cluster (tests/postgres.py),
each with a data dir of its own, and checks what the database itself recorded."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time

import psycopg
import requests
import websockets
from websockets.sync.client import connect as ws_connect

from tests.helpers import poll

RESOLUTIONS = ("job.resolved", "job.failed")


def start_servers(server_process, tmp_path, database_url, count, *flags):
    return [
        server_process("--database-url", database_url, *flags, env={"CALO_DATA_DIR": str(tmp_path / f"data{n}")})
        for n in range(count)
    ]


def resolution_counts(database_url, ids):
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT job_id, count(*) FROM events WHERE job_id = ANY(%s) AND type = ANY(%s) GROUP BY job_id",
            (list(ids), list(RESOLUTIONS)),
        ).fetchall()
    return dict(rows)


def pending_left(database_url):
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE status = 'pending'").fetchone()
    assert row is not None
    return row[0]


class EventStream:
    """Everything one server's /ws sends, from `since=0`, read on a thread of its own."""

    def __init__(self, server_url):
        self.events = []
        self._url = server_url.replace("http://", "ws://") + "/ws?since=0"
        self._socket = None
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._open.wait(10), "the WebSocket did not open"

    def _read(self):
        with ws_connect(self._url, max_size=None, open_timeout=10, proxy=None) as socket:
            self._socket = socket
            self._open.set()
            try:
                for text in socket:
                    message = json.loads(text)
                    for event in message if isinstance(message, list) else [message]:
                        if event["type"].startswith("job."):
                            self.events.append((event["seq"], event["type"], event["job"]["id"]))
            except websockets.exceptions.ConnectionClosed:
                pass

    def close(self):
        assert self._socket is not None
        self._socket.close()
        self._thread.join(5)


def test_servers_share_jobs_keys_and_the_live_feed(server_process, tmp_path, database_url):
    first, second = start_servers(server_process, tmp_path, database_url, 2)
    stream = EventStream(second.url)
    job = first.post("/jobs").json()
    assert second.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    # The same Idempotency-Key sent to both at once creates one job.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda server: server.post("/jobs", headers={"Idempotency-Key": "k-1"}),
                                [first, second] * 4))
    assert sorted(answer.status_code for answer in answers) == [200] * 7 + [201]
    assert len({answer.json()["id"] for answer in answers}) == 1
    # The second server's socket sees what the first one committed, in order.
    poll(lambda: pending_left(database_url) == 0, 15)
    poll(lambda: len(stream.events) >= 4, 10)
    stream.close()
    assert [kind for _, kind, job_id in stream.events if job_id == job["id"]] == ["job.created", "job.resolved"]
    seqs = [seq for seq, _, _ in stream.events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert second.get("/stats").json()["counts"]["resolved"] == 2


def test_a_paused_server_cannot_settle_jobs_taken_over_from_it(server_process, tmp_path, database_url):
    lease = ("--instance-lease", "1")
    paused, other = start_servers(server_process, tmp_path, database_url, 2, *lease, "--delay-min", "2",
                                  "--delay-max", "2")
    ids = [paused.post("/jobs").json()["id"] for _ in range(5)]
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        poll(lambda: pending_left(database_url) == 0, 20)  # the other server took them over
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    # Woken past its lease, the paused server fires its timers: its outcomes are refused.
    poll(lambda: paused.get("/readyz").status_code == 200, 10)
    time.sleep(1.5)  # its timers were due long ago; give its outcomes time to (fail to) land
    assert resolution_counts(database_url, ids) == {job_id: 1 for job_id in ids}
    assert all(other.get(f"/jobs/{job_id}").json()["status"] == "resolved" for job_id in ids)


def test_the_jobs_of_a_killed_server_are_taken_over_within_the_lease(server_process, tmp_path, database_url):
    killed, survivor = start_servers(server_process, tmp_path, database_url, 2, "--instance-lease", "2",
                                     "--delay-min", "4", "--delay-max", "4")
    ids = [killed.post("/jobs").json()["id"] for _ in range(20)]
    killed.kill()  # before any is due
    started = time.monotonic()
    poll(lambda: pending_left(database_url) == 0, 20)
    # Due within 4 s; taken over after the lease (2 s) plus at most one heartbeat (0.4 s).
    assert time.monotonic() - started < 10
    assert resolution_counts(database_url, ids) == {job_id: 1 for job_id in ids}
    assert any("took over 20 pending jobs" in line for line in survivor.lines)


def test_upkeep_runs_on_one_server_at_a_time(server_process, tmp_path, database_url):
    servers = start_servers(server_process, tmp_path, database_url, 2, "--instance-lease", "1")
    leaders = poll(lambda: [s for s in servers if s.get("/readyz").json()["checks"]["database"]["runs_upkeep"]])
    assert len(leaders) == 1
    leader = leaders[0]
    follower = servers[1 - servers.index(leader)]
    follower.post("/jobs")
    poll(lambda: os.path.exists(os.path.join(str(tmp_path / f"data{servers.index(leader)}"), "jobs.json")))
    leader.kill()  # its session ends, and with it the advisory lock
    poll(lambda: follower.get("/readyz").json()["checks"]["database"]["runs_upkeep"], 10)
    poll(lambda: os.path.exists(os.path.join(str(tmp_path / f"data{servers.index(follower)}"), "jobs.json")), 5)


def test_three_servers_2000_creates_one_killed_every_job_resolved_once(server_process, tmp_path, database_url):
    servers = start_servers(server_process, tmp_path, database_url, 3, "--instance-lease", "2",
                            "--delay-min", "0.5", "--delay-max", "2", "--delay-step", "0.5")
    victim, survivors = servers[0], servers[1:]
    streams = [EventStream(server.url) for server in survivors]
    acknowledged: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def create(n: int) -> None:
        if n == 1000:
            victim.kill()
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            answer = session.post(servers[n % 3].url + "/jobs", timeout=20)
        except requests.RequestException:
            return  # the killed server's connections: not acknowledged
        if answer.status_code == 201:
            with lock:
                acknowledged.append(answer.json()["id"])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(create, range(2100)))
    assert len(acknowledged) >= 1300  # about two thirds of the creates after the kill
    poll(lambda: pending_left(database_url) == 0, 60)
    assert resolution_counts(database_url, acknowledged) == {job_id: 1 for job_id in acknowledged}
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT last FROM event_seq").fetchone()
    assert row is not None
    latest = row[0]
    poll(lambda: all(stream.events and stream.events[-1][0] == latest for stream in streams), 20)
    for stream in streams:
        stream.close()
    first, second = (stream.events for stream in streams)
    assert first == second
    assert [seq for seq, _, _ in first] == list(range(1, latest + 1))


def test_the_pending_cap_is_shared(server_process, tmp_path, database_url):
    first, second = start_servers(server_process, tmp_path, database_url, 2, "--max-pending", "3",
                                  "--delay-min", "60", "--delay-max", "60")
    assert [first.post("/jobs").status_code for _ in range(2)] == [201, 201]
    assert second.post("/jobs").status_code == 201
    refused = second.post("/jobs")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_pending_jobs"


def test_the_rate_limit_pause_is_shared(server_process, tmp_path, database_url, fake_unsplash):
    first, second = start_servers(server_process, tmp_path, database_url, 2, "--instance-lease", "1")
    fake_unsplash.reset_rate_limit(0)  # the key's budget is spent
    first.post("/jobs")
    # The first server finds out; the second learns it at its next heartbeat (0.2 s).
    poll(lambda: second.get("/readyz").json()["checks"]["upstream"]["state"] == "rate_limited", 10)
    calls = len(fake_unsplash.calls())
    job_id = second.post("/jobs").json()["id"]
    poll(lambda: second.get(f"/jobs/{job_id}").json()["error"], 10)  # due, and told it waits
    assert second.get(f"/jobs/{job_id}").json()["error"]["code"] == "rate_limited"
    assert len(fake_unsplash.calls()) == calls  # the second server spent nothing
