"""Acting on jobs and seeing what happened (issue 13), over real HTTP against Calo Jobs
in-process or as a real process: cancel, retry all failed, a job's timeline from the event
log, and `/stats` (counts, the last hour per minute, lateness, the upstream)."""

from __future__ import annotations

import json
import os
import re
import signal

import jsonschema
import pytest
from tornado.websocket import websocket_connect

from calo import api
from calo.scheduler import DueHeap, DueLine
from tests.helpers import (
    assert_error,
    body,
    call,
    collect_until,
    create,
    db,
    job_schema,
    metric_samples,
    next_events,
    poll,
    value,
    wait_until,
    writer_pid,
)
from tests.helpers import (
    job as job_doc,
)

LONG_DELAYS = ("--delay-min", "300", "--delay-max", "300", "--delay-step", "5")


async def post(http_client, base_url, path):
    return await call(http_client, base_url, path, "POST", body="")


# -- cancel ---------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.calo_flags(*LONG_DELAYS)
async def test_cancel_a_pending_job_everywhere_it_shows(http_server, http_client, base_url, http_port, calo):
    ws = await websocket_connect(f"ws://127.0.0.1:{http_port}/ws")
    await next_events(ws)  # hello
    job = body(await create(http_client, base_url))
    other = body(await create(http_client, base_url))
    assert calo.scheduler.pending_count() == 2

    response = await post(http_client, base_url, f"/jobs/{job['id']}/cancel")
    assert response.code == 200
    cancelled = body(response)
    assert cancelled["status"] == "cancelled" and cancelled["resolved_at"] is not None
    assert cancelled["result"] is None and cancelled["image"] is None
    jsonschema.Draft7Validator(job_schema()).validate(cancelled)
    assert calo.scheduler.pending_count() == 1  # the schedule dropped it
    assert calo.scheduler.next_due_at() is not None

    events = await collect_until(ws, 3)
    assert [(e["type"], e["job"]["id"]) for e in events][-1] == ("job.cancelled", job["id"])
    ws.close()
    listed = body(await call(http_client, base_url, "/jobs?status=cancelled"))
    assert [j["id"] for j in listed] == [job["id"]]
    assert [j["id"] for j in body(await call(http_client, base_url, "/jobs?status=pending"))] == [other["id"]]
    stats = body(await call(http_client, base_url, "/stats"))
    assert stats["counts"] == {"pending": 1, "resolved": 0, "failed": 0, "cancelled": 1} and stats["total"] == 2
    assert [sum(m[name] for m in stats["minutes"]) for name in ("created", "cancelled")] == [2, 1]
    samples = metric_samples((await call(http_client, base_url, "/metrics")).body.decode())
    assert value(samples, "calo_jobs", status="cancelled") == 1
    assert value(samples, "calo_jobs_cancelled_total") == 1

    # Twice, or a job that is not pending: 409; an unknown job: 404.
    assert_error(await post(http_client, base_url, f"/jobs/{job['id']}/cancel"), 409, "job_not_pending")
    assert_error(await post(http_client, base_url, "/jobs/no-such-job/cancel"), 404, "job_not_found")
    assert_error(await post(http_client, base_url, f"/jobs/{job['id']}/retry"), 409, "job_not_failed")


@pytest.mark.gen_test
@pytest.mark.calo_flags("--unsplash-batch", "1")
async def test_a_cancelled_job_is_never_fetched_and_a_resolved_one_cannot_be_cancelled(
    http_server, http_client, base_url, calo, fake_unsplash
):
    job = body(await create(http_client, base_url))
    assert (await post(http_client, base_url, f"/jobs/{job['id']}/cancel")).code == 200
    later = body(await create(http_client, base_url))
    await wait_until(lambda: db(calo).count_by_status().get("resolved") == 1)  # the later job: due after the first
    assert job_doc(calo, job["id"])["status"] == "cancelled"
    assert fake_unsplash.photo_requests_count == 1  # one photo each: none for the cancelled job
    assert_error(await post(http_client, base_url, f"/jobs/{later['id']}/cancel"), 409, "job_not_pending")


@pytest.mark.gen_test
async def test_cancel_while_the_photo_is_being_recorded_is_409_resolving(http_server, http_client, base_url, calo):
    """The writer process is stopped (SIGSTOP): the fetched photo's outcome waits in its
    pipe, so the job is still pending in the database but already being resolved."""
    job = body(await create(http_client, base_url))
    os.kill(writer_pid(os.getpid()), signal.SIGSTOP)
    try:
        await wait_until(lambda: calo.scheduler.pending_count() == 1
                         and calo.scheduler.stats()["scheduled"] == calo.scheduler.stats()["ready"] == 0)
        assert_error(await post(http_client, base_url, f"/jobs/{job['id']}/cancel"), 409, "job_resolving")
    finally:
        os.kill(writer_pid(os.getpid()), signal.SIGCONT)
    await wait_until(lambda: db(calo).count_by_status().get("resolved") == 1)


def test_the_schedule_withdraws_any_job_in_constant_time_and_keeps_its_order():
    """Cancelling takes a job out of the heap or the due line without a search; entries left
    behind are skipped, a job pushed again keeps only its newest due time."""
    heap = DueHeap([(30, "c"), (10, "a"), (20, "b"), (10, "a")])
    assert len(heap) == 3 and heap.earliest() == 10
    assert heap.remove("a") == 10 and heap.remove("a") is None and heap.earliest() == 20
    heap.push(5, "b")  # rescheduled earlier: the old entry at 20 is dead
    heap.push(40, "d")
    assert heap.pop_due(30) == [(5, "b"), (30, "c")] and len(heap) == 1 and sorted(heap) == [(40, "d")]
    many = DueHeap((number, f"j{number}") for number in range(1000))
    for number in range(0, 1000, 2):
        assert many.remove(f"j{number}") == number
    for number in range(501, 1000, 2):
        many.remove(f"j{number}")
    assert len(many) == 250 and [job for _, job in many.pop_due(9)] == ["j1", "j3", "j5", "j7", "j9"]
    assert many.earliest() == 11 and len(many._heap) <= 2 * 245 + 64  # dead entries do not pile up
    line = DueLine()
    line.extend([(1, "x"), (2, "y"), (3, "z")])
    line.append(4, "w")
    assert line.remove("y") == 2 and line.remove("y") is None and len(line) == 3
    assert [line.popleft(), line.popleft()] == [(1, "x"), (3, "z")] and list(line) == [(4, "w")]


def test_a_cancelled_job_stays_cancelled_across_a_restart_and_in_the_export(server_process, data_dir):
    server = server_process(*LONG_DELAYS)
    job = server.post("/jobs").json()
    assert server.post(f"/jobs/{job['id']}/cancel").status_code == 200
    server.terminate()
    with open(os.path.join(data_dir, "jobs.json"), encoding="utf-8") as export:
        [exported] = json.load(export)["jobs"]
    assert exported["status"] == "cancelled"
    server = server_process(*LONG_DELAYS)
    assert server.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
    assert server.get("/readyz").json()["checks"]["recovery"]["pending_at_start"] == 0


# -- retry all failed, and history ------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.calo_flags("--max-attempts", "1", "--unsplash-batch", "1")
async def test_retry_all_failed_in_one_request_keeps_each_jobs_history(
    http_server, http_client, base_url, calo, fake_unsplash
):
    fake_unsplash.fail_with(500)
    ids = [body(await create(http_client, base_url))["id"] for _ in range(3)]
    await wait_until(lambda: db(calo).count_by_status().get("failed") == 3)
    fake_unsplash.clear_faults()
    response = await post(http_client, base_url, "/jobs/retry-failed")
    assert response.code == 200 and body(response) == {"retried": 3}
    await wait_until(lambda: db(calo).count_by_status().get("resolved") == 3)
    assert body(await post(http_client, base_url, "/jobs/retry-failed")) == {"retried": 0}

    timeline = body(await call(http_client, base_url, f"/jobs/{ids[0]}/events"))
    assert [event["type"] for event in timeline] == ["job.created", "job.failed", "job.retried", "job.resolved"]
    failed_try = timeline[1]["job"]
    assert failed_try["status"] == "failed" and failed_try["error"]["code"] == "upstream_unavailable"
    assert failed_try["attempts"] == 1  # the try before the retry stays visible
    seqs = [event["seq"] for event in timeline]
    assert seqs == sorted(seqs) and all(re.fullmatch(r"\d{4}-.*Z", event["at"]) for event in timeline)
    samples = metric_samples((await call(http_client, base_url, "/metrics")).body.decode())
    assert value(samples, "calo_jobs_retried_total") == 3
    minutes = body(await call(http_client, base_url, "/stats"))["minutes"]
    assert [sum(m[name] for m in minutes) for name in ("failed", "retried", "resolved")] == [3, 3, 3]


@pytest.mark.gen_test
async def test_retry_failed_walks_every_batch(http_server, http_client, base_url, calo, monkeypatch):
    """More failed jobs than one batch: each batch is its own transaction, all are retried."""
    from calo import service

    monkeypatch.setattr(service, "BULK_RETRY_BATCH", 2)
    ids = [body(await create(http_client, base_url))["id"] for _ in range(5)]
    await wait_until(lambda: db(calo).count_by_status().get("resolved") == 5)
    assert body(await post(http_client, base_url, "/jobs/retry-failed")) == {"retried": 0}
    assert len(ids) == 5


# -- the timeline ---------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_timeline_of_a_resolved_job_and_its_lateness(http_server, http_client, base_url, calo):
    job = body(await create(http_client, base_url))
    await wait_until(lambda: db(calo).count_by_status().get("resolved") == 1)
    timeline = body(await call(http_client, base_url, f"/jobs/{job['id']}/events"))
    assert [event["type"] for event in timeline] == ["job.created", "job.resolved"]
    assert timeline[0]["job"] == job
    resolved = timeline[1]["job"]
    assert resolved == body(await call(http_client, base_url, f"/jobs/{job['id']}"))
    assert resolved["resolved_at"] >= resolved["due_at"]
    [lateness] = [m["lateness"] for m in body(await call(http_client, base_url, "/stats"))["minutes"] if m["lateness"]]
    assert lateness["count"] == 1 and 0 <= lateness["p50_ms"] == lateness["p99_ms"] == lateness["max_ms"]


@pytest.mark.gen_test
@pytest.mark.calo_flags(*LONG_DELAYS)
async def test_timeline_pages_with_after_and_link(http_server, http_client, base_url, monkeypatch):
    monkeypatch.setattr(api, "EVENTS_PAGE", 1)
    job = body(await create(http_client, base_url))
    await post(http_client, base_url, f"/jobs/{job['id']}/cancel")
    first = await call(http_client, base_url, f"/jobs/{job['id']}/events")
    [created] = body(first)
    assert created["type"] == "job.created"
    link = re.fullmatch(r'<([^>]+)>; rel="next"', first.headers["Link"])
    assert link is not None, first.headers["Link"]
    next_url = link.group(1)
    second = await http_client.fetch(next_url)
    assert [event["type"] for event in body(second)] == ["job.cancelled"] and "Link" not in second.headers
    assert body(await call(http_client, base_url, f"/jobs/{job['id']}/events?after=999")) == []


@pytest.mark.gen_test
@pytest.mark.parametrize("after", ["-1", "abc", "", "\u0661", "%EF%BC%91", "9" * 30, "1.5", "+1", "%201", "1%00"])
async def test_timeline_refuses_a_bad_after(http_server, http_client, base_url, after):
    job = body(await create(http_client, base_url))
    assert_error(await call(http_client, base_url, f"/jobs/{job['id']}/events?after={after}"), 400, "bad_parameter")


@pytest.mark.gen_test
async def test_timeline_of_an_unknown_job_is_404(http_server, http_client, base_url):
    for bad_id in ["nope", "x" * 3000, "%FF%FE", "%00"]:
        assert_error(await call(http_client, base_url, f"/jobs/{bad_id}/events"), 404, "job_not_found")


# -- /stats ---------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_stats_shape_and_the_upstream(http_server, http_client, base_url, calo, fake_unsplash):
    stats = body(await call(http_client, base_url, "/stats"))
    assert set(stats) == {"at", "seq", "total", "counts", "upstream", "minutes"}
    assert stats["total"] == 0 and stats["upstream"]["state"] == "ok"
    assert len(stats["minutes"]) == 60
    starts = [minute["start"] for minute in stats["minutes"]]
    assert starts == sorted(starts) and starts[-1] <= stats["at"]
    assert all(minute["lateness"] is None and minute["created"] == 0 for minute in stats["minutes"])


def test_stats_are_seeded_from_the_event_log_after_a_restart(server_process):
    server = server_process()
    for _ in range(3):
        server.post("/jobs").raise_for_status()
    poll(lambda: server.get("/stats").json()["counts"]["resolved"] == 3)
    before = server.get("/stats").json()["minutes"]
    server.terminate()
    server = server_process()
    after = poll(lambda: (stats := server.get("/stats").json()) and sum(m["created"] for m in stats["minutes"])
                 and stats["minutes"])
    assert sum(m["created"] for m in after) == sum(m["created"] for m in before) == 3
    assert sum(m["resolved"] for m in after) == 3
    late = [m["lateness"] for m in after if m["lateness"]]
    assert sum(entry["count"] for entry in late) == 3
    assert max(entry["max_ms"] for entry in late) == max(m["lateness"]["max_ms"] for m in before if m["lateness"])


def test_demo_images_do_not_repeat_within_a_screen_of_jobs():
    from calo.unsplash import DemoSource
    from tests.helpers import ROOT

    source = DemoSource(os.path.join(ROOT, "static"))
    distinct = len({image["url"] for image in source.fetch(100).images})
    assert distinct >= 12
    urls = [image["url"] for _ in range(7) for image in source.fetch(5).images]  # batches of any size
    assert all(len(set(urls[start:start + distinct])) == distinct for start in range(len(urls) - distinct + 1))


def test_activity_counts_per_minute_and_lateness_quantiles_over_one_hour():
    from calo.stats import Activity
    from calo.storage.base import Event

    now = [1_800_000_000_000]  # a minute boundary
    activity = Activity(clock=lambda: now[0])
    resolved = [Event(n, "job.resolved", f"j{n}", "{}", lateness_ms=n) for n in range(1, 101)]
    activity.observe(resolved + [Event(101, "job.created", "j", "{}"), Event(102, "job.updated", "j", "{}")])
    minute = activity.minutes()[-1]
    assert (minute["resolved"], minute["created"], minute["failed"]) == (100, 1, 0)
    assert minute["lateness"] == {"count": 100, "p50_ms": 50, "p99_ms": 99, "max_ms": 100}
    activity.observe([Event(103, "job.resolved", "k", "{}", lateness_ms=5000)])  # the summary follows
    assert activity.minutes()[-1]["lateness"]["max_ms"] == 5000
    now[0] += 59 * 60_000  # still inside the hour: the oldest minute
    assert activity.minutes()[0]["resolved"] == 101
    now[0] += 60_000  # an hour later it is gone
    assert all(m["resolved"] == 0 for m in activity.minutes()) and len(activity.minutes()) == 60
