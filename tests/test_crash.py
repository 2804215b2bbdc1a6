"""Crashes, shutdown and start-up, with real `python server.py` processes: nothing
acknowledged is ever lost, nothing resolves twice, and start-up never destroys data."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
import threading

import requests

from tests.helpers import all_jobs, poll, raw_websocket_that_never_reads, resolution_events, run_server


def test_sigkill_during_2000_concurrent_posts_loses_no_acknowledged_job(server_process, data_dir):
    server = server_process("--delay-min", "0.5", "--delay-max", "1.5", "--delay-step", "0.5")
    acknowledged, lock, killed = [], threading.Lock(), threading.Event()
    session_local = threading.local()

    def post(number):
        if killed.is_set():
            return
        session = getattr(session_local, "session", None) or requests.Session()
        session_local.session = session
        try:
            response = session.post(server.url + "/jobs", timeout=10)
        except requests.RequestException:
            return  # the server died mid-request: not acknowledged, so not promised
        if response.status_code == 201:
            with lock:
                acknowledged.append(response.json()["id"])
                if len(acknowledged) == 1000:
                    server.kill()  # SIGKILL, in the middle of the storm
                    killed.set()

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        list(pool.map(post, range(2000)))
    assert killed.is_set() and len(acknowledged) >= 1000

    server = server_process()
    stored = {job["id"] for job in all_jobs(server)}
    assert set(acknowledged) <= stored  # every 201 survived the crash
    poll(lambda: len(all_jobs(server, "resolved")) == len(stored), timeout=30)
    events = resolution_events(data_dir)
    assert set(events) == stored and set(events.values()) == {1}  # each resolved exactly once


def test_sigterm_lets_an_in_flight_fetch_finish_then_exits_0(server_process, data_dir, fake_unsplash):
    server = server_process("--delay-min", "0.2", "--delay-max", "0.2")
    fake_unsplash.set_delay(1.5)
    job_id = server.post("/jobs").json()["id"]
    poll(lambda: fake_unsplash.photo_requests_count == 1)
    assert server.terminate() == 0  # waits for the fetch (grace: 10 s): the job is resolved below
    with sqlite3.connect(os.path.join(data_dir, "calo.db")) as conn:
        (doc,) = conn.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert json.loads(doc)["status"] == "resolved"
    with open(os.path.join(data_dir, "jobs.json"), encoding="utf-8") as export:
        assert json.load(export)["jobs"][0]["status"] == "resolved"  # flushed before exit


def test_sigint_stops_cleanly_too(server_process):
    server = server_process()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(20) == 0


def test_a_corrupt_database_stops_start_up_and_is_left_as_it_was(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    corrupt = b"SQLite format 3\x00" + os.urandom(4000)
    (data_dir / "calo.db").write_bytes(corrupt)
    result = run_server("--port", "0", env={"CALO_DATA_DIR": str(data_dir)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "calo.db" in result.stderr.splitlines()[-1]
    assert (data_dir / "calo.db").read_bytes() == corrupt
    assert sorted(os.listdir(data_dir)) == ["calo.db", "calo.lock"]


def test_a_database_locked_by_another_program_stops_start_up(server_process, data_dir, tmp_path):
    server = server_process()
    server.post("/jobs")
    assert server.terminate() == 0
    path = os.path.join(data_dir, "calo.db")
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
    before = holder.execute("SELECT * FROM jobs").fetchall()
    try:
        result = run_server("--port", "0", env={"CALO_DATA_DIR": data_dir})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "locked" in result.stderr.splitlines()[-1]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT * FROM jobs").fetchall() == before


def test_import_json_rebuilds_a_lost_database_and_refuses_a_full_one(server_process, data_dir):
    server = server_process()
    ids = {server.post("/jobs").json()["id"] for _ in range(5)}
    poll(lambda: len(all_jobs(server, "resolved")) == 5)
    assert server.terminate() == 0
    export_copy = os.path.join(os.path.dirname(data_dir), "backup.json")
    os.replace(os.path.join(data_dir, "jobs.json"), export_copy)
    for name in os.listdir(data_dir):
        if name.startswith("calo.db"):
            os.remove(os.path.join(data_dir, name))

    imported = run_server("--import-json", export_copy, env={"CALO_DATA_DIR": data_dir})
    assert imported.returncode == 0 and "imported 5 jobs" in imported.stderr
    again = run_server("--import-json", export_copy, env={"CALO_DATA_DIR": data_dir})
    assert again.returncode == 1 and "already holds jobs" in again.stderr and "Traceback" not in again.stderr
    server = server_process()
    restored = all_jobs(server)
    assert {job["id"] for job in restored} == ids and {job["status"] for job in restored} == {"resolved"}
    broken = run_server("--import-json", __file__, env={"CALO_DATA_DIR": data_dir + "-new"})
    assert broken.returncode == 1 and "not valid JSON" in broken.stderr


def test_slow_clients_are_cut_off_without_blocking_others(server_process):
    server = server_process("--client-timeout", "1")
    host, port = server.url.split("//")[1].split(":")
    slow_headers = socket.create_connection((host, int(port)))
    slow_headers.sendall(b"GET /jobs HTTP/1.1\r\nHost: localhost\r\n")  # ... and never the rest
    slow_body = socket.create_connection((host, int(port)))
    slow_body.sendall(b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")
    silent = socket.create_connection((host, int(port)))  # connects, never sends a byte
    idle = socket.create_connection((host, int(port)))  # one request, then an idle keep-alive
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    live = raw_websocket_that_never_reads(int(port))  # headers done: never cut off as slow
    assert server.get("/jobs").status_code == 200  # others are served meanwhile
    for sock in (slow_headers, slow_body, silent, idle):
        sock.settimeout(10)
        assert sock.recv(1024) == b""  # closed by the server (a recv timeout would raise)
        sock.close()
    # A connection opened after the WebSocket's handshake is cut off: a sweep has run past
    # the WebSocket's own deadline, and the WebSocket must still get events.
    later = socket.create_connection((host, int(port)))
    later.settimeout(10)
    assert later.recv(1024) == b""
    later.close()
    server.post("/jobs")
    live.settimeout(10)
    received = b""
    for _ in range(10):  # the hello, then the event (each recv waits at most 10 s)
        received += live.recv(65536)
        if b"job.created" in received:
            break
    assert b"job.created" in received
    live.close()


# -- the writer process ------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is gone too
    except FileNotFoundError:
        return True


def test_the_writer_process_dies_with_a_killed_server(server_process):
    server = server_process()
    writer = server.writer_pid()
    assert server.post("/jobs").status_code == 201
    server.kill()
    poll(lambda: _gone(writer), timeout=5)  # the kernel's PR_SET_PDEATHSIG, not a cleanup


def test_a_dead_writer_process_fails_writes_and_stops_the_server_with_exit_code_1(server_process):
    server = server_process()
    assert server.post("/jobs").status_code == 201
    os.kill(server.writer_pid(), signal.SIGKILL)
    assert server.process.wait(15) == 1  # systemd's Restart=on-failure starts it again
    server._drainer.join(5)
    assert any("writer process died" in line and "level=critical" in line for line in server.lines)
    assert any("stopped because the writer process died" in line for line in server.lines)
    assert not any("Traceback" in line for line in server.lines)
