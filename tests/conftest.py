"""Shared fixtures: the fake Unsplash server, settings, Calo Jobs in-process or as a
real `python server.py` process, and headless Chromium for the browser tests. Every server
listens on an ephemeral loopback port and keeps its data in the test's own tmp_path.
Nothing of Calo's own is faked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from calo.app import Calo
from calo.config import Settings, parse_settings
from calo.storage.sqlite_store import Database
from tests.e2e_helpers import DESKTOP, MISSING_CHROMIUM, Seen, chromium_missing, launch_chromium
from tests.fake_unsplash import FakeUnsplash
from tests.helpers import FAST_DELAYS, ServerProcess, close_db, server_environ
from tests.postgres import ThrowawayPostgres

if TYPE_CHECKING:
    import tornado.web


@pytest.fixture
def fake_unsplash() -> Iterator[FakeUnsplash]:
    with FakeUnsplash() as fake:
        yield fake


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL for the whole run, started on first use (tests/postgres.py).
    A missing PostgreSQL fails the tests that need it; it never skips them."""
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def database_url(postgres_cluster) -> str:
    """A fresh, empty PostgreSQL database for this test; its URL."""
    return postgres_cluster.new_database()


@pytest.fixture
def data_dir(tmp_path) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def settings(request, fake_unsplash, data_dir) -> Settings:
    """Settings for the in-process server; tests add flags and environment with the
    `calo_flags` and `calo_env` markers."""
    flags_marker = request.node.get_closest_marker("calo_flags")
    env_marker = request.node.get_closest_marker("calo_env")
    environ = server_environ(fake_unsplash, data_dir)
    environ.update(env_marker.kwargs if env_marker else {})
    flags = [*FAST_DELAYS, *(flags_marker.args if flags_marker else ())]
    return parse_settings(flags, environ)


@pytest.fixture
def calo_in_process(request, io_loop, settings) -> Iterator[tuple[Calo, tornado.web.Application]]:
    """Calo Jobs started in the test's IOLoop, and its web application. When the test
    serves it (`http_server`), demo image URLs name that server's port; `http_port` is
    asked for only then, since its socket is closed only by `http_server`."""
    serving = "http_server" in request.fixturenames
    base_url = f"http://localhost:{request.getfixturevalue('http_port')}" if serving else None
    service = Calo(settings, base_url=base_url)
    app = io_loop.run_sync(service.start)
    yield service, app
    close_db(service)
    io_loop.run_sync(lambda: service.stop(grace_seconds=2))


@pytest.fixture
def calo(calo_in_process) -> Calo:
    return calo_in_process[0]


@pytest.fixture
def app(calo_in_process) -> tornado.web.Application:
    """What pytest-tornado's `http_server` serves."""
    return calo_in_process[1]


@pytest.fixture
def database(tmp_path) -> Iterator[Database]:
    """An open data dir (real files in the test's tmp_path), closed after the test."""
    database = Database(str(tmp_path))
    yield database
    database.close()


@pytest.fixture
def server_process(fake_unsplash, data_dir) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: `server_process("--workers", "2", env={...})` starts a server process."""
    started: list[ServerProcess] = []

    def start(*flags: str, env: dict[str, str] | None = None, fast: bool = True,
              wrapper: list[str] | None = None) -> ServerProcess:
        environ = server_environ(fake_unsplash, data_dir)
        environ.update(env or {})
        process = ServerProcess(environ, [*(FAST_DELAYS if fast else ()), *flags], wrapper)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        if process.started and process.process.poll() is None:
            process.kill()


# -- the browser tests ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module. A missing browser fails the test, never
    skips it: `bash scripts/test.sh` installs it."""
    if chromium_missing():
        pytest.fail(MISSING_CHROMIUM, pytrace=False)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def page(browser: Browser, seen: Seen) -> Iterator[Page]:
    """A page in a fresh context. After the test, the page must not have raised an
    uncaught error or opened a dialog."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()

    def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    yield page
    context.close()
    assert seen.errors == [], f"uncaught errors in the page: {seen.errors}"
    assert seen.dialogs == [], f"the page opened dialogs: {seen.dialogs}"
