"""Shared fixtures: the fake Unsplash server, settings, and Calo Jobs in-process or as a
real `python server.py` process. Every server listens on an ephemeral loopback port and
keeps its data in the test's own tmp_path. Nothing of Calo's own is faked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from calo.app import Calo
from calo.config import Settings, parse_settings
from tests.fake_unsplash import FakeUnsplash
from tests.postgres import ThrowawayPostgres

ACCESS_KEY = "test-access-key"  # FakeUnsplash's default
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Short delays so that jobs resolve within a test: 0.2 s to 0.6 s.
FAST_DELAYS = ("--delay-min", "0.2", "--delay-max", "0.6", "--delay-step", "0.2")


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


def server_environ(fake: FakeUnsplash, data_dir: str) -> dict[str, str]:
    return {
        "CALO_UNSPLASH_ACCESS_KEY": ACCESS_KEY,
        "CALO_UNSPLASH_API_URL": fake.url,
        "CALO_DATA_DIR": data_dir,
    }


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
def calo(io_loop, settings) -> Iterator[Calo]:
    """Calo Jobs running in the test's IOLoop (pytest-tornado serves `app`)."""
    service = Calo(settings)
    service.web_app = io_loop.run_sync(service.start)
    # Synchronous reads of the real database file, for assertions (the service's own are coroutines).
    service.db = service.storage.export_reader()
    yield service
    service.db.close()
    io_loop.run_sync(lambda: service.stop(grace_seconds=2))


@pytest.fixture
def app(calo):
    return calo.web_app


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Poll `predicate` on the IOLoop until it is truthy; bounded by `timeout`."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def poll(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Blocking twin of `wait_until`, for tests that drive a server process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class ServerProcess:
    """`python server.py` as a child process, as a user runs it."""

    READY = re.compile(r"msg=\"ready url=(\S+)")

    def __init__(self, environ: dict[str, str], flags: list[str]):
        self.environ = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
        for name in ("UNSPLASH_ACCESS_KEY",):  # the developer's own key must not leak in
            self.environ.pop(name, None)
        self.flags = flags
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = ""

    def start(self, timeout: float = 15.0) -> ServerProcess:
        self.lines = []
        self.process = subprocess.Popen(
            [sys.executable, "server.py", "--port", "0", *self.flags],
            cwd=ROOT, env=self.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._drainer = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
        self._drainer.start()
        self.url = poll(self._ready_url, timeout)
        return self

    def _drain(self, process: subprocess.Popen) -> None:
        with process.stderr:
            for line in process.stderr:
                self.lines.append(line.rstrip("\n"))

    def _ready_url(self) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError("server exited early:\n" + "\n".join(self.lines))
        for line in self.lines:
            match = self.READY.search(line)
            if match:
                return match.group(1)
        return None

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash or a power cut of the process."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._drainer.join(5)

    def terminate(self, timeout: float = 20.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._drainer.join(5)
        return code

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kwargs)

    def threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return int(next(line for line in status if line.startswith("Threads:")).split()[1])

    def writer_pid(self) -> int:
        """The server's SQLite writer process (its child named calo-writer)."""
        for task in os.listdir(f"/proc/{self.pid}/task"):
            with open(f"/proc/{self.pid}/task/{task}/children") as children:
                for child in children.read().split():
                    with open(f"/proc/{child}/comm") as comm:
                        if comm.read().strip() == "calo-writer":
                            return int(child)
        raise AssertionError("the server has no writer process")


@pytest.fixture
def server_process(fake_unsplash, data_dir) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: `server_process("--workers", "2", env={...})` starts a server process."""
    started: list[ServerProcess] = []

    def start(*flags: str, env: dict[str, str] | None = None, fast: bool = True) -> ServerProcess:
        environ = server_environ(fake_unsplash, data_dir)
        environ.update(env or {})
        process = ServerProcess(environ, [*(FAST_DELAYS if fast else ()), *flags])
        started.append(process)
        return process.start()

    yield start
    for process in started:
        if process.process and process.process.poll() is None:
            process.kill()
