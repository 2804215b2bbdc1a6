"""Operations against real servers: /healthz, /readyz, /metrics, upkeep without cron, the
access log and its request ids, and an access key that never leaks. The fake Unsplash is
the only fake; databases are real files in each test's tmp_path."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from typing import TYPE_CHECKING

import pytest

from calo.clock import now_ms
from calo.jobs import Job, Outcome
from calo.storage.sqlite_store import MIGRATIONS, Database
from tests.fake_unsplash import FakeUnsplash
from tests.helpers import (
    WriterUnderTest,
    all_jobs,
    create_jobs,
    metric_samples,
    poll,
    raw_websocket_that_never_reads,
    scrape,
    value,
    wait_until,
)

if TYPE_CHECKING:
    from calo.storage.base import DeletedBatch


def access_lines(server, path):
    return [line for line in server.lines if "logger=calo.access" in line and f"path={path} " in line]


def exported_jobs(data_dir):
    with open(os.path.join(data_dir, "jobs.json"), encoding="utf-8") as file:
        return json.load(file)["jobs"]


# -- health ------------------------------------------------------------------------------


def test_healthz_and_readyz_report_every_check(server_process):
    server = server_process()
    alive = server.get("/healthz")
    assert alive.status_code == 200 and alive.json() == {"status": "alive"}
    assert alive.headers["Cache-Control"] == "no-store"
    ready = server.get("/readyz")
    body = ready.json()
    assert ready.status_code == 200 and body["ready"] is True and body["shutting_down"] is False
    checks = body["checks"]
    assert checks["database"]["ok"] is True and checks["database"]["write_ms"] >= 0
    assert checks["recovery"] == {"ok": True, "pending_at_start": 0, "overdue_at_start": 0}
    assert checks["scheduler"]["ok"] is True and checks["scheduler"]["oldest_overdue"] is None
    assert checks["upstream"]["state"] == "ok"
    refused = server.post("/readyz")
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"


def test_readyz_shows_the_next_due_job_and_demo_mode(server_process):
    server = server_process("--delay-min", "300", "--delay-max", "300",
                            env={"CALO_UNSPLASH_ACCESS_KEY": ""})
    job = server.post("/jobs").json()
    checks = server.get("/readyz").json()["checks"]
    assert checks["scheduler"]["next_due_at"] == job["due_at"] and checks["scheduler"]["scheduled"] == 1
    assert checks["upstream"] == {"state": "demo"}


# -- request ids and the access log ------------------------------------------------------


def test_every_answer_has_a_request_id_and_one_access_line_without_the_query(server_process):
    server = server_process("--access-log")
    given = server.get("/jobs?status=resolved&access_token=TOPSECRET-42", headers={"X-Request-Id": "proxy-7f3a"})
    assert given.headers["X-Request-Id"] == "proxy-7f3a"
    made = server.get("/jobs/no-such-job", headers={"X-Request-Id": "not a token=1"})  # errors too
    assert made.status_code == 404 and re.fullmatch(r"[0-9a-f]{16}", made.headers["X-Request-Id"])
    server.get("/healthz")
    poll(lambda: access_lines(server, "/jobs/no-such-job"))
    [line] = access_lines(server, "/jobs")
    assert "level=info" in line and "method=GET" in line and "status=200" in line
    assert "request_id=proxy-7f3a" in line and re.search(r"duration_ms=\d+\.\d", line)
    [missing] = access_lines(server, "/jobs/no-such-job")
    assert "level=info" in missing and "error=job_not_found" in missing  # the client's mistake
    assert f"request_id={made.headers['X-Request-Id']}" in missing
    assert access_lines(server, "/healthz") == []  # probes log at debug level only
    assert not any("TOPSECRET" in line for line in server.lines)  # never the query string


# -- metrics and the upstream's state ----------------------------------------------------


def test_metrics_follow_jobs_upstream_outcomes_rate_limit_and_clients(server_process, fake_unsplash):
    server = server_process("--unsplash-batch", "1")
    client = raw_websocket_that_never_reads(int(server.url.rsplit(":", 1)[1]))
    fake_unsplash.fail_with(503, times=1)
    ids = [server.post("/jobs").json()["id"] for _ in range(2)]
    poll(lambda: all(server.get(f"/jobs/{job_id}").json()["status"] == "resolved" for job_id in ids))

    samples = scrape(server)
    assert value(samples, "calo_jobs", status="resolved") == 2 and value(samples, "calo_jobs", status="pending") == 0
    assert value(samples, "calo_jobs_created_total") == 2 and value(samples, "calo_jobs_resolved_total") == 2
    assert value(samples, "calo_jobs_failed_total") == 0
    assert value(samples, "calo_job_lateness_seconds_count") == 2
    assert value(samples, "calo_upstream_requests_total", outcome="upstream_unavailable") == 1
    assert value(samples, "calo_upstream_requests_total", outcome="ok") == 2
    assert value(samples, "calo_upstream_rate_limit_remaining") == fake_unsplash.rate_limit_remaining
    assert value(samples, "calo_upstream_state", state="ok") == 1
    assert value(samples, "calo_websocket_clients") == 1
    # 2 created, 2 resolved; the hub sends what it gathered for 20 ms after the commit
    poll(lambda: value(scrape(server), "calo_websocket_events_sent_total") >= 4)
    assert value(samples, "calo_pool_queue_depth") == 0 and value(samples, "calo_fetches_in_flight") == 0
    assert value(samples, "calo_scheduler_stuck") == 0
    assert value(samples, "calo_upkeep_last_run_ok", task="export_json") == 1
    poll(lambda: value(scrape(server), "calo_ioloop_lag_seconds_count") > 0)
    assert any("upstream failing since" in line for line in server.lines)
    assert any("upstream recovered after 1 failed rounds of calls" in line for line in server.lines)

    fake_unsplash.reset_rate_limit(limit=1)  # the next answer spends the last request
    server.post("/jobs")
    poll(lambda: server.get("/readyz").json()["checks"]["upstream"]["state"] == "rate_limited")
    ready = server.get("/readyz")
    assert ready.status_code == 200  # waiting for Unsplash is not the server's fault
    assert ready.json()["checks"]["upstream"]["until"].endswith("Z")
    samples = scrape(server)
    assert value(samples, "calo_upstream_state", state="rate_limited") == 1
    assert value(samples, "calo_upstream_rate_limit_remaining") == 0
    assert any("upstream rate limited until" in line for line in server.lines)
    client.close()


# -- upkeep without cron -----------------------------------------------------------------


def test_the_server_prunes_events_and_deletes_old_jobs_by_itself(server_process, data_dir):
    # Events are kept 1 s and finished jobs 0.00002 days (1.7 s): both tasks run every second.
    # A long write timeout: a deletion whose commit outlasts the default 5 s (an fsync on a
    # disk other tests keep busy) has an unknown outcome, so its run logs a failure instead.
    server = server_process("--event-retention", "1", "--write-timeout", "60",
                            env={"CALO_RETAIN_DAYS": "0.00002"})
    for _ in range(3):
        server.post("/jobs")
    poll(lambda: value(scrape(server), "calo_jobs_resolved_total") == 3)
    poll(lambda: all_jobs(server) == [], timeout=15)
    with sqlite3.connect(f"file:{os.path.join(data_dir, 'calo.db')}?mode=ro", uri=True) as conn:
        poll(lambda: conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0, timeout=15)
    conn.close()
    poll(lambda: exported_jobs(data_dir) == [])  # deleting jobs is exported too
    samples = scrape(server)
    for task in ("prune_events", "retain_jobs"):
        assert value(samples, "calo_upkeep_last_run_timestamp_seconds", task=task) > 0
        assert value(samples, "calo_upkeep_last_run_ok", task=task) == 1
        assert value(samples, "calo_upkeep_last_duration_seconds", task=task) >= 0
    assert value(samples, "calo_jobs", status="resolved") == 0
    poll(lambda: any("deleted" in line and "older than 2e-05 days" in line for line in server.lines),
         timeout=5, describe=lambda: "\n".join(server.lines))


@pytest.mark.gen_test
async def test_a_wal_checkpoint_runs_on_the_writer_and_truncates_the_wal(http_server, calo, data_dir):
    await create_jobs(calo, 20)
    wal = os.path.join(data_dir, "calo.db-wal")
    assert os.path.getsize(wal) > 0
    [task] = [task for task in calo.upkeep.tasks if task.name == "checkpoint_wal"]

    async def truncated():  # the exporter's reader may hold a snapshot for a moment: run it again
        await task.trigger()
        return task.last_ok and os.path.getsize(wal) == 0

    await wait_until(truncated)
    samples = metric_samples(calo.metrics.render("")[0].decode())
    assert value(samples, "calo_upkeep_last_run_ok", task="checkpoint_wal") == 1


# -- the store's part: retention batches and job counts ----------------------------------


@pytest.fixture
def writer(tmp_path):
    database = Database(str(tmp_path))
    with WriterUnderTest(database.path) as writer:
        yield database, writer
    database.close()


def settled_job(writer, created_ago_ms, *, failed=False, pending=False):
    job = Job.new(1, now_ms() - created_ago_ms)
    writer.run(writer.writer.create_job(job))
    if not pending:
        outcome = Outcome(job.id, job.due_at, error_code="x", final=True) if failed else Outcome(
            job.id, job.due_at, image={"url": "https://example.com/a.jpg"})
        writer.run(writer.writer.apply_outcomes([outcome]))
    return job.id


def test_retention_deletes_old_settled_jobs_in_bounded_batches_and_keeps_the_rest(writer):
    database, writer = writer
    day = 86_400_000
    old = [settled_job(writer, 3 * day, failed=n % 2 == 1) for n in range(5)]
    old_pending = settled_job(writer, 3 * day, pending=True)
    recent = settled_job(writer, day // 2)
    cutoff, after = now_ms() - day, 0
    batches: list[DeletedBatch] = []
    while not batches or not batches[-1].done:
        batches.append(writer.run(writer.writer.delete_settled_jobs(cutoff, after, 2)))
        after = batches[-1].last_num
        assert len(batches) < 10
    assert sum(batch.deleted for batch in batches) == 5 and all(batch.deleted <= 2 for batch in batches)
    reader = database.reader()
    assert [reader.job(job_id) for job_id in old] == [None] * 5
    assert reader.job(old_pending) is not None and reader.job(recent) is not None
    assert reader.count_by_status() == {"pending": 1, "resolved": 1}
    reader.close()


def test_job_counts_match_the_table_after_an_upgrade_and_every_change(tmp_path):
    path = tmp_path / "calo.db"
    with sqlite3.connect(path) as conn:  # a database from before the counts existed
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        for status in ("pending", "resolved", "resolved", "failed"):
            job = Job.new(1, now_ms())
            conn.execute("INSERT INTO jobs (id, status, due_at, doc) VALUES (?, ?, ?, ?)",
                         (job.id, status, job.due_at, job.to_json()))
    conn.close()
    database = Database(str(tmp_path))
    with WriterUnderTest(database.path) as writer:
        settled_job(writer, 0)
        settled_job(writer, 0, failed=True)
        settled_job(writer, 0, pending=True)
    reader = database.reader()
    with sqlite3.connect(path) as conn:
        counted = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    conn.close()
    assert reader.count_by_status() == counted == {"pending": 2, "resolved": 3, "failed": 2}
    reader.close()
    database.close()


# -- secrets -----------------------------------------------------------------------------


def assert_never_shown(secret, server, data_dir, job_ids):
    for path in ["/jobs?limit=1000", "/healthz", "/readyz", "/metrics", "/openapi.json",
                 *(f"/jobs/{job_id}" for job_id in job_ids)]:
        response = server.get(path)
        assert secret not in response.text and secret not in str(response.headers), path
    assert server.terminate() == 0
    assert not any(secret in line for line in server.lines)
    with open(os.path.join(data_dir, "jobs.json"), encoding="utf-8") as file:
        assert secret not in file.read()


def test_the_access_key_never_reaches_the_log_the_answers_or_the_export(server_process, data_dir):
    right = "calo-KEY-right-5d1e94c2b7"
    with FakeUnsplash(access_key=right) as unsplash:
        server = server_process(env={"CALO_UNSPLASH_ACCESS_KEY": right, "CALO_UNSPLASH_API_URL": unsplash.url})
        ids = [server.post("/jobs").json()["id"] for _ in range(2)]
        poll(lambda: all(server.get(f"/jobs/{job_id}").json()["status"] == "resolved" for job_id in ids))
        assert_never_shown(right, server, data_dir, ids)

    wrong = "calo-KEY-wrong-a83f0c6e1d"  # the fixture's fake expects another key: 401
    server = server_process(env={"CALO_UNSPLASH_ACCESS_KEY": wrong})
    job_id = server.post("/jobs").json()["id"]
    failed = poll(lambda: (job := server.get(f"/jobs/{job_id}").json())["status"] == "failed" and job)
    assert failed["error"]["code"] == "unsplash_access_key_rejected"
    assert_never_shown(wrong, server, data_dir, [job_id, *ids])
