"""Faults, load and bad input: the upstream misbehaving, retries, limits and access rules.
Calo Jobs runs in-process over real loopback HTTP; Unsplash is the fake."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import time

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.helpers import call, create_jobs, event_matching, fetch_any, job, next_events, wait_until, writer_pid


def statuses(calo, ids):
    return [job(calo, i)["status"] for i in ids]


# -- rate limits and batching ---------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.calo_flags("--unsplash-batch", "1", "--rate-limit-pause", "2")
async def test_a_spent_budget_pauses_all_calls_and_jobs_wait_pending(calo, fake_unsplash):
    fake_unsplash.reset_rate_limit(2)
    ids = await create_jobs(calo, 4)
    await wait_until(lambda: statuses(calo, ids).count("resolved") == 2)
    waiting = [i for i in ids if job(calo, i)["status"] == "pending"]
    await wait_until(lambda: all(job(calo, i)["error"] for i in waiting))
    for pending in map(functools.partial(job, calo), waiting):
        assert pending["error"]["code"] == "rate_limited" and "rate limit" in pending["error"]["message"]
        assert pending["attempts"] <= 1  # 0 if the budget was known spent; 1 if a call met the 403
    assert fake_unsplash.photo_requests_count <= 4
    # The budget is back at once, but the pause holds: no call until it ends, however
    # long this machine took to get here.
    waiting_since, paused_until = time.time(), calo.gate.rate_limited_until / 1000
    fake_unsplash.reset_rate_limit(10)
    await wait_until(lambda: statuses(calo, ids) == ["resolved"] * 4, timeout=10)
    assert all(job(calo, i)["error"] is None for i in ids)
    later = [call["time"] for call in fake_unsplash.calls() if call["path"] == "/photos/random"
             and call["time"] >= waiting_since]
    assert later and min(later) >= paused_until


@pytest.mark.gen_test
@pytest.mark.calo_flags("--max-attempts", "1", "--rate-limit-pause", "1")
@pytest.mark.parametrize("status", [403, 429])
async def test_a_rate_limit_answer_never_fails_a_job(calo, fake_unsplash, status):
    fake_unsplash.set_rate_limit_status(status)
    fake_unsplash.reset_rate_limit(0)
    [job_id] = await create_jobs(calo, 1)
    await wait_until(lambda: (job(calo, job_id)["error"] or {}).get("code") == "rate_limited")
    waiting = job(calo, job_id)
    assert waiting["status"] == "pending" and waiting["attempts"] == 0  # waiting for the budget is no try
    fake_unsplash.reset_rate_limit(5)
    await wait_until(lambda: job(calo, job_id)["status"] == "resolved", timeout=10)


@pytest.mark.gen_test
async def test_one_request_serves_a_batch_of_jobs(calo, fake_unsplash):
    fake_unsplash.reset_rate_limit(2)  # a demo key's 50 an hour serves 1,500 jobs this way
    ids = await create_jobs(calo, 60)
    await wait_until(lambda: statuses(calo, ids) == ["resolved"] * 60, timeout=10)
    assert fake_unsplash.photo_requests_count == 2
    assert len({job(calo, i)["result"] for i in ids}) == 60  # no photo given to two jobs


# -- outages ----------------------------------------------------------------------------------

@pytest.mark.gen_test
async def test_an_outage_makes_few_calls_however_many_jobs_are_due(calo, fake_unsplash):
    fake_unsplash.fail_with(503)
    ids = await create_jobs(calo, 200)
    await wait_until(lambda: fake_unsplash.photo_requests_count >= 3, timeout=10)
    calls_while_down = fake_unsplash.photo_requests_count
    assert calls_while_down <= 6  # backoff 0.5 s, 1 s, 2 s ...: never one call per due job
    assert all(job(calo, i)["status"] == "pending" for i in ids)
    assert {job(calo, i)["error"]["code"] for i in ids if job(calo, i)["error"]} == {"upstream_unavailable"}
    fake_unsplash.clear_faults()
    await wait_until(lambda: statuses(calo, ids) == ["resolved"] * 200, timeout=15)


@pytest.mark.gen_test
@pytest.mark.calo_flags("--unsplash-timeout", "0.3")
async def test_a_slow_upstream_times_out_and_is_retried(calo, fake_unsplash):
    fake_unsplash.set_delay(1.0)
    [job_id] = await create_jobs(calo, 1)
    await wait_until(lambda: job(calo, job_id)["attempts"] >= 1)
    assert job(calo, job_id)["error"]["message"] == "Unsplash did not answer within 0.3 s"
    fake_unsplash.clear_faults()
    await wait_until(lambda: job(calo, job_id)["status"] == "resolved", timeout=10)


@pytest.mark.gen_test
@pytest.mark.calo_flags("--max-attempts", "2")
@pytest.mark.calo_env(CALO_UNSPLASH_API_URL="http://127.0.0.1:9")  # the discard port: refused
async def test_a_refused_connection_fails_the_job_after_its_attempts(calo):
    [job_id] = await create_jobs(calo, 1)
    await wait_until(lambda: job(calo, job_id)["status"] == "failed", timeout=10)
    failed = job(calo, job_id)
    assert failed["attempts"] == 2 and failed["error"]["code"] == "upstream_unavailable"
    assert "cannot reach Unsplash" in failed["error"]["message"]


@pytest.mark.gen_test
@pytest.mark.calo_flags("--retry-window", "0", "--max-attempts", "50")
async def test_retries_stop_once_the_job_is_too_late(calo, fake_unsplash):
    fake_unsplash.fail_with(502)
    [job_id] = await create_jobs(calo, 1)
    await wait_until(lambda: job(calo, job_id)["status"] == "failed", timeout=10)
    assert job(calo, job_id)["attempts"] <= 2


# -- retry -------------------------------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.calo_flags("--max-attempts", "1", "--unsplash-batch", "1")  # one fetch per job: one fails
async def test_retry_endpoint_contract(http_server, http_client, base_url, calo, fake_unsplash):
    fake_unsplash.fail_with(500, times=1)
    [failed_id, other_id] = await create_jobs(calo, 2)
    await wait_until(lambda: "failed" in statuses(calo, [failed_id, other_id]))
    if job(calo, failed_id)["status"] != "failed":
        failed_id, other_id = other_id, failed_id
    ws = await websocket_connect(f"ws://localhost:{base_url.rsplit(':', 1)[1]}/ws")
    assert (await next_events(ws))[0]["type"] == "hello"  # always the first message
    response = await call(http_client, base_url, f"/jobs/{failed_id}/retry", "POST", "")
    retried = json.loads(response.body)
    assert response.code == 200 and retried["status"] == "pending" and retried["attempts"] == 0
    assert retried["error"] is None and retried["due_at"] >= retried["created_at"]
    # The other job's events may come first, and several events may share a message.
    event = await event_matching(ws, lambda event: event["type"] == "job.retried")
    assert event["job"]["id"] == failed_id and event["job"]["status"] == "pending"
    await wait_until(lambda: job(calo, failed_id)["status"] == "resolved")
    for job_id, status in ((failed_id, 409), (other_id, 409), ("nope", 404)):
        answer = await call(http_client, base_url, f"/jobs/{job_id}/retry", "POST", "")
        assert answer.code == status and "error" in json.loads(answer.body)
    assert (await call(http_client, base_url, f"/jobs/{failed_id}/retry")).code == 405
    ws.close()


# -- load and bad input ------------------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.calo_flags("--max-pending", "3", "--delay-min", "300", "--delay-max", "300")
async def test_past_max_pending_post_answers_503_with_retry_after(http_server, http_client, base_url):
    for number in range(3):
        assert (await call(http_client, base_url, "/jobs", "POST", "", {"Idempotency-Key": f"k{number}"})).code == 201
    refused = await call(http_client, base_url, "/jobs", "POST", "")
    assert refused.code == 503 and int(refused.headers["Retry-After"]) > 0
    assert json.loads(refused.body)["error"]["code"] == "too_many_pending_jobs"
    repeated = await call(http_client, base_url, "/jobs", "POST", "", {"Idempotency-Key": "k1"})
    assert repeated.code == 200  # a retried press still gets its job


@pytest.mark.gen_test
@pytest.mark.calo_flags("--delay-min", "300", "--delay-max", "300")
async def test_when_the_writer_process_is_gone_writes_answer_503_and_readyz_says_why(
    http_server, http_client, base_url, calo
):
    fatal: list[str] = []
    calo.on_fatal = fatal.append
    assert (await call(http_client, base_url, "/jobs", "POST", "")).code == 201
    os.kill(writer_pid(os.getpid()), signal.SIGKILL)
    await wait_until(lambda: fatal)  # the process is asked to stop (tests/test_crash.py)
    refused = await call(http_client, base_url, "/jobs", "POST", "")
    assert refused.code == 503 and int(refused.headers["Retry-After"]) > 0
    assert json.loads(refused.body)["error"]["code"] == "storage_unavailable"
    ready = await call(http_client, base_url, "/readyz", "GET")
    assert ready.code == 503
    assert "writer process died" in json.loads(ready.body)["checks"]["database"]["error"]


@pytest.mark.gen_test
async def test_bodies_over_64_kib_are_refused_with_413(http_server, http_client, base_url):
    as_json = {"Content-Type": "application/json"}
    big = "{" + " " * (64 * 1024) + "}"
    answer = await call(http_client, base_url, "/jobs", "POST", big, as_json)
    assert answer.code == 413 and json.loads(answer.body)["error"]["code"] == "body_too_large"
    # No Content-Length: the limit holds for a chunked body too.
    request = HTTPRequest(base_url + "/jobs", method="POST", headers=as_json,
                          body_producer=lambda write: asyncio.ensure_future(_produce(write)))
    chunked = await fetch_any(http_client, request)
    assert chunked.code == 413
    just_fits = "{" + " " * (64 * 1024 - 2) + "}"  # (the POSTs take no fields: an empty object)
    assert (await call(http_client, base_url, "/jobs", "POST", just_fits, as_json)).code == 201


async def _produce(write):
    for _ in range(70):
        await write(b"x" * 1024)


# -- access rules ------------------------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.calo_env(CALO_API_TOKEN="s3cret-token")
async def test_the_api_token_guards_writes_only(http_server, http_client, base_url):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        answer = await call(http_client, base_url, "/jobs", "POST", "", headers)
        assert answer.code == 401 and json.loads(answer.body)["error"]["code"] == "unauthorized"
        assert "s3cret" not in answer.body.decode()
    created = await call(http_client, base_url, "/jobs", "POST", "", {"Authorization": "Bearer s3cret-token"})
    assert created.code == 201
    assert (await call(http_client, base_url, "/jobs")).code == 200
    retry = await call(http_client, base_url, f"/jobs/{json.loads(created.body)['id']}/retry", "POST", "")
    assert retry.code == 401


@pytest.mark.gen_test
@pytest.mark.calo_flags("--private")
@pytest.mark.calo_env(CALO_API_TOKEN="s3cret-token")
async def test_private_mode_guards_reads_and_the_websocket(http_server, http_client, base_url):
    assert (await call(http_client, base_url, "/jobs")).code == 401
    assert (await call(http_client, base_url, "/jobs", headers={"Authorization": "Bearer s3cret-token"})).code == 200
    ws_url = base_url.replace("http", "ws") + "/ws"
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(ws_url)
    assert refused.value.code == 401
    ws = await websocket_connect(ws_url + "?access_token=s3cret-token")
    assert (await next_events(ws))[0]["type"] == "hello"
    ws.close()


@pytest.mark.gen_test
@pytest.mark.calo_flags("--allowed-origins", "https://dash.example:8443")
async def test_allowed_origins_get_cors_and_the_websocket(http_server, http_client, base_url):
    allowed, other = {"Origin": "https://dash.example:8443"}, {"Origin": "https://evil.example"}
    answer = await call(http_client, base_url, "/jobs", headers=allowed)
    assert answer.headers["Access-Control-Allow-Origin"] == "https://dash.example:8443"
    assert "Link" in answer.headers["Access-Control-Expose-Headers"]
    preflight = await call(http_client, base_url, "/jobs", "OPTIONS", headers={
        **allowed, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "idempotency-key"})
    assert preflight.code == 204 and "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Origin" not in (await call(http_client, base_url, "/jobs", headers=other)).headers
    not_found = await call(http_client, base_url, "/jobs/nope", headers=allowed)
    assert not_found.code == 404 and not_found.headers["Access-Control-Allow-Origin"] == allowed["Origin"]
    ws_url = base_url.replace("http", "ws") + "/ws"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=allowed))
    assert (await next_events(ws))[0]["type"] == "hello"
    ws.close()
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(ws_url, headers=other))
    assert refused.value.code == 403


@pytest.mark.gen_test
async def test_without_a_list_there_is_no_cors_and_foreign_websockets_are_refused(http_server, http_client, base_url):
    answer = await call(http_client, base_url, "/jobs", headers={"Origin": "https://dash.example"})
    assert "Access-Control-Allow-Origin" not in answer.headers
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(base_url.replace("http", "ws") + "/ws",
                                            headers={"Origin": "https://dash.example"}))
    assert refused.value.code == 403
