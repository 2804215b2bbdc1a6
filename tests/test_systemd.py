"""Calo Jobs under systemd: the unit file, and sd_notify spoken to a real datagram socket by
a real `python server.py` process (the test binds the socket systemd would)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

from calo.clock import now_ms
from calo.jobs import Job
from calo.systemd import notify_address, watchdog_seconds
from tests.helpers import ROOT, poll

WATCHDOG_USEC = "400000"  # systemd's WatchdogSec=0.4 s: the server pings every 0.2 s


class NotifySocket:
    """The service manager's end of sd_notify: a bound AF_UNIX datagram socket."""

    def __init__(self, abstract: bool):
        self.dir = tempfile.mkdtemp(prefix="calo-notify-")  # short: socket paths max 107 bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"calo-test-{os.getpid()}-{os.urandom(4).hex()}"
            self.sock.bind("\0" + name)
            self.env = {"NOTIFY_SOCKET": "@" + name}
        else:
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env = {"NOTIFY_SOCKET": path}

    def next_message(self, timeout: float = 10.0) -> dict[str, str]:
        """The next datagram, as {NAME: value}."""
        self.sock.settimeout(timeout)
        text = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in text.splitlines())

    def wait_for(self, name: str, value: str | None = None, timeout: float = 10.0) -> dict[str, str]:
        """The next message that sets `name` (to `value`, if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.next_message(max(0.01, deadline - time.monotonic()))
            if name in message and value in (None, message[name]):
                return message
        raise AssertionError(f"no {name}={value or '...'} within {timeout} s")

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass

    def messages_during(self, seconds: float) -> list[dict[str, str]]:
        received, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                received.append(self.next_message(left))
            except TimeoutError:
                break
        return received

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request):
    sock = NotifySocket(abstract=request.param == "abstract")
    yield sock
    sock.close()


def test_ready_status_watchdog_and_stopping_reach_systemd(server_process, notify_socket):
    server = server_process(env={**notify_socket.env, "WATCHDOG_USEC": WATCHDOG_USEC})
    ready = notify_socket.next_message()
    assert ready["READY"] == "1"
    assert ready["STATUS"] == "pending=0 resolved=0 failed=0 cancelled=0 upstream=ok"
    assert server.get("/healthz").status_code == 200  # READY=1 came after the port listened
    notify_socket.wait_for("WATCHDOG")
    server.post("/jobs")
    notify_socket.wait_for("STATUS", "pending=0 resolved=1 failed=0 cancelled=0 upstream=ok")
    assert server.terminate() == 0
    assert notify_socket.wait_for("STOPPING")["STOPPING"] == "1"


def insert_overdue_pending_job(data_dir: str, seconds_overdue: float) -> str:
    """A pending job written behind the scheduler's back, as a lost job would look."""
    job = Job.new(0, now_ms() - int(seconds_overdue * 1000))
    with sqlite3.connect(os.path.join(data_dir, "calo.db"), timeout=5) as conn:
        conn.execute("INSERT INTO jobs (id, status, due_at, doc) VALUES (?, ?, ?, ?)",
                     (job.id, job.status, job.due_at, job.to_json()))
    conn.close()
    return job.id


@pytest.mark.parametrize("notify_socket", ["path"], indirect=True)
def test_a_stuck_scheduler_is_not_ready_and_stops_the_watchdog_until_restarted(
    server_process, notify_socket, data_dir
):
    env = {**notify_socket.env, "WATCHDOG_USEC": WATCHDOG_USEC}
    server = server_process("--stuck-after", "0.5", env=env)
    notify_socket.wait_for("WATCHDOG")
    job_id = insert_overdue_pending_job(data_dir, 120)

    not_ready = poll(lambda: (r := server.get("/readyz")).status_code == 503 and r.json())
    scheduler = not_ready["checks"]["scheduler"]
    assert not_ready["ready"] is False and scheduler["ok"] is False
    assert scheduler["oldest_overdue"]["overdue_seconds"] >= 120 and job_id not in str(not_ready)  # never an id
    assert not_ready["checks"]["upstream"]["state"] == "ok" and not_ready["checks"]["database"]["ok"] is True
    notify_socket.drain()  # pings sent before the server found itself stuck
    assert [m for m in notify_socket.messages_during(1.0) if "WATCHDOG" in m] == []  # 5 periods
    assert any("scheduler stuck" in line and job_id in line for line in server.lines)
    assert server.get("/healthz").status_code == 200  # alive, just not keeping up

    server.kill()  # what systemd does once the watchdog expires (SIGABRT, then SIGKILL)
    server = server_process("--stuck-after", "0.5", env=env)  # recovery runs the lost job
    poll(lambda: server.get(f"/jobs/{job_id}").json()["status"] == "resolved")
    assert server.get("/readyz").json()["ready"] is True
    notify_socket.drain()
    notify_socket.wait_for("WATCHDOG")


def test_without_notify_socket_nothing_is_sent_and_the_server_runs(server_process):
    server = server_process()
    assert server.get("/readyz").status_code == 200
    assert not any("systemd" in line for line in server.lines)


def test_the_environment_is_read_as_sd_notify_documents_it():
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract/name"}) == b"\0abstract/name"
    assert notify_address({}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}, pid=42) == 15.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    # The pings are for another process (the variable was inherited): send none.
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}, pid=42) is None


def calo_server_command() -> str:
    """The real `calo-server` of this environment, else this Python running server.py:
    `systemd-analyze verify` refuses an ExecStart binary that does not exist."""
    script = shutil.which("calo-server") or os.path.join(sys.prefix, "bin", "calo-server")
    if os.access(script, os.X_OK):
        return script
    return f"{sys.executable} {os.path.join(ROOT, 'server.py')}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="scripts/test.sh installs systemd-analyze")
@pytest.mark.parametrize(("unit_file", "verified_as"), [
    ("calo.service", "calo.service"),
    ("calo@.service", "calo@8001.service"),  # the template, as one of its instances
])
def test_the_unit_file_passes_systemd_analyze_verify(tmp_path, unit_file, verified_as):
    with open(os.path.join(ROOT, "deploy", unit_file), encoding="utf-8") as file:
        unit = file.read()
    assert "ExecStart=/opt/calo/venv/bin/calo-server\n" in unit
    (tmp_path / verified_as).write_text(
        unit.replace("ExecStart=/opt/calo/venv/bin/calo-server", f"ExecStart={calo_server_command()}")
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", verified_as],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    about_the_unit = [line for line in (result.stdout + result.stderr).splitlines() if verified_as in line]
    assert result.returncode == 0 and about_the_unit == [], result.stdout + result.stderr
    for line in unit.splitlines():  # every setting says why it is there (huey's habit)
        if "=" in line and not line.startswith("#") and line.split("=")[0] not in ("Description", "WantedBy"):
            assert any(previous.startswith("#") for previous in _comment_block_above(unit, line)), line


def _comment_block_above(unit: str, line: str) -> list[str]:
    """The comment lines directly above `line`, or above the run of settings it is in."""
    lines = unit.splitlines()
    index = lines.index(line)
    while index > 0 and "=" in lines[index - 1] and not lines[index - 1].startswith("#"):
        index -= 1
    return lines[max(0, index - 1):index]
