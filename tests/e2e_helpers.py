"""Headless Chromium for the browser tests, and the README's screenshot.

Owns: where the browser is and how it is launched (Debian's `chromium`, driven by
Playwright's own driver; Playwright never downloads a browser here), and
`take_screenshot`, run by hand to remake `docs/screenshot.png`:

    python3 -m tests.e2e_helpers docs/screenshot.png

Must never: download a browser, reach beyond loopback, or write into the repository
unless asked to on the command line (the test suite only imports the launch helpers).
"""

from __future__ import annotations

import os
import sys
import tempfile

from playwright.sync_api import Browser, Page, Playwright, ViewportSize, expect, sync_playwright

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


def chromium_missing() -> bool:
    return not os.access(CHROMIUM, os.X_OK)


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Debian Chromium. Raises FileNotFoundError (saying how to install it)
    when it is missing: the browser tests fail then, they never skip."""
    if chromium_missing():
        raise FileNotFoundError(MISSING_CHROMIUM)
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


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
    """The dashboard at 1280x900 with resolved jobs (photos from the fake Unsplash) and
    two still pending. Starts its own fake Unsplash and servers in a temporary data dir."""
    from tests.fake_unsplash import FakeUnsplash
    from tests.helpers import ServerProcess, poll, server_environ

    with FakeUnsplash() as fake, tempfile.TemporaryDirectory() as data_dir:
        environ = server_environ(fake, data_dir)
        server = ServerProcess(environ, ["--delay-min", "1", "--delay-max", "3", "--delay-step", "1"]).start()
        try:
            for _ in range(6):
                server.post("/jobs").raise_for_status()
            poll(lambda: len(server.get("/jobs?status=resolved").json()) == 6, timeout=20)
        finally:
            server.terminate()
        # Restarted with long delays, so the last two jobs stay pending in the picture.
        pending_delays = ["--delay-min", "95", "--delay-max", "240", "--delay-step", "5"]
        server = ServerProcess(environ, pending_delays).start()
        try:
            for _ in range(2):
                server.post("/jobs").raise_for_status()
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = browser.new_page(viewport=DESKTOP, color_scheme="light")
                page.goto(server.url + "/")
                expect(page.get_by_test_id("connection-state")).to_have_text("live", timeout=WAIT_MS)
                expect(page.get_by_test_id("job-item")).to_have_count(8, timeout=WAIT_MS)
                wait_until_loaded(page, "[data-testid=job-item] img")
                page.screenshot(path=path, animations="disabled")  # entrance animations finished
                browser.close()
        finally:
            server.terminate()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m tests.e2e_helpers OUTPUT.png")
    take_screenshot(sys.argv[1])
