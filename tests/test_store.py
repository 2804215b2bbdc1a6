"""The SQLite store on real database files: migrations, group commit, and its guarantees."""

from __future__ import annotations

import os
import pickle
import sqlite3

import pytest

from calo.clock import now_ms
from calo.jobs import Job, Outcome
from calo.store import DB_FILE, MIGRATIONS, Database, NotRetryable, StoreError
from calo.writer_process import _portable
from tests.helpers import WriterUnderTest


@pytest.fixture
def committed(database):
    """The real write path, started: the writer process and the events of its commits."""
    with WriterUnderTest(database.path) as writer:
        yield writer


def test_a_new_database_is_in_wal_mode_at_the_latest_schema(database):
    with sqlite3.connect(database.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_database_from_a_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / DB_FILE
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        Database(str(tmp_path))
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / DB_FILE
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Database(str(tmp_path))
    assert path.read_bytes() == b"this is not sqlite" * 100


def test_writes_made_at_once_commit_in_groups_with_one_event_each(database, committed):
    futures = [committed.writer.create_job(Job.new(1, now_ms())) for _ in range(800)]
    assert all(result.created for result in committed.run_all(futures))
    reader = database.reader()
    assert reader.count_by_status() == {"pending": 800}
    assert [event.seq for event in reader.events_after(0, 1000)] == list(range(1, 801))
    assert [event.seq for event in committed.events] == list(range(1, 801))
    reader.close()


def test_one_failing_write_does_not_undo_the_others_of_its_group(database, committed):
    twin = Job.new(1, now_ms())
    writer = committed.writer
    first, second, third = committed.run_all([
        writer.create_job(twin), writer.create_job(twin), writer.create_job(Job.new(1, now_ms())),
    ])
    assert first.created and third.created
    assert isinstance(second, StoreError) and "IntegrityError" in str(second)
    reader = database.reader()
    assert reader.count_by_status() == {"pending": 2}
    assert reader.latest_seq() == 2 and len(committed.events) == 2
    reader.close()


def test_an_outcome_applies_only_to_a_pending_job(database, committed):
    writer = committed.writer
    job = Job.new(1, now_ms())
    committed.run(writer.create_job(job))
    image = {"url": "http://example.test/a.jpg"}
    resolve = Outcome(job.id, now_ms(), image=image)
    assert committed.run(writer.apply_outcomes([resolve, resolve])) == ["resolved", None]
    assert committed.run(writer.apply_outcomes([Outcome("missing", now_ms(), image=image)])) == [None]
    assert [event.type for event in committed.events] == ["job.created", "job.resolved"]


def test_retries_keep_a_job_pending_until_max_attempts(database, committed):
    writer = committed.writer
    job = Job.new(1, now_ms())
    committed.run(writer.create_job(job))
    retry = Outcome(job.id, now_ms(), error_code="upstream_unavailable", final=False, max_attempts=3)
    assert [committed.run(writer.apply_outcomes([retry])) for _ in range(3)] == [["pending"], ["pending"], ["failed"]]


def test_pruned_event_seqs_are_never_reused(database, committed):
    writer = committed.writer
    committed.run_all([writer.create_job(Job.new(1, now_ms())) for _ in range(3)])
    assert committed.run(writer.prune_events(now_ms() + 1)) == 3
    committed.run(writer.create_job(Job.new(1, now_ms())))
    reader = database.reader()
    assert reader.latest_seq() == 4 and reader.oldest_seq() == 4
    reader.close()


def test_the_data_dir_is_locked_while_open(tmp_path, database):
    with pytest.raises(StoreError, match="in use"):
        Database(str(tmp_path))
    database.close()
    Database(str(tmp_path)).close()
    assert os.path.exists(tmp_path / "calo.lock")


def test_errors_cross_from_the_writer_process_as_the_store_s_own():
    refused = pickle.loads(pickle.dumps(_portable(NotRetryable("resolved"))))
    assert isinstance(refused, NotRetryable) and refused.status == "resolved"
    other = pickle.loads(pickle.dumps(_portable(sqlite3.IntegrityError("UNIQUE constraint failed: jobs.id"))))
    assert isinstance(other, StoreError) and "IntegrityError" in str(other)
    assert _portable(None) is None


def test_creates_committed_together_get_their_own_events_in_order(committed, database):
    writer = committed.writer
    committed.run(writer.ping())
    jobs = [Job.new(300, now_ms()) for _ in range(60)]
    results = committed.run_all([writer.create_job(job, "key-7" if n == 7 else None) for n, job in enumerate(jobs)])
    assert [result.job_id for result in results] == [job.id for job in jobs]
    created = [event for event in committed.events if event.type == "job.created"]
    assert sorted(event.job_id for event in created) == sorted(job.id for job in jobs)
    with sqlite3.connect(database.path) as conn:
        stored = dict(conn.execute("SELECT seq, job_id FROM events"))
        docs = dict(conn.execute("SELECT id, doc FROM jobs"))
    assert {event.seq: event.job_id for event in created} == stored  # each seq names its own job
    assert all(docs[event.job_id] == event.job_json for event in created)
