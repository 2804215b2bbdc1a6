"""The page in a real headless Chromium (issue 3), against real `python server.py`
processes and the fake Unsplash: create, live updates, restart and reconnect, the
offline queue, escaping of Unsplash text, the bookmarkable detail view, paging.

One browser for the module, a fresh context (cookies, storage, offline state) per test
(the `browser` and `page` fixtures, in conftest.py).
Every wait is one of Playwright's auto-retrying expectations with a deadline, never a
sleep. A missing browser fails these tests, it never skips them: `bash scripts/test.sh`
installs it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.e2e_helpers import RECONNECT_MS, WAIT_MS, api_jobs, card, open_dashboard, wait_until_loaded
from tests.helpers import ServerProcess, poll

pytestmark = pytest.mark.e2e

SHORT_DELAYS = ("--delay-min", "1", "--delay-max", "2", "--delay-step", "1")
UTM = "utm_source=calo_jobs&utm_medium=referral"

# Records, in the page itself, every status each job card has shown, in order. A reload
# would wipe `window.__statuses`, so reading it back also proves there was none.
TRACK_STATUSES = """() => {
  const seen = (window.__statuses = {});
  const note = (card) => {
    const id = card.dataset.jobId;
    if (!id) return;
    const statuses = (seen[id] ??= []);
    if (statuses[statuses.length - 1] !== card.dataset.status) statuses.push(card.dataset.status);
  };
  const list = document.querySelector('[data-testid=job-list]');
  list.querySelectorAll('[data-testid=job-item]').forEach(note);
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.type === 'attributes') note(record.target);
      for (const node of record.addedNodes) {
        if (node.nodeType !== Node.ELEMENT_NODE) continue;
        node.querySelectorAll('[data-testid=job-item]').forEach(note);
      }
    }
  }).observe(list, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
}"""


# -- helpers -------------------------------------------------------------------------


def resolved_job(server: ServerProcess, job_id: str) -> dict:
    """The job as the API shows it, once it has resolved."""
    def resolved() -> dict | None:
        job = server.get(f"/jobs/{job_id}").json()
        return job if job["status"] == "resolved" else None

    return poll(resolved, timeout=15)


def shown_ids(page: Page) -> list[str]:
    return page.get_by_test_id("job-item").evaluate_all("cards => cards.map((card) => card.dataset.jobId)")


def statuses_seen(page: Page) -> dict[str, list[str]]:
    return page.evaluate("() => window.__statuses")


# -- tests ---------------------------------------------------------------------------


def test_create_job_button_makes_a_job_that_resolves_live_without_reload(server_process, page):
    server = server_process(*SHORT_DELAYS)
    open_dashboard(page, server)
    expect(page.get_by_test_id("empty-state")).to_be_visible(timeout=WAIT_MS)
    page.evaluate(TRACK_STATUSES)

    page.get_by_test_id("create-job").click()
    item = page.get_by_test_id("job-item")
    expect(item).to_have_count(1, timeout=WAIT_MS)
    expect(item).to_have_attribute("data-status", "pending", timeout=WAIT_MS)
    [job] = api_jobs(server)
    expect(item).to_have_attribute("data-job-id", job["id"])
    expect(item).to_have_attribute("href", f"#/jobs/{job['id']}")

    expect(item).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    thumb_url = server.get(f"/jobs/{job['id']}").json()["image"]["thumb_url"]
    expect(item.locator("img")).to_have_attribute("src", thumb_url)
    wait_until_loaded(page, "[data-testid=job-item] img")  # the fake's photo really loaded
    assert statuses_seen(page) == {job["id"]: ["pending", "resolved"]}  # same document throughout
    assert page.url == server.url + "/"


def test_page_reconnects_to_a_restarted_server_and_shows_what_it_resolved(server_process, page, fake_unsplash):
    fake_unsplash.set_delay(60)  # no photo before the restart, however slow this machine is
    server = server_process("--delay-min", "3", "--delay-max", "3", "--delay-step", "1")
    open_dashboard(page, server)
    page.evaluate(TRACK_STATUSES)
    page.get_by_test_id("create-job").click()
    by_curl = server.post("/jobs").json()["id"]
    # The job made by curl appears live, without a reload.
    expect(card(page, by_curl)).to_have_attribute("data-status", "pending", timeout=WAIT_MS)
    pending = page.locator("[data-testid=job-item][data-status=pending]")
    expect(pending).to_have_count(2, timeout=WAIT_MS)
    ids = {job["id"] for job in api_jobs(server)}
    assert by_curl in ids and len(ids) == 2

    old_url = server.url
    server.kill()  # both jobs are still pending when the process dies
    fake_unsplash.set_delay(0)
    connection = page.get_by_test_id("connection-state")
    expect(connection).to_have_text("reconnecting", timeout=WAIT_MS)
    # The same data dir (the fixture's) and the same port: the page reconnects to its origin.
    server = server_process("--port", str(urlsplit(old_url).port), *SHORT_DELAYS)
    assert server.url == old_url
    # The page retries with jittered backoff capped at 15 s: allow one full wait past the cap.
    expect(connection).to_have_text("live", timeout=RECONNECT_MS)
    for job_id in ids:
        expect(card(page, job_id)).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    assert {job["id"] for job in api_jobs(server) if job["status"] == "resolved"} == ids

    # Live again: a job made by curl on the new server appears and resolves in place.
    later = server.post("/jobs").json()["id"]
    expect(card(page, later)).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    expect(page.get_by_test_id("job-item")).to_have_count(3)
    assert statuses_seen(page) == {job_id: ["pending", "resolved"] for job_id in (*ids, later)}


def test_create_while_offline_is_queued_and_makes_exactly_one_job_when_back(server_process, page):
    server = server_process(*SHORT_DELAYS)
    keys_sent: list[str] = []

    def note_key(request) -> None:
        if request.method == "POST":
            keys_sent.append(request.headers.get("idempotency-key"))

    page.on("request", note_key)
    open_dashboard(page, server)
    page.context.set_offline(True)
    expect(page.get_by_test_id("connection-state")).to_have_text("offline", timeout=WAIT_MS)

    page.get_by_test_id("create-job").click()
    queued = page.get_by_test_id("queued-item")
    expect(queued).to_have_count(1, timeout=WAIT_MS)
    expect(queued).to_contain_text("queued (offline)")
    expect(page.get_by_test_id("offline-banner")).to_contain_text("1 job is queued", timeout=WAIT_MS)
    assert api_jobs(server) == []

    page.context.set_offline(False)
    expect(queued).to_have_count(0, timeout=WAIT_MS)  # gone only once the server answered
    item = page.get_by_test_id("job-item")
    expect(item).to_have_count(1, timeout=WAIT_MS)
    [job] = api_jobs(server)
    expect(item).to_have_attribute("data-job-id", job["id"])
    expect(item).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=WAIT_MS)
    expect(page.get_by_test_id("offline-banner")).to_be_hidden()
    assert len(api_jobs(server)) == 1
    assert keys_sent and len(set(keys_sent)) == 1, keys_sent  # every try was the same press


def test_create_whose_answer_was_lost_is_retried_and_still_makes_one_job(server_process, page):
    server = server_process(*SHORT_DELAYS)
    answers: list[tuple[str, int]] = []

    def lose_the_first_answer(route) -> None:
        """The POST reaches the server (which commits the job), but the first answer
        never reaches the page, as when a connection drops mid-response."""
        if route.request.method != "POST":
            route.fallback()
            return
        response = route.fetch()
        answers.append((route.request.headers.get("idempotency-key"), response.status))
        if len(answers) == 1:
            route.abort("connectionreset")
        else:
            route.fulfill(response=response)

    page.route("**/jobs", lose_the_first_answer)
    open_dashboard(page, server)
    page.get_by_test_id("create-job").click()
    expect(page.get_by_test_id("queued-item")).to_have_count(1, timeout=WAIT_MS)  # waiting to retry
    expect(page.get_by_test_id("queued-item")).to_have_count(0, timeout=WAIT_MS)  # the retry got its answer
    item = page.get_by_test_id("job-item")
    expect(item).to_have_count(1, timeout=WAIT_MS)
    page.unroute_all(behavior="wait")

    [job] = api_jobs(server)
    expect(item).to_have_attribute("data-job-id", job["id"])
    assert [status for _, status in answers] == [201, 200]  # created once, then recognised
    assert answers[0][0] == answers[1][0]


NASTY_NAME = "<img src=x onerror=alert(1)>"
NASTY_ALT = '<b>bold</b><script>alert(2)</script> "ramen" & co'


def test_unsplash_text_is_shown_literally_and_never_runs(server_process, fake_unsplash, page, seen):
    fake_unsplash.set_photo_override({"user": {"name": NASTY_NAME}, "alt_description": NASTY_ALT})
    server = server_process(*SHORT_DELAYS)
    job_id = server.post("/jobs").json()["id"]
    image = resolved_job(server, job_id)["image"]
    assert (image["photographer"]["name"], image["alt"]) == (NASTY_NAME, NASTY_ALT)  # it reaches the page

    open_dashboard(page, server)
    expect(card(page, job_id)).to_contain_text(f"Photo by {NASTY_NAME}", timeout=WAIT_MS)
    card(page, job_id).click()
    detail = page.get_by_test_id("job-detail")
    expect(detail.locator(f'article[data-job-id="{job_id}"]')).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_test_id("photographer")).to_contain_text(f"Photo by {NASTY_NAME} on Unsplash")
    expect(detail).to_contain_text(NASTY_ALT)
    expect(detail.locator(f'img[src="{image["url"]}"]')).to_have_attribute("alt", NASTY_ALT)
    wait_until_loaded(page, "[data-testid=job-detail] img")

    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("main script, main b").count() == 0
    assert seen.dialogs == []


def expect_detail(page: Page, job: dict) -> None:
    """The detail view shows `job` (resolved): its id, the large photo, the credits."""
    image = job["image"]
    detail = page.get_by_test_id("job-detail")
    expect(detail).to_be_visible(timeout=WAIT_MS)
    article = detail.locator("article")
    expect(article).to_have_attribute("data-job-id", job["id"], timeout=WAIT_MS)
    expect(article).to_have_attribute("data-status", "resolved")
    expect(detail.get_by_role("heading", level=1)).to_contain_text(job["id"])
    photo = detail.locator(f'img[src="{image["url"]}"]')  # the regular size, not the thumbnail
    expect(photo).to_be_visible()
    wait_until_loaded(page, "[data-testid=job-detail] img")
    box = photo.bounding_box()
    # Shown large (a list thumbnail is ~275 px wide). The frame takes the photo's shape, and
    # the fake's photos run from 3:2 to 1:2: a tall one is capped in height and narrower.
    assert box is not None and max(box["width"], box["height"]) > 400, box

    credit = page.get_by_test_id("photographer")
    name = image["photographer"]["name"]
    expect(credit).to_have_text(f"Photo by {name} on Unsplash")
    profile = image["photographer"]["profile_url"]
    expect(credit.get_by_role("link", name=name, exact=True)).to_have_attribute("href", f"{profile}?{UTM}")
    unsplash = credit.get_by_role("link", name="Unsplash", exact=True)
    expect(unsplash).to_have_attribute("href", f"https://unsplash.com/?{UTM}")
    photo_page = detail.get_by_role("link", name="View on Unsplash")
    expect(photo_page).to_have_attribute("href", f"{image['unsplash_url']}?{UTM}")
    expect(page.get_by_test_id("result-link")).to_have_attribute("href", job["result"])


def test_job_detail_url_can_be_bookmarked_and_reloaded(server_process, page):
    server = server_process(*SHORT_DELAYS)
    job = resolved_job(server, server.post("/jobs").json()["id"])

    page.goto(f"{server.url}/#/jobs/{job['id']}")
    expect_detail(page, job)
    page.reload()
    expect_detail(page, job)
    assert page.url == f"{server.url}/#/jobs/{job['id']}"

    page.get_by_test_id("back-link").click()
    expect(card(page, job["id"])).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    expect(page.get_by_test_id("job-detail")).to_be_hidden()

    page.goto(f"{server.url}/#/jobs/no-such-job")
    expect(page.get_by_test_id("job-detail")).to_contain_text("Job not found", timeout=WAIT_MS)


def test_list_renders_one_page_at_a_time_and_load_more_adds_the_next(server_process, page):
    server = server_process("--delay-min", "300", "--delay-max", "300", "--delay-step", "5")
    with requests.Session() as session:
        created = [session.post(server.url + "/jobs", timeout=10).json()["id"] for _ in range(250)]

    console: list[str] = []  # what the page said, for the message if a page never comes (seen once under load)
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    open_dashboard(page, server)
    items = page.get_by_test_id("job-item")
    load_more = page.get_by_test_id("load-more")
    expect(items).to_have_count(100, timeout=WAIT_MS)
    expect(load_more).to_be_visible()
    assert set(shown_ids(page)) == set(created[-100:])  # newest first

    load_more.click()
    expect(items).to_have_count(200, timeout=WAIT_MS)
    assert set(shown_ids(page)) == set(created[-200:])
    load_more.click()
    try:
        expect(items).to_have_count(250, timeout=WAIT_MS)
    except AssertionError as exc:
        toasts = page.get_by_test_id("toast").all_text_contents()
        raise AssertionError(f"{exc}\ntoasts: {toasts}\nconsole: {console[-20:]}\nlog: {server.lines[-20:]}") from None
    expect(load_more).to_be_hidden()
    assert sorted(shown_ids(page)) == sorted(created)


# The document position of an element once it has held still for a few frames (layout,
# then a ResizeObserver, then its style change each take a frame).
SETTLED_TOP = """async (element) => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const top = () => element.getBoundingClientRect().top + window.scrollY;
  let last = top(), still = 0;
  for (let i = 0; i < 300 && still < 3; i++) {
    await frame();
    const now = top();
    still = now === last ? still + 1 : 0;
    last = now;
  }
  return last;
}"""


@pytest.mark.parametrize("width", [1280, 700, 360])
def test_scrolling_down_to_load_more_does_not_move_it(server_process, page, width):
    # Cards far below the screen are not laid out yet; they stand in at the height the
    # cards on screen measure. A fixed guess (290 px against 352 px measured at 1280 px)
    # moved the button by 434 px as it came into view, under the user's pointer.
    server = server_process("--delay-min", "300", "--delay-max", "300", "--delay-step", "5")
    with requests.Session() as session:
        for _ in range(150):
            assert session.post(server.url + "/jobs", timeout=10).status_code == 201
    page.set_viewport_size({"width": width, "height": 800})
    open_dashboard(page, server)
    expect(page.get_by_test_id("job-item")).to_have_count(100, timeout=WAIT_MS)
    load_more = page.get_by_test_id("load-more")
    before = load_more.evaluate(SETTLED_TOP)
    load_more.evaluate("element => element.scrollIntoView({ block: 'center' })")
    after = load_more.evaluate(SETTLED_TOP)
    assert abs(after - before) <= 1, (width, before, after)
