"""The dashboard in a real headless Chromium (issue 13), against real `python server.py`
processes and the fake Unsplash: acting on jobs (retry from a card and from the detail
view, retry all failed, cancel), the timeline filling live, the counts and charts moving,
the upstream banner, the reconnecting banner, thumbnails after a reconnect, the local/UTC
switch, phone width, and an accessibility audit with axe-core (vendored in tests/vendor/,
for the tests only).

Every wait is one of Playwright's auto-retrying expectations with a deadline, never a sleep.
"""

from __future__ import annotations

import os
import re
import signal
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests.e2e_helpers import RECONNECT_MS, WAIT_MS, api_jobs, card, open_dashboard, wait_until_loaded
from tests.helpers import ServerProcess, poll

pytestmark = pytest.mark.e2e

SHORT = ("--delay-min", "1", "--delay-max", "2", "--delay-step", "1")
LONG = ("--delay-min", "300", "--delay-max", "300", "--delay-step", "5")
FAIL_FAST = ("--max-attempts", "1", "--unsplash-batch", "1")
AXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor", "axe-core", "axe.min.js")


def failed_jobs(server: ServerProcess, fake, count: int) -> list[str]:
    """`count` jobs that failed (the fake answers 500), then the fake is healthy again."""
    fake.fail_with(500)
    ids = [server.post("/jobs").json()["id"] for _ in range(count)]
    poll(lambda: server.get("/stats").json()["counts"]["failed"] == count, timeout=20)
    fake.clear_faults()
    return ids


def timeline_types(page: Page) -> list[str]:
    return page.get_by_test_id("timeline").locator("li").evaluate_all("items => items.map((i) => i.dataset.type)")


# -- acting on jobs -------------------------------------------------------------------------


def test_retry_from_a_card_and_from_the_detail_view(server_process, fake_unsplash, page):
    server = server_process(*SHORT, *FAIL_FAST)
    first, second = failed_jobs(server, fake_unsplash, 2)
    open_dashboard(page, server)
    expect(card(page, first)).to_have_attribute("data-status", "failed", timeout=WAIT_MS)

    retry = page.locator(f'[data-testid=card-retry][aria-label="Retry job {first}"]')
    expect(retry).to_be_visible()
    retry.click()
    expect(card(page, first)).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    assert server.get(f"/jobs/{first}").json()["status"] == "resolved"

    card(page, second).click()
    detail = page.get_by_test_id("job-detail")
    expect(detail.locator("article")).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(page.get_by_test_id("timeline").locator("li")).to_have_count(2, timeout=WAIT_MS)
    page.get_by_test_id("detail-retry").click()
    expect(detail.locator("article")).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    # The timeline keeps the try before the retry, and filled in without a reload.
    expect(page.get_by_test_id("timeline").locator("li")).to_have_count(4, timeout=WAIT_MS)
    assert timeline_types(page) == ["job.created", "job.failed", "job.retried", "job.resolved"]
    expect(page.get_by_test_id("timeline")).to_contain_text("Failed after 1 try")
    expect(page.get_by_test_id("timeline")).to_contain_text("after due")
    expect(page.get_by_test_id("detail-lateness")).to_contain_text("after due")


def test_retry_all_failed_asks_with_the_count_and_retries_them_in_one_request(server_process, fake_unsplash, page):
    server = server_process(*SHORT, *FAIL_FAST)
    ids = failed_jobs(server, fake_unsplash, 3)
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    open_dashboard(page, server)
    button = page.get_by_test_id("retry-all")
    expect(button).to_have_text("Retry all failed (3)", timeout=WAIT_MS)
    expect(page.locator("[data-count=failed]")).to_have_text("3")

    button.click()
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("3 failed jobs go back to pending")
    page.get_by_test_id("confirm-cancel").click()  # first, say no: nothing happens
    expect(dialog).to_be_hidden()
    assert posts == []

    button.click()
    expect(page.get_by_test_id("confirm-ok")).to_have_text("Retry 3 jobs")
    page.get_by_test_id("confirm-ok").click()
    for job_id in ids:
        expect(card(page, job_id)).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    expect(button).to_be_hidden(timeout=WAIT_MS)  # no failed job is left
    assert [urlsplit(url).path for url in posts] == ["/jobs/retry-failed"]
    expect(page.get_by_test_id("toast")).to_contain_text("3 jobs retried")


def test_cancel_a_pending_job_from_its_detail_view_and_from_its_card(server_process, page):
    server = server_process(*LONG)
    first = server.post("/jobs").json()["id"]
    second = server.post("/jobs").json()["id"]
    open_dashboard(page, server)
    page.locator(f'[data-testid=card-cancel][aria-label="Cancel job {second}"]').click()
    expect(card(page, second)).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)

    card(page, first).click()
    page.get_by_test_id("detail-cancel").click()
    article = page.get_by_test_id("job-detail").locator("article")
    expect(article).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)
    expect(page.get_by_test_id("timeline").locator("li")).to_have_count(2, timeout=WAIT_MS)
    assert timeline_types(page) == ["job.created", "job.cancelled"]
    expect(page.get_by_test_id("detail-cancel")).to_have_count(0)

    page.get_by_test_id("back-link").click()
    page.get_by_test_id("filter-cancelled").click()
    expect(page.locator("[data-count=cancelled]")).to_have_text("2", timeout=WAIT_MS)
    expect(page.get_by_test_id("job-item")).to_have_count(2)
    assert {job["status"] for job in api_jobs(server)} == {"cancelled"}


# -- seeing what happened -------------------------------------------------------------------


def test_the_timeline_fills_live_and_times_switch_between_local_and_utc(server_process, browser):
    server = server_process("--delay-min", "3", "--delay-max", "3", "--delay-step", "1")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Asia/Tokyo")
    page = context.new_page()
    try:
        job_id = server.post("/jobs").json()["id"]
        page.goto(f"{server.url}/#/jobs/{job_id}")
        timeline = page.get_by_test_id("timeline")
        expect(timeline.locator("li")).to_have_count(1, timeout=WAIT_MS)
        expect(timeline.locator("li")).to_contain_text("Created")
        expect(timeline.locator("li")).to_have_count(2, timeout=WAIT_MS)  # resolved, live
        expect(timeline.locator("li").nth(1)).to_contain_text(re.compile(r"Resolved\s*\d\d:\d\d:\d\d\.\d{3}"))

        created = page.locator(".fact", has_text="Created").locator("dd")
        expect(created).to_contain_text("GMT+9")  # Tokyo's local time, with its zone
        expect(page.get_by_test_id("timeline-zone")).to_have_text("times in GMT+9")
        toggle = page.get_by_test_id("tz-toggle")
        toggle.click()
        expect(toggle).to_have_attribute("aria-pressed", "true")
        expect(created).to_contain_text("UTC")
        expect(page.get_by_test_id("timeline-zone")).to_have_text("times in UTC")
        page.reload()  # the choice is kept
        expect(page.locator(".fact", has_text="Created").locator("dd")).to_contain_text("UTC", timeout=WAIT_MS)
        toggle.click()
        expect(page.locator(".fact", has_text="Created").locator("dd")).to_contain_text("GMT+9")
    finally:
        context.close()


def test_counts_and_charts_move_as_jobs_resolve(server_process, page):
    server = server_process(*SHORT)
    open_dashboard(page, server)
    strip = page.get_by_test_id("status-strip")
    expect(page.get_by_test_id("stat-total")).to_have_text("0", timeout=WAIT_MS)
    expect(strip).to_have_attribute("data-ready", "true")
    for _ in range(3):
        server.post("/jobs").raise_for_status()
    expect(page.get_by_test_id("stat-total")).to_have_text("3", timeout=WAIT_MS)
    expect(page.get_by_test_id("stat-resolved")).to_have_text("3", timeout=WAIT_MS)
    expect(page.get_by_test_id("stat-pending")).to_have_text("0")
    expect(page.locator("[data-count=resolved]")).to_have_text("3")
    expect(page.locator("[data-count=all]")).to_have_text("3")
    expect(strip).to_have_attribute("data-created", "3")
    expect(strip).to_have_attribute("data-resolved", "3")
    for chart in ("chart-activity", "chart-lateness"):
        expect(page.get_by_test_id(chart).locator("canvas")).to_have_count(1)
    activity = page.get_by_test_id("chart-activity")
    expect(activity).to_have_attribute("aria-label", re.compile(r"3 jobs created and 3 resolved"))
    expect(page.get_by_test_id("chart-lateness")).to_have_attribute("aria-label", re.compile(r"after their due time"))
    expect(page.get_by_test_id("lateness").first).to_contain_text("after due")


def test_the_upstream_banner_appears_and_clears(server_process, fake_unsplash, page):
    server = server_process(*SHORT, "--rate-limit-pause", "4", "--unsplash-batch", "1")
    open_dashboard(page, server)
    banner = page.get_by_test_id("upstream-banner")
    expect(banner).to_be_hidden()

    fake_unsplash.fail_with(500)
    job = server.post("/jobs").json()["id"]
    expect(banner).to_be_visible(timeout=WAIT_MS)
    expect(banner).to_have_attribute("data-state", "failing")
    expect(banner).to_contain_text("Unsplash is failing since")
    fake_unsplash.clear_faults()
    expect(card(page, job)).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    expect(banner).to_be_hidden(timeout=WAIT_MS)

    fake_unsplash.reset_rate_limit(0)  # the hour's budget is spent
    server.post("/jobs").raise_for_status()
    expect(banner).to_have_attribute("data-state", "rate_limited", timeout=WAIT_MS)
    expect(banner).to_contain_text(re.compile(r"wait until \d\d:\d\d:\d\d"))
    fake_unsplash.reset_rate_limit(50)
    expect(banner).to_be_hidden(timeout=WAIT_MS)


def test_demo_mode_is_a_quiet_note(server_process, page):
    server = server_process(*SHORT, env={"CALO_UNSPLASH_ACCESS_KEY": ""})
    open_dashboard(page, server)
    banner = page.get_by_test_id("upstream-banner")
    expect(banner).to_have_attribute("data-state", "demo", timeout=WAIT_MS)
    expect(banner).to_have_class(re.compile(r"is-quiet"))
    expect(banner).to_contain_text("Demo mode")


def test_reconnecting_is_a_banner_after_a_few_seconds(server_process, page):
    server = server_process(*SHORT)
    open_dashboard(page, server)
    banner = page.get_by_test_id("reconnecting-banner")
    expect(banner).to_be_hidden()
    port = urlsplit(server.url).port
    server.kill()
    expect(page.get_by_test_id("connection-state")).to_have_text("reconnecting", timeout=WAIT_MS)
    expect(banner).to_be_visible(timeout=WAIT_MS)
    expect(banner).to_contain_text("Reconnecting")
    server_process("--port", str(port), *SHORT)
    expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=RECONNECT_MS)
    expect(banner).to_be_hidden()


def test_a_server_that_goes_silent_shows_as_reconnecting_within_half_a_minute(server_process, page):
    """SIGSTOP: the TCP connection stays open and says nothing, so only the page's own
    heartbeat (a ping every 20 s, 10 s for an answer) can notice. The page's clock is run
    forward through those 30 s rather than waited for."""
    server = server_process(*SHORT)
    page.clock.install()
    open_dashboard(page, server)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        page.clock.run_for(19_000)
        expect(page.get_by_test_id("connection-state")).to_have_text("live")  # no ping due yet
        page.clock.run_for(12_000)  # the ping at 20 s, unanswered at 30 s
        expect(page.get_by_test_id("connection-state")).to_have_text("reconnecting", timeout=WAIT_MS)
        expect(page.get_by_test_id("reconnecting-banner")).to_be_visible(timeout=WAIT_MS)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=RECONNECT_MS)
    expect(page.get_by_test_id("reconnecting-banner")).to_be_hidden()


# -- working everywhere ---------------------------------------------------------------------


def test_a_thumbnail_that_failed_loads_after_the_page_reconnects(server_process, page):
    server = server_process(*SHORT)
    job = server.post("/jobs").json()["id"]
    poll(lambda: server.get(f"/jobs/{job}").json()["status"] == "resolved", timeout=15)
    page.route("**/img/**", lambda route: route.abort("internetdisconnected"))  # the fake CDN
    open_dashboard(page, server)
    thumb = card(page, job).locator(".thumb")
    expect(thumb).to_have_class(re.compile(r"is-broken"), timeout=WAIT_MS)
    expect(thumb.get_by_test_id("image-fallback")).to_be_visible()  # designed, never an empty block
    page.unroute_all(behavior="wait")

    page.context.set_offline(True)
    expect(page.get_by_test_id("connection-state")).to_have_text("offline", timeout=WAIT_MS)
    page.context.set_offline(False)
    expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=RECONNECT_MS)
    expect(thumb).not_to_have_class(re.compile(r"is-broken"), timeout=WAIT_MS)
    wait_until_loaded(page, f'[data-job-id="{job}"] img')


def test_phone_width_keeps_the_name_the_dots_and_every_card_footer(server_process, fake_unsplash, browser):
    server = server_process(*SHORT, *FAIL_FAST)
    failed_jobs(server, fake_unsplash, 1)
    server.post("/jobs").raise_for_status()
    context = browser.new_context(viewport={"width": 360, "height": 780}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        open_dashboard(page, server)
        expect(page.locator("[data-testid=job-item][data-status=resolved]")).to_have_count(1, timeout=WAIT_MS)
        expect(page.get_by_test_id("card-retry")).to_be_visible()
        expect(page.locator(".brand-name")).to_be_visible()
        for status in ("pending", "resolved", "failed", "cancelled"):
            expect(page.locator(f".tab-dot-{status}")).to_be_visible()
            expect(page.get_by_test_id(f"filter-{status}")).to_be_in_viewport()
        clipped = page.evaluate("""() => {
          const out = [];
          const check = (el, what) => {
            if (el.scrollWidth > el.clientWidth + 1) out.push(`${what}: ${el.textContent.trim().slice(0, 40)}`);
          };
          check(document.documentElement, 'page');
          const boxes = '.brand, .brand-name, .topbar-actions, .tab, .tile';
          document.querySelectorAll(boxes).forEach((el) => check(el, el.className));
          document.querySelectorAll('.card-meta, .card-row, .card-body').forEach((el) => check(el, el.className));
          const vw = document.documentElement.clientWidth;
          document.querySelectorAll('.topbar-inner *, .card-action').forEach((el) => {
            const r = el.getBoundingClientRect();
            const name = el.className.baseVal ?? el.className;
            if (r.width && (r.right > vw + 0.5 || r.left < -0.5)) out.push(`off screen: ${name}`);
          });
          return out;
        }""")
        assert clipped == []
    finally:
        context.close()


def axe_violations(page: Page) -> list[str]:
    """Serious and critical axe-core violations on the page as it is now."""
    page.add_script_tag(path=AXE)
    results = page.evaluate("() => axe.run(document, { resultTypes: ['violations'] })")
    return [
        f"{violation['id']} ({violation['impact']}): {[node['target'] for node in violation['nodes']][:3]}"
        for violation in results["violations"] if violation["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_accessibility_violation_on_the_list_detail_and_empty_views(server_process, browser, scheme):
    server = server_process(*SHORT)
    # bypass_csp: axe is injected as a script tag, which the page's Content-Security-Policy
    # (scripts from the server only) rightly refuses; every other browser test runs under it.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme, bypass_csp=True)
    page = context.new_page()
    try:
        open_dashboard(page, server)
        expect(page.get_by_test_id("empty-state")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_test_id("status-strip")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
        assert axe_violations(page) == [], "empty view"

        job = server.post("/jobs").json()["id"]
        expect(card(page, job)).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
        server.post("/jobs").raise_for_status()  # and one still pending
        page.evaluate("() => new Promise((done) => setTimeout(done, 400))")  # let entrance animations finish
        assert axe_violations(page) == [], "list view"

        card(page, job).click()
        expect(page.get_by_test_id("timeline").locator("li")).to_have_count(2, timeout=WAIT_MS)
        assert axe_violations(page) == [], "detail view"

        page.keyboard.press("Escape")
        page.get_by_test_id("filter-all").focus()
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement.dataset.testid")
        assert focused == "filter-pending"  # the tabs are reachable by keyboard, in order
    finally:
        context.close()


# -- the API token --------------------------------------------------------------------------

TOKEN = "s3cret-t0ken-for-the-page"


def give_token(page: Page, value: str) -> None:
    dialog = page.get_by_test_id("token-dialog")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    page.get_by_test_id("token-input").fill(value)
    page.get_by_test_id("token-save").click()


def test_private_server_asks_for_the_token_once_per_tab_and_never_puts_it_in_a_url(server_process, page):
    server = server_process(*SHORT, "--private", env={"CALO_API_TOKEN": TOKEN})
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.goto(server.url + "/")
    give_token(page, "not-the-token")
    expect(page.get_by_test_id("token-error")).to_be_visible(timeout=WAIT_MS)  # says plainly it is wrong
    give_token(page, TOKEN)
    expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=RECONNECT_MS)
    expect(page.get_by_test_id("token-dialog")).to_be_hidden()
    expect(page.get_by_test_id("auth-banner")).to_be_hidden()

    page.get_by_test_id("create-job").click()
    item = page.get_by_test_id("job-item")
    expect(item).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    expect(page.get_by_test_id("stat-total")).to_have_text("1", timeout=WAIT_MS)
    item.click()
    expect(page.get_by_test_id("timeline").locator("li")).to_have_count(2, timeout=WAIT_MS)

    page.reload()  # kept for the tab's session: no second prompt
    expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=WAIT_MS)
    expect(page.get_by_test_id("token-dialog")).to_be_hidden()
    assert not [url for url in urls if TOKEN in url or "access_token" in url]
    assert any(urlsplit(url).path == "/ws" for url in urls)

    other_tab = page.context.new_page()  # a new tab's session starts without it
    other_tab.goto(server.url + "/")
    expect(other_tab.get_by_test_id("token-dialog")).to_be_visible(timeout=WAIT_MS)
    other_tab.close()


def test_a_token_for_writes_only_is_asked_for_when_creating_a_job(server_process, page):
    server = server_process(*SHORT, env={"CALO_API_TOKEN": TOKEN})
    open_dashboard(page, server)  # reads need no token
    expect(page.get_by_test_id("token-dialog")).to_be_hidden()
    page.get_by_test_id("create-job").click()
    give_token(page, TOKEN)
    item = page.get_by_test_id("job-item")
    expect(item).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    assert len(api_jobs(server)) == 1  # the press was kept, sent once with the token


def test_the_timeline_shows_each_failed_try_and_the_wait_for_the_rate_limit(server_process, fake_unsplash, page):
    server = server_process(*SHORT, "--unsplash-batch", "1", "--rate-limit-pause", "3")
    fake_unsplash.fail_with(500, times=2)
    job = server.post("/jobs").json()["id"]
    page.goto(f"{server.url}/#/jobs/{job}")
    timeline = page.get_by_test_id("timeline")
    expect(timeline.locator("li")).to_have_count(4, timeout=WAIT_MS)
    assert timeline_types(page) == ["job.created", "job.updated", "job.updated", "job.resolved"]
    expect(timeline.locator("li").nth(1)).to_contain_text("Try 1 failed")
    expect(timeline.locator("li").nth(2)).to_contain_text("Try 2 failed")
    expect(timeline.locator("li").nth(2)).to_contain_text("upstream_unavailable")
    expect(timeline.locator("li").nth(3)).to_contain_text("on try 3")

    fake_unsplash.reset_rate_limit(0)  # the hour's budget is spent: the job waits, it does not fail
    waiting = server.post("/jobs").json()["id"]
    page.goto(f"{server.url}/#/jobs/{waiting}")
    waited = timeline.locator('li[data-type="job.updated"]').first
    expect(waited).to_contain_text("Waiting for the rate limit", timeout=WAIT_MS)
    fake_unsplash.reset_rate_limit(50)
    expect(timeline.locator('li[data-type="job.resolved"]')).to_have_count(1, timeout=WAIT_MS)


def test_not_now_leaves_a_banner_that_asks_again_and_no_prompt_on_every_401(server_process, page):
    server = server_process(*SHORT, "--private", env={"CALO_API_TOKEN": TOKEN})
    page.clock.install()  # the page's timers, run forward below instead of waited for
    page.goto(server.url + "/")
    dialog = page.get_by_test_id("token-dialog")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    dialog.get_by_role("button", name="Not now").click()
    expect(dialog).to_be_hidden()
    banner = page.get_by_test_id("auth-banner")
    expect(banner).to_be_visible()
    page.clock.run_for(10_000)  # past the 3 s after which "reconnecting" would become a banner
    expect(page.get_by_test_id("reconnecting-banner")).to_be_hidden()  # the token banner says why
    page.get_by_test_id("create-job").click()  # refused (401), queued, and no second prompt
    expect(page.get_by_test_id("queued-item")).to_have_count(1, timeout=WAIT_MS)
    expect(dialog).to_be_hidden()
    page.get_by_test_id("enter-token").click()
    give_token(page, TOKEN)
    expect(page.get_by_test_id("job-item")).to_have_count(1, timeout=RECONNECT_MS)  # the press, sent once
    expect(banner).to_be_hidden()
    assert len(server.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()) == 1


def test_the_key_rejected_banner_appears_and_clears_when_a_call_works_again(server_process, fake_unsplash, page):
    server = server_process(*SHORT, "--unsplash-batch", "1")
    open_dashboard(page, server)
    banner = page.get_by_test_id("upstream-banner")
    fake_unsplash.answer_with(401, '{"errors": ["OAuth error: The access token is invalid"]}',
                              content_type="application/json", times=1)
    refused = server.post("/jobs").json()["id"]
    expect(card(page, refused)).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(banner).to_have_attribute("data-state", "rejected", timeout=WAIT_MS)
    expect(banner).to_contain_text("Unsplash rejected the access key at")
    expect(banner).to_contain_text("CALO_UNSPLASH_ACCESS_KEY")
    accepted = server.post("/jobs").json()["id"]  # the key works again (say, after a restart with a new one)
    expect(card(page, accepted)).to_have_attribute("data-status", "resolved", timeout=WAIT_MS)
    expect(banner).to_be_hidden(timeout=WAIT_MS)
