"""Headless Chromium for the browser tests, and the README's screenshot.

Owns: where the browser is and how it is launched (Debian's `chromium`, driven by
Playwright's own driver; Playwright never downloads a browser here), what the browser
tests share (opening the dashboard, finding a job's card, what a page must never do), and
`take_screenshot`, run by hand to remake `docs/screenshot.png` and
`docs/screenshot-detail.png`:

    python3 -m tests.e2e_helpers docs/screenshot.png

Must never: download a browser, reach beyond loopback, or write into the repository
unless asked to on the command line (the test suite only imports the launch helpers).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from playwright.sync_api import Browser, Locator, Page, Playwright, ViewportSize, expect, sync_playwright

if TYPE_CHECKING:
    from tests.helpers import ServerProcess

CHROMIUM = "/usr/bin/chromium"
# No sandbox: the tests run as root in a container. The rest keeps Chromium off the
# network (no QUIC probes, updates, sync or first-run pings): the tests reach loopback only.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING_CHROMIUM = (
    f"{CHROMIUM} not found: the browser tests need Debian's chromium. "
    "Run `bash scripts/test.sh`, which installs it (apt-get install chromium)."
)
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
WAIT_MS = 15_000  # the longest any expectation waits for the page
RECONNECT_MS = 20_000  # static/live.js backs off up to 15 s between reconnects


def chromium_missing() -> bool:
    return not os.access(CHROMIUM, os.X_OK)


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Debian Chromium. Raises FileNotFoundError (saying how to install it)
    when it is missing: the browser tests fail then, they never skip."""
    if chromium_missing():
        raise FileNotFoundError(MISSING_CHROMIUM)
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@dataclasses.dataclass
class Seen:
    """What the page did that a test never wants: dialogs and uncaught errors."""

    dialogs: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def open_dashboard(page: Page, server: ServerProcess) -> None:
    page.goto(server.url + "/")
    expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=WAIT_MS)


def api_jobs(server: ServerProcess) -> list[dict[str, Any]]:
    response = server.get("/jobs?limit=1000")
    response.raise_for_status()
    jobs: list[dict[str, Any]] = response.json()
    return jobs


def card(page: Page, job_id: str) -> Locator:
    return page.locator(f'[data-testid=job-item][data-job-id="{job_id}"]')


def wait_until_loaded(page: Page, selector: str) -> None:
    """Wait until every image matching `selector` has really loaded (not just been put
    in the DOM): a broken or missing image never passes."""
    page.wait_for_function(
        """(selector) => {
             const images = [...document.querySelectorAll(selector)];
             return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
           }""",
        arg=selector,
        timeout=WAIT_MS,
    )


def take_screenshot(path: str) -> None:
    """The dashboard 1280 px wide in demo mode (the bundled images, as a first run with no
    Unsplash key shows them): ten resolved jobs, one cancelled, two still pending, the
    status strip with its charts; and, next to it (`-detail` before the extension), one
    job's detail view with its timeline. Starts its own servers in a temporary data dir."""
    from tests.helpers import ServerProcess, poll

    with tempfile.TemporaryDirectory() as data_dir:
        environ = {"CALO_DATA_DIR": data_dir, "CALO_UNSPLASH_ACCESS_KEY": ""}
        server = ServerProcess(environ, ["--delay-min", "1", "--delay-max", "4", "--delay-step", "1"]).start()
        try:
            for _ in range(10):
                server.post("/jobs").raise_for_status()
            poll(lambda: len(server.get("/jobs?status=resolved").json()) == 10, timeout=20)
        finally:
            server.terminate()
        # Restarted with long delays, so the last jobs stay pending (and one is cancelled).
        server = ServerProcess(environ, ["--delay-min", "95", "--delay-max", "240", "--delay-step", "5"]).start()
        try:
            jobs = [server.post("/jobs").json()["id"] for _ in range(3)]
            server.post(f"/jobs/{jobs[0]}/cancel").raise_for_status()
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                # Tall enough for the status strip and three rows of jobs.
                page = browser.new_page(viewport={"width": 1280, "height": 1460}, color_scheme="light")
                page.goto(server.url + "/")
                expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=WAIT_MS)
                expect(page.get_by_test_id("job-item")).to_have_count(13, timeout=WAIT_MS)
                expect(page.get_by_test_id("stat-total")).to_have_text("13", timeout=WAIT_MS)
                wait_until_loaded(page, "[data-testid=job-item] img")
                page.screenshot(path=path, animations="disabled")  # entrance animations finished
                page.locator("[data-testid=job-item][data-status=resolved]").nth(2).click()
                expect(page.get_by_test_id("timeline").locator("li")).to_have_count(2, timeout=WAIT_MS)
                wait_until_loaded(page, "[data-testid=job-detail] img")
                root, extension = os.path.splitext(path)
                page.set_viewport_size({"width": 1280, "height": 1000})
                page.screenshot(path=f"{root}-detail{extension}", animations="disabled")
                browser.close()
        finally:
            server.terminate()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m tests.e2e_helpers OUTPUT.png")
    take_screenshot(sys.argv[1])
