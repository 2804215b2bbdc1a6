"""The PostgreSQL backend (--database-url) with one server: the same API, durable, migrated.

Real `python server.py` processes and in-process servers against the throwaway cluster of
tests/postgres.py; every test has a database of its own."""

from __future__ import annotations

import concurrent.futures

import psycopg
import pytest

from calo.storage.postgres_schema import MIGRATIONS
from tests.helpers import EventStream, poll, scrape, value


def settled(server, ids, timeout=15.0):
    def done():
        jobs = [server.get(f"/jobs/{job_id}").json() for job_id in ids]
        return jobs if all(job["status"] != "pending" for job in jobs) else None

    return poll(done, timeout)


def test_jobs_are_created_resolved_and_listed_from_postgresql(server_process, database_url):
    server = server_process("--database-url", database_url)
    created = [server.post("/jobs") for _ in range(5)]
    assert [response.status_code for response in created] == [201] * 5
    ids = [response.json()["id"] for response in created]
    for job in settled(server, ids):
        assert job["status"] == "resolved" and job["result"].startswith("http")
    listed = server.get("/jobs?status=resolved&limit=3")
    assert [job["id"] for job in listed.json()] == ids[::-1][:3] and 'rel="next"' in listed.headers["Link"]
    ready = server.get("/readyz").json()
    assert ready["ready"] and ready["checks"]["database"]["backend"] == "postgresql"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT version FROM calo_schema").fetchone() == (len(MIGRATIONS),)
        counts: dict[str, int] = dict(conn.execute("SELECT status, sum(n) FROM job_counts GROUP BY status").fetchall())
        assert counts == {"pending": 0, "resolved": 5}
        seqs = [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]
        assert seqs == list(range(1, 11))  # created and resolved, gap-free


def test_writes_waiting_on_a_stalled_database_show_in_metrics(server_process, database_url):
    server = server_process("--database-url", database_url, "--delay-min", "300", "--delay-max", "300")
    assert value(scrape(server), "calo_writes_waiting") == 0
    with psycopg.connect(database_url) as conn, concurrent.futures.ThreadPoolExecutor(4) as clients:
        # SHARE mode: inserts into jobs wait (as behind a stalled disk), reads go on.
        conn.execute("LOCK TABLE jobs IN SHARE MODE")
        posts = [clients.submit(server.post, "/jobs") for _ in range(4)]
        poll(lambda: value(scrape(server), "calo_writes_waiting") >= 1)
        conn.rollback()
        assert [post.result().status_code for post in posts] == [201] * 4
    poll(lambda: value(scrape(server), "calo_writes_waiting") == 0)


def test_an_acknowledged_job_survives_a_kill_and_runs_after_the_restart(server_process, database_url):
    server = server_process("--database-url", database_url, "--instance-lease", "1", "--delay-min", "2",
                            "--delay-max", "2")
    job_id = server.post("/jobs").json()["id"]
    server.kill()
    again = server_process("--database-url", database_url, "--instance-lease", "1")
    (job,) = settled(again, [job_id])
    assert job["status"] == "resolved" and job["attempts"] == 1


def test_a_repeated_idempotency_key_returns_the_same_job(server_process, database_url):
    server = server_process("--database-url", database_url)
    first = server.post("/jobs", headers={"Idempotency-Key": "order-1"})
    second = server.post("/jobs", headers={"Idempotency-Key": "order-1"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]


def test_a_schema_newer_than_the_server_refuses_to_start(server_process, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE calo_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO calo_schema VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(AssertionError, match="newer than this calo-server knows"):
        server_process("--database-url", database_url)


def test_a_bad_database_url_is_one_line(server_process):
    with pytest.raises(AssertionError, match="--database-url must be a postgresql://"):
        server_process("--database-url", "mysql://nope")


def test_postgresql_restarting_answers_503_then_recovers_by_itself(server_process, postgres_cluster, database_url):
    server = server_process("--database-url", database_url, "--delay-min", "1", "--delay-max", "1")
    stream = EventStream(server.url)  # its listener is cut off with the rest, and catches up
    before = [server.post("/jobs").json()["id"] for _ in range(5)]
    postgres_cluster.stop()
    try:
        refused = server.post("/jobs", headers={"Idempotency-Key": "during-outage"})
        assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
        assert refused.json()["error"]["code"] == "storage_unavailable"
        assert server.get(f"/jobs/{before[0]}").status_code == 503
        ready = server.get("/readyz")
        database = ready.json()["checks"]["database"]
        assert ready.status_code == 503 and not database["ok"] and "PostgreSQL" in database["error"]
    finally:
        postgres_cluster.start()
    # Back without a restart of the server: writes, reads, readiness, and every job.
    again = poll(lambda: (r := server.post("/jobs", headers={"Idempotency-Key": "during-outage"})).status_code == 201
                 and r, 20)
    poll(lambda: server.get("/readyz").status_code == 200, 20)
    for job in settled(server, [*before, again.json()["id"]], timeout=30):
        assert job["status"] == "resolved"
    with psycopg.connect(database_url) as conn:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))
    poll(lambda: [seq for seq, _, _ in stream.events] == seqs, 10)  # gap-free, in order, across the outage
    stream.close()
    assert value(scrape(server), "calo_writes_waiting") == 0  # failed writes are counted out too
