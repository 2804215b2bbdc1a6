"""Executing jobs: due-time scheduling, the Unsplash conversation, retries and failures.
Calo Jobs runs in-process; Unsplash is the fake over a real loopback socket."""

from __future__ import annotations

import pytest

from calo.clock import parse_iso_utc
from tests.helpers import ACCESS_KEY, create_jobs, job, settled, wait_until

IMAGE_FIELDS = {"source", "url", "thumb_url", "width", "height", "color", "blur_hash", "alt",
                "photographer", "unsplash_url"}


@pytest.mark.gen_test
async def test_jobs_resolve_at_their_due_time_with_an_unsplash_photo(calo, fake_unsplash):
    ids = await create_jobs(calo, 6)
    for done in await settled(calo, ids):
        assert done["status"] == "resolved" and done["attempts"] == 1 and done["error"] is None
        assert parse_iso_utc(done["resolved_at"]) >= parse_iso_utc(done["due_at"])
        image = done["image"]
        assert set(image) == IMAGE_FIELDS and image["source"] == "unsplash"
        assert done["result"] == image["url"] and image["url"].startswith(fake_unsplash.url + "/img/")
        assert image["thumb_url"].startswith(fake_unsplash.url + "/img/")
        assert image["unsplash_url"].startswith("https://unsplash.com/photos/")
        assert image["photographer"]["name"] and image["photographer"]["profile_url"].startswith("https://unsplash.com/@")
        assert isinstance(image["width"], int) and image["color"].startswith("#")
    assert len({done["result"] for done in await settled(calo, ids)}) == 6  # no photo given twice


@pytest.mark.gen_test
async def test_the_request_to_unsplash_is_as_documented(calo, fake_unsplash):
    await settled(calo, await create_jobs(calo, 1))
    call = fake_unsplash.calls()[0]
    assert call["path"] == "/photos/random"
    assert call["query"] == {"query": "food", "count": "30"}
    assert call["headers"]["Authorization"] == f"Client-ID {ACCESS_KEY}"
    assert call["headers"]["Accept-Version"] == "v1"


@pytest.mark.gen_test
@pytest.mark.calo_flags("--unsplash-batch", "1")
async def test_without_batching_each_job_makes_one_plain_request(calo, fake_unsplash):
    await settled(calo, await create_jobs(calo, 3))
    assert [call["query"] for call in fake_unsplash.calls()] == [{"query": "food"}] * 3


@pytest.mark.gen_test
async def test_one_batch_serves_many_jobs(calo, fake_unsplash):
    await settled(calo, await create_jobs(calo, 20))
    assert fake_unsplash.photo_requests_count <= 3  # due times spread over 0.2-0.6 s


@pytest.mark.gen_test
async def test_transient_failures_are_retried_then_the_job_resolves(calo, fake_unsplash):
    fake_unsplash.fail_with(503, times=2)
    [done] = await settled(calo, await create_jobs(calo, 1))
    assert done["status"] == "resolved" and done["attempts"] == 3 and done["error"] is None


@pytest.mark.gen_test
async def test_dropped_connections_are_retried(calo, fake_unsplash):
    fake_unsplash.drop_connections(times=1)
    [done] = await settled(calo, await create_jobs(calo, 1))
    assert done["status"] == "resolved" and done["attempts"] == 2


@pytest.mark.gen_test
@pytest.mark.calo_flags("--max-attempts", "3")
async def test_a_job_fails_with_a_clear_error_after_the_last_attempt(calo, fake_unsplash):
    fake_unsplash.fail_with(500)
    [done] = await settled(calo, await create_jobs(calo, 1), timeout=15)
    assert done["status"] == "failed" and done["attempts"] == 3 and done["result"] is None
    assert done["error"]["code"] == "upstream_unavailable" and "500" in done["error"]["message"]
    assert done["resolved_at"] is not None
    assert fake_unsplash.photo_requests_count == 3  # one probe at a time while failing


@pytest.mark.gen_test
@pytest.mark.calo_env(CALO_UNSPLASH_ACCESS_KEY="wrong-key")
async def test_a_rejected_access_key_fails_the_job_at_once(calo, fake_unsplash):
    [done] = await settled(calo, await create_jobs(calo, 1))
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"]["code"] == "unsplash_access_key_rejected"
    assert "access key" in done["error"]["message"] and "wrong-key" not in done["error"]["message"]
    assert fake_unsplash.photo_requests_count == 1


@pytest.mark.gen_test
async def test_urls_that_are_not_absolute_http_are_never_stored(calo, fake_unsplash):
    fake_unsplash.set_photo_override({
        "urls": {"small": "javascript:alert(1)"}, "links": {"html": "/relative"},
        "user": {"name": "<img src=x onerror=alert(1)>", "links": {"html": "data:text/html,hi"}},
    })
    [done] = await settled(calo, await create_jobs(calo, 1))
    image = done["image"]
    assert image["url"].startswith("http://") and image["thumb_url"] is None
    assert image["unsplash_url"] is None and image["photographer"]["profile_url"] is None
    assert image["photographer"]["name"] == "<img src=x onerror=alert(1)>"  # data, shown as text


@pytest.mark.gen_test
async def test_a_photo_without_a_usable_url_is_not_used(calo, fake_unsplash):
    fake_unsplash.set_photo_override({"urls": {"regular": "javascript:alert(1)"}})
    ids = await create_jobs(calo, 1)
    await wait_until(lambda: job(calo, ids[0])["attempts"] >= 1)
    fake_unsplash.set_photo_override(None)
    [done] = await settled(calo, ids)
    assert done["status"] == "resolved" and done["result"].startswith("http://")


@pytest.mark.gen_test
@pytest.mark.calo_env(CALO_UNSPLASH_ACCESS_KEY="")
async def test_without_a_key_jobs_resolve_with_bundled_demo_images(
    calo, fake_unsplash, http_server, http_client, base_url
):
    [done] = await settled(calo, await create_jobs(calo, 1))
    image = done["image"]
    assert done["status"] == "resolved" and image["source"] == "demo" and set(image) == IMAGE_FIELDS
    assert image["url"].startswith(base_url + "/static/demo/") and image["alt"]  # absolute, as Unsplash's
    assert done["result"] == image["url"] == image["thumb_url"]
    served = await http_client.fetch(image["url"])
    assert served.code == 200 and b"<svg" in served.body
    assert fake_unsplash.photo_requests_count == 0


@pytest.mark.gen_test
@pytest.mark.calo_flags("--delay-min", "5", "--delay-max", "300", "--delay-step", "5")
async def test_default_style_delays_come_from_the_steps(calo):
    ids = await create_jobs(calo, 40)
    delays = {job(calo, i)["delay_seconds"] for i in ids}
    assert delays <= {5.0 * k for k in range(1, 61)} and len(delays) > 5
