"""What the tests share: waiting for a condition, a server process as a user runs it, and
small clients for jobs, the event log and the writer. Test modules import from here (never
from each other or from conftest); fixtures live in conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import inspect
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import requests
import websockets
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError, HTTPRequest
from websockets.sync.client import connect as ws_connect

from calo.openapi import DOCUMENT
from calo.storage.sqlite import SqliteStorage
from calo.storage.sqlite_store import Reader
from calo.storage.sqlite_writer import WriterProcess

if TYPE_CHECKING:
    from tornado.websocket import WebSocketClientConnection

    from calo.app import Calo
    from calo.storage.base import Event
    from tests.fake_unsplash import FakeUnsplash

T = TypeVar("T")

ACCESS_KEY = "test-access-key"  # FakeUnsplash's default
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Short delays so that jobs resolve within a test: 0.2 s to 0.6 s.
FAST_DELAYS = ("--delay-min", "0.2", "--delay-max", "0.6", "--delay-step", "0.2")


# -- waiting for a condition -------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll `predicate` (a plain or an async function) on the IOLoop until it returns
    something truthy, and return that; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def poll(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
         describe: Callable[[], str] | None = None):
    """Blocking twin of `wait_until`, for tests that drive a server process. `describe`:
    what to add to the AssertionError on timeout (e.g. the server's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s" + (":\n" + describe() if describe else ""))


# -- Calo Jobs in-process ------------------------------------------------------------------


async def create_jobs(calo: Calo, count: int) -> list[str]:
    """Create `count` jobs one after another through the service; their ids."""
    return [json.loads((await calo.service.create_job(None)).job_json)["id"] for _ in range(count)]


def job(calo: Calo, job_id: str) -> dict[str, Any]:
    """The job's document, as `GET /jobs/{id}` shows it."""
    doc = db(calo).job(job_id)
    assert doc is not None, f"no job {job_id}"
    return json.loads(doc)


async def settled(calo: Calo, job_ids: list[str], timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until none of the jobs is pending; their documents."""
    await wait_until(lambda: all(job(calo, i)["status"] != "pending" for i in job_ids), timeout)
    return [job(calo, i) for i in job_ids]


_READERS: dict[str, Reader] = {}


def db(calo: Calo) -> Reader:
    """Synchronous reads of the in-process server's real SQLite file, for assertions (the
    service's own reads are coroutines). One read-only connection per database, used on
    the test's IOLoop thread; `close_db` closes it."""
    storage = calo.storage
    assert isinstance(storage, SqliteStorage), "an in-process server on SQLite"
    if storage.path not in _READERS:
        _READERS[storage.path] = Reader(storage.path)
    return _READERS[storage.path]


def close_db(calo: Calo) -> None:
    storage = calo.storage
    if isinstance(storage, SqliteStorage) and storage.path in _READERS:
        _READERS.pop(storage.path).close()


# -- Calo Jobs as a process ----------------------------------------------------------------


def server_environ(fake: FakeUnsplash, data_dir: str) -> dict[str, str]:
    return {
        "CALO_UNSPLASH_ACCESS_KEY": ACCESS_KEY,
        "CALO_UNSPLASH_API_URL": fake.url,
        "CALO_DATA_DIR": data_dir,
    }


class ServerProcess:
    """`python server.py` as a child process, as a user runs it."""

    READY = re.compile(r"msg=\"ready url=(\S+)")

    def __init__(self, environ: dict[str, str], flags: list[str], wrapper: list[str] | None = None):
        """`wrapper`: a command that runs the server, e.g. ["prlimit", "--nofile=128"]."""
        self.environ = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
        self.wrapper = wrapper or []
        for name in ("UNSPLASH_ACCESS_KEY",):  # the developer's own key must not leak in
            self.environ.pop(name, None)
        self.flags = flags
        self._process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.url = ""

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def process(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise AssertionError("the server process was never started")
        return self._process

    def start(self, timeout: float = 15.0) -> ServerProcess:
        self.lines = []
        self._process = subprocess.Popen(
            [*self.wrapper, sys.executable, "server.py", "--port", "0", *self.flags],
            cwd=ROOT, env=self.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._drainer = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
        self._drainer.start()
        self.url = poll(self._ready_url, timeout)
        return self

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
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
        return writer_pid(self.pid)


def run_server(*flags: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python server.py FLAGS` run to its end; for runs that should stop by themselves."""
    environ = {**os.environ, **(env or {})}
    process = subprocess.Popen([sys.executable, "server.py", *flags], cwd=ROOT, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"server.py {' '.join(flags)} did not stop:\n{stderr}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def create_many(server: ServerProcess, count: int, workers: int = 16, key_prefix: str | None = None) -> list[str]:
    """POST /jobs `count` times from `workers` threads at once (201 each); the new ids."""
    def create(number: int) -> str:
        headers = {"Idempotency-Key": f"{key_prefix}-{number}"} if key_prefix else {}
        response = server.post("/jobs", json={}, headers=headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(create, range(count)))


def job_via_api(server: ServerProcess, job_id: str) -> dict[str, Any]:
    """`GET /jobs/{id}` of a server process."""
    document: dict[str, Any] = server.get(f"/jobs/{job_id}").json()
    return document


def settled_via_api(server: ServerProcess, job_ids: list[str], timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until none of the jobs is pending, as the server's API shows them; their documents."""
    poll(lambda: all(job_via_api(server, i)["status"] != "pending" for i in job_ids), timeout)
    return [job_via_api(server, i) for i in job_ids]


def all_jobs(server: ServerProcess, status: str | None = None) -> list[dict[str, Any]]:
    """Every job (with `status`, if given), newest first, following the Link pages."""
    jobs: list[dict[str, Any]] = []
    url: str | None = server.url + "/jobs?limit=1000" + (f"&status={status}" if status else "")
    for _ in range(100):
        assert url is not None
        response = requests.get(url, timeout=10)
        jobs += response.json()
        url = response.links.get("next", {}).get("url")
        if not url:
            return jobs
    raise AssertionError("too many pages")


def resolution_events(data_dir: str) -> dict[str, int]:
    """job id -> how many `job.resolved` events the log holds for it."""
    with sqlite3.connect(os.path.join(data_dir, "calo.db")) as conn:
        rows = conn.execute("SELECT job_id, COUNT(*) FROM events WHERE type = 'job.resolved' GROUP BY job_id")
        counts = dict(rows.fetchall())
    conn.close()
    return counts


def writer_pid(parent_pid: int) -> int:
    """The SQLite writer process (the child named calo-writer) of the process `parent_pid`."""
    for task in os.listdir(f"/proc/{parent_pid}/task"):
        with open(f"/proc/{parent_pid}/task/{task}/children") as children:
            for child in children.read().split():
                try:
                    with open(f"/proc/{child}/comm") as comm:
                        if comm.read().strip() == "calo-writer":
                            return int(child)
                except FileNotFoundError:  # a child that just ended
                    continue
    raise AssertionError(f"process {parent_pid} has no writer process")


# -- clients -------------------------------------------------------------------------------


async def fetch_any(http_client, request, method="GET", body=None, headers=None):
    """The response to `request` (a URL or an HTTPRequest), whatever its status."""
    if not isinstance(request, HTTPRequest):
        request = HTTPRequest(request, method=method, body=body, headers=headers, allow_nonstandard_methods=True)
    try:
        return await http_client.fetch(request)
    except HTTPClientError as exc:
        return exc.response


async def call(http_client, base_url, path, method="GET", body=None, headers=None):
    """The response to `method` `base_url + path`, whatever its status."""
    return await fetch_any(http_client, base_url + path, method, body, headers)


async def create(http_client, base_url, key=None, body="{}"):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await call(http_client, base_url, "/jobs", "POST", body, headers)


def body(response):
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


def assert_error(response, status, code=None):
    assert response.code == status
    error = body(response)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code:
        assert error["code"] == code


def job_schema():
    """The Job schema as plain JSON Schema (OpenAPI 3.0's `nullable` spelled out)."""

    def convert(node):
        if isinstance(node, dict):
            node = {key: convert(value) for key, value in node.items()}
            if node.pop("nullable", False):
                node = {"anyOf": [node, {"type": "null"}]}
            if "$ref" in node:
                return convert(DOCUMENT["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
            return node
        if isinstance(node, list):
            return [convert(item) for item in node]
        return node

    return convert(DOCUMENT["components"]["schemas"]["Job"])


async def next_events(ws: WebSocketClientConnection, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next WebSocket message as a list of messages (an array message is several events)."""
    message = await asyncio.wait_for(ws.read_message(), timeout)
    assert message is not None, "the server closed the connection"
    parsed = json.loads(message)
    return parsed if isinstance(parsed, list) else [parsed]


async def collect_until(ws: WebSocketClientConnection, last_seq: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Every event until the one with seq `last_seq`, however they are grouped in messages."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["seq"] < last_seq:
        events += await next_events(ws, timeout)
    return events


async def event_matching(
    ws: WebSocketClientConnection, wanted: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """Read events, in whatever messages they come, until one is `wanted`; return it.
    Other events may come first: each job's own changes, and other jobs', interleave."""
    deadline = time.monotonic() + timeout
    while True:
        for event in await next_events(ws, max(0.0, deadline - time.monotonic())):
            if wanted(event):
                return event


def raw_websocket_that_never_reads(port: int) -> socket.socket:
    """A real WebSocket handshake on a socket with a tiny receive buffer, then silence."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b"101" in sock.recv(1024).split(b"\r\n")[0]
    return sock


class WriterUnderTest:
    """The server's real write path (`WriterProcess`, its child and the store's `Writer`)
    without a server: a loop of its own, driven by `run`, and the events of each commit."""

    def __init__(self, db_path: str):
        self.loop = asyncio.new_event_loop()
        self.events: list[Event] = []
        self.writer = WriterProcess(db_path, self.events.extend, self.loop)

    def __enter__(self) -> WriterUnderTest:
        self.writer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.run_until_complete(self.writer.stop(10))
        self.loop.close()

    def run(self, awaitable: Awaitable[T], timeout: float = 10.0) -> T:
        """Run the loop until `awaitable` is done; its result (or its exception)."""
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, timeout))

    def run_all(self, awaitables: list[Awaitable[Any]], timeout: float = 10.0) -> list[Any]:
        """Run the loop until all are done; each result, or the exception it raised."""
        return self.run(asyncio.gather(*awaitables, return_exceptions=True), timeout)


# -- metrics -------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """Prometheus text parsed by prometheus_client's own parser: {(sample, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(server: ServerProcess) -> Samples:
    """A server process's /metrics (200, text/plain), parsed."""
    response = server.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return metric_samples(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; AssertionError if there is no such sample."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError(f"no sample {name} {labels} in /metrics")
    return samples[key]


# -- a server's live feed, read on a thread ------------------------------------------------


class EventStream:
    """Everything one server's /ws sends, from `since=0`, read on a thread of its own."""

    def __init__(self, server_url):
        self.events = []
        self._url = server_url.replace("http://", "ws://") + "/ws?since=0"
        self._socket = None
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._open.wait(10), "the WebSocket did not open"

    def _read(self):
        with ws_connect(self._url, max_size=None, open_timeout=10, proxy=None) as socket:
            self._socket = socket
            self._open.set()
            try:
                for text in socket:
                    message = json.loads(text)
                    for event in message if isinstance(message, list) else [message]:
                        if event["type"].startswith("job."):
                            self.events.append((event["seq"], event["type"], event["job"]["id"]))
            except websockets.exceptions.ConnectionClosed:
                pass

    def close(self):
        assert self._socket is not None
        self._socket.close()
        self._thread.join(5)
