"""The REST API contract, against Calo Jobs served in-process over real loopback HTTP."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from tests.helpers import assert_error, body, call, create, wait_until

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
JOB_FIELDS = {"id", "status", "result", "created_at", "due_at", "resolved_at",
              "delay_seconds", "attempts", "error", "image"}


@pytest.mark.gen_test
async def test_post_creates_a_pending_job_committed_before_the_answer(http_server, http_client, base_url, calo):
    response = await create(http_client, base_url)
    assert response.code == 201
    job = body(response)
    assert set(job) == JOB_FIELDS
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "pending" and job["result"] is None and job["image"] is None
    assert job["error"] is None and job["resolved_at"] is None and job["attempts"] == 0
    assert ISO.fullmatch(job["created_at"]) and ISO.fullmatch(job["due_at"])
    assert job["delay_seconds"] in (0.2, 0.4, 0.6)
    # Committed: a fresh connection to the database file sees it at once.
    import sqlite3
    with sqlite3.connect(calo.storage.path) as conn:
        assert conn.execute("SELECT status FROM jobs WHERE id = ?", (job["id"],)).fetchone() == ("pending",)


@pytest.mark.gen_test
@pytest.mark.parametrize("payload", ["", "{}", " { } "])
async def test_post_accepts_an_empty_body_or_an_object(http_server, http_client, base_url, payload):
    assert (await create(http_client, base_url, body=payload)).code == 201


@pytest.mark.gen_test
@pytest.mark.parametrize("payload", ["{", "[]", "3", '"text"', "\xff", "[" * 50_000])
async def test_post_rejects_a_body_that_is_not_a_json_object(http_server, http_client, base_url, payload):
    assert_error(await create(http_client, base_url, body=payload), 400, "bad_json")


@pytest.mark.gen_test
@pytest.mark.parametrize("payload", ['{"ignored": 1}', '{"delay_seconds": 5}', '{"": null}'])
async def test_post_refuses_fields_it_does_not_take(http_server, http_client, base_url, payload):
    assert_error(await create(http_client, base_url, body=payload), 400, "unknown_field")


@pytest.mark.gen_test
async def test_idempotency_key_returns_the_same_job_and_creates_nothing(http_server, http_client, base_url):
    first = await create(http_client, base_url, key="press-1")
    again = await create(http_client, base_url, key="press-1")
    other = await create(http_client, base_url, key="press-2")
    assert first.code == 201 and again.code == 200 and other.code == 201
    assert body(again)["id"] == body(first)["id"] != body(other)["id"]
    assert again.headers["Location"] == f"/jobs/{body(first)['id']}"
    listed = body(await call(http_client, base_url, "/jobs"))
    assert len(listed) == 2


@pytest.mark.gen_test
@pytest.mark.parametrize("key", ["", "a" * 201, "has space", "tab\there", "é"])
async def test_bad_idempotency_keys_are_refused(http_server, http_client, base_url, key):
    response = await create(http_client, base_url, key=key)
    assert_error(response, 400, "bad_idempotency_key")


@pytest.mark.gen_test
async def test_longest_idempotency_key_is_accepted(http_server, http_client, base_url):
    assert (await create(http_client, base_url, key="~" * 200)).code == 201


@pytest.mark.gen_test
async def test_get_job_and_unknown_ids(http_server, http_client, base_url):
    job = body(await create(http_client, base_url))
    fetched = await call(http_client, base_url, f"/jobs/{job['id']}")
    assert fetched.code == 200 and body(fetched) == job
    for bad_id in ["nope", "x" * 5000, quote("\x00\xff"), "%FF%FE", quote("' OR 1=1 --")]:
        assert_error(await call(http_client, base_url, f"/jobs/{bad_id}"), 404)


@pytest.mark.gen_test
async def test_list_is_a_top_level_array_newest_first_with_status_filter(http_server, http_client, base_url, calo):
    ids = [body(await create(http_client, base_url))["id"] for _ in range(5)]
    listed = await call(http_client, base_url, "/jobs")
    assert listed.code == 200 and "Link" not in listed.headers
    assert [job["id"] for job in body(listed)] == ids[::-1]

    async def listed_by_status():
        return {status: body(await call(http_client, base_url, f"/jobs?status={status}"))
                for status in ("pending", "resolved")}

    # However far the jobs have got (the first is due 0.2 s after its POST), each list
    # holds only jobs of its status, newest first.
    for status, jobs in (await listed_by_status()).items():
        assert all(job["status"] == status for job in jobs)
        assert [job["id"] for job in jobs] == [i for i in ids[::-1] if i in {job["id"] for job in jobs}]

    async def all_resolved():  # one read: a job may resolve between two
        resolved = body(await call(http_client, base_url, "/jobs?status=resolved"))
        return resolved if len(resolved) == 5 else None

    resolved = await wait_until(all_resolved)
    assert [job["id"] for job in resolved] == ids[::-1]
    assert all(job["result"] == job["image"]["url"] for job in resolved)
    assert body(await call(http_client, base_url, "/jobs?status=pending")) == []  # a job never goes back


@pytest.mark.gen_test
async def test_paging_follows_link_headers_through_every_job_once(http_server, http_client, base_url):
    ids = [body(await create(http_client, base_url))["id"] for _ in range(23)]
    seen, url, pages = [], base_url + "/jobs?limit=5", 0
    while url and pages < 10:
        response = await http_client.fetch(url)
        seen += [job["id"] for job in body(response)]
        match = re.fullmatch(r'<([^>]+)>; rel="next"', response.headers.get("Link", ""))
        url, pages = (match.group(1) if match else None), pages + 1
    assert pages == 5 and seen == ids[::-1]


@pytest.mark.gen_test
@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=",
                                   "status=done", "status=", "cursor=!!!", "cursor=bm90LWEtY3Vyc29y"])
async def test_bad_list_parameters_are_400(http_server, http_client, base_url, query):
    assert_error(await call(http_client, base_url, f"/jobs?{query}"), 400, "bad_parameter")


@pytest.mark.gen_test
async def test_limit_bounds_are_accepted(http_server, http_client, base_url):
    for limit in (1, 1000):
        assert (await call(http_client, base_url, f"/jobs?limit={limit}")).code == 200


@pytest.mark.gen_test
async def test_unknown_routes_and_methods_answer_json_errors(http_server, http_client, base_url):
    assert_error(await call(http_client, base_url, "/nowhere"), 404, "not_found")
    assert_error(await call(http_client, base_url, "/jobs/1/2"), 404, "not_found")
    assert_error(await call(http_client, base_url, "/jobs", "DELETE"), 405, "method_not_allowed")
    assert_error(await call(http_client, base_url, "/jobs/abc", "PUT", body="{}"), 405, "method_not_allowed")
