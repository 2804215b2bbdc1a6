"""The benchmark harness: child processes, what they print, /proc samples, statistics, wrk.

Owns everything the scenarios share: starting and stopping the processes a scenario runs
(the Calo server, the fake Unsplash API, the bare baseline server, the load generators),
waiting for their ready lines, sampling a process's memory and threads from /proc,
medians and percentiles, running `wrk` with a Lua script, profiling with py-spy, and
describing the machine.

Every wait here is bounded in time, every loop in count; all traffic goes to 127.0.0.1.
Must never: import Tornado or Calo's modules (the server under test runs in its own
process), or leave a child process running after its `with` block.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
ACCESS_KEY = "bench-access-key"
MAX_KEPT_LINES = 5000  # per process: a chatty child must not grow the harness's memory


class BenchError(Exception):
    """A scenario could not be run (a process died, a ready line never came)."""


# -- child processes -----------------------------------------------------------------------


class Proc:
    """A child process whose stdout and stderr (merged) are read by a thread, so it never
    blocks on a full pipe. Each line is kept (the last MAX_KEPT_LINES) with its arrival time."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None):
        self.name = name
        self.started_at = time.perf_counter()
        self.popen = subprocess.Popen(
            list(argv), cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=MAX_KEPT_LINES)
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        with self.popen.stdout:
            for line in self.popen.stdout:
                with self._new_line:
                    self.lines.append((time.perf_counter(), line.rstrip("\n")))
                    self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, re.Match]:
        """(arrival time, match) of the first line matching `pattern`; BenchError if the
        process exits or `timeout` seconds pass first."""
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        with self._new_line:
            while True:
                for at, line in self.lines:
                    match = regex.search(line)
                    if match:
                        return at, match
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise BenchError(f"{self.name}: no line matching {pattern!r}\n{self.tail()}")
                self._new_line.wait(min(left, 0.5))

    def json_line(self, prefix: str, timeout: float) -> dict[str, Any]:
        """The JSON value printed after `prefix` on a line of its own (a child's report)."""
        _, match = self.wait_for(rf"^{re.escape(prefix)} (.*)$", timeout)
        return json.loads(match.group(1))

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for _, line in list(self.lines) if regex.search(line))

    def tail(self, n: int = 20) -> str:
        return "\n".join(line for _, line in list(self.lines)[-n:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._reader.join(5)


@contextlib.contextmanager
def running(proc: Proc, *, kill: bool = False) -> Iterator[Proc]:
    """Stop (or with `kill`, SIGKILL) the process when the block ends, however it ends."""
    try:
        yield proc
    finally:
        proc.kill() if kill else proc.stop()


def python_proc(name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Proc:
    return Proc(name, [sys.executable, *args], env)


def start_fake_unsplash(*, delay: float, rate_limit: int = 10_000_000) -> tuple[Proc, str]:
    """The fake Unsplash API; returns it and its base URL."""
    proc = python_proc("fake-unsplash", [
        "tests/fake_unsplash.py", "--port", "0", "--access-key", ACCESS_KEY,
        "--rate-limit", str(rate_limit), "--delay", str(delay),
    ])
    _, match = proc.wait_for(r"fake-unsplash listening on (http://\S+)", 15)
    return proc, match.group(1)


def launch_calo(data_dir: str, upstream_url: str, flags: Sequence[str] = ()) -> Proc:
    """Start `python server.py` on an ephemeral loopback port, talking to `upstream_url`."""
    return python_proc(
        "calo", ["server.py", "--host", "127.0.0.1", "--port", "0", "--data-dir", data_dir, *flags],
        env={"CALO_UNSPLASH_API_URL": upstream_url, "CALO_UNSPLASH_ACCESS_KEY": ACCESS_KEY},
    )


def calo_ready(proc: Proc, timeout: float = 60) -> tuple[float, str]:
    """(seconds from process start to the "ready" line, base URL); kills it on failure."""
    try:
        at, match = proc.wait_for(r"ready url=(http://[0-9.:]+)", timeout)
    except BenchError:
        proc.kill()
        raise
    return at - proc.started_at, match.group(1)


def start_calo(data_dir: str, upstream_url: str, flags: Sequence[str] = ()) -> tuple[Proc, str]:
    """`launch_calo`, then wait until it is ready; returns it and its base URL."""
    proc = launch_calo(data_dir, upstream_url, flags)
    return proc, calo_ready(proc)[1]


def start_probe(url: str, duration: float, post_every: float | None = None) -> Proc:
    """bench/probe.py against `url` for `duration` s; read its report with `probe_report`."""
    args = ["-m", "bench.probe", "--url", url, "--duration", str(duration)]
    proc = python_proc("probe", [*args, *(["--post-every", str(post_every)] if post_every else [])])
    proc.wait_for(r"^probe started$", 15)
    return proc


def probe_report(proc: Proc, timeout: float) -> dict[str, Any]:
    with running(proc):
        return proc.json_line("PROBE_JSON", timeout)


def start_baseline(page_size: int) -> tuple[Proc, str]:
    """The bare Tornado handler (bench/baseline_server.py); returns it and its base URL."""
    proc = python_proc("baseline", ["-m", "bench.baseline_server", "--port", "0", "--page-size", str(page_size)])
    _, match = proc.wait_for(r"baseline listening on (http://\S+)", 15)
    return proc, match.group(1)


# -- /proc sampling ------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (Calo Jobs runs its SQLite writer in a child
    process): every figure counts them all."""
    tree, index = [pid], 0
    while index < len(tree):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{tree[index]}/task"):
                with open(f"/proc/{tree[index]}/task/{task}/children", encoding="ascii") as children:
                    tree.extend(int(child) for child in children.read().split())
        index += 1
    return tree


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) and Threads of a live process and its descendants, summed,
    from /proc/PID/status (a descendant that just exited is left out)."""
    wanted = ("VmRSS", "VmHWM", "Threads")
    values = dict.fromkeys(wanted, 0)
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status", encoding="ascii") as status:
                for line in status:
                    key, _, rest = line.partition(":")
                    if key in wanted:
                        values[key] += int(rest.split()[0])
        except FileNotFoundError:
            if member == pid:
                raise
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process and its descendants have used so far."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{member}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Samples a process's /proc status every `interval` s on a thread, keeping the
    maxima. Use as a context manager around the window to observe."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.max_rss_kb = self.hwm_kb = self.max_threads = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()  # the last word, in case the window was shorter than one interval

    def sample(self) -> None:
        try:
            status = proc_status(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            return  # it exited: keep what was seen
        self.samples += 1
        self.max_rss_kb = max(self.max_rss_kb, status.get("VmRSS", 0))
        self.hwm_kb = max(self.hwm_kb, status.get("VmHWM", 0))
        self.max_threads = max(self.max_threads, status.get("Threads", 0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# -- statistics ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct` percentile (0-100) with linear interpolation; sorts a copy."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- wrk -----------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of `wrk`, installing Debian's package when it is missing (as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("bench: wrk is missing; installing Debian's package", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    return shutil.which("wrk") or "wrk"


def _wrk_script(name: str, directory: str) -> str:
    """bench/wrk/common.lua (status counts, JSON report) followed by the named script."""
    parts = []
    for file in ("common.lua", f"{name}.lua"):
        with open(os.path.join(BENCH, "wrk", file), encoding="utf-8") as lua:
            parts.append(lua.read())
    path = os.path.join(directory, f"{name}.lua")
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(parts))
    return path


def run_wrk(url: str, script: str, *, connections: int, duration: float, args: Sequence[str] = (),
            server_pid: int | None = None) -> dict[str, Any]:
    """Run wrk (one thread: the server under test, not wrk, must be the bottleneck) for
    `duration` seconds with bench/wrk/`script`.lua; returns its JSON report with `rps`,
    and with `server_pid`, `cpu_us` (the server's CPU time per request, microseconds)."""
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    with tempfile.TemporaryDirectory(prefix="calo-wrk-") as directory:
        argv = [
            ensure_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
            "-s", _wrk_script(script, directory), url, *(["--", *args] if args else []),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            report = json.loads(line[len("BENCH_JSON "):])
            report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
            if server_pid:
                report["cpu_us"] = (cpu_seconds(server_pid) - cpu_before) * 1e6 / max(1, report["requests"])
            return report
    raise BenchError(f"wrk printed no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


# -- profiling -------------------------------------------------------------------------------


def py_spy_available() -> bool:
    return shutil.which("py-spy") is not None


def start_profile(pid: int, seconds: float, out_path: str) -> subprocess.Popen | None:
    """py-spy sampling `pid` (all threads, idle ones left out) for `seconds`, in the
    collapsed-stack format; None when py-spy is not installed."""
    if not py_spy_available():
        return None
    argv = [
        "py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", "100", "--format", "raw", "--threads", "--output", out_path, "--nonblocking",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: str, top: int = 10) -> list[str]:
    """A py-spy raw profile in a few lines: each thread's share of the samples of
    non-idle threads; the hottest functions by self time (samples where the function is
    on top of the stack), as 'share% function (file) <- nearest caller in calo/ [thread]';
    and the calo/ functions with the most samples under them (inclusive time)."""
    if not os.path.exists(path):
        return []
    by_leaf: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as raw:
        for line in raw:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
            if count.isdigit() and len(frames) > 1:
                by_leaf[_describe(frames)] += int(count)
                by_thread[_thread(frames[0])] += int(count)
                for frame in set(frames[1:]):
                    if "calo/" in frame and not any(entry in frame for entry in ENTRY_FRAMES):
                        inclusive[frame] += int(count)
    total = sum(by_leaf.values())
    if not total:
        return []
    share = lambda n: f"{100 * n / total:4.1f}%"  # noqa: E731
    busy = [(name, n) for name, n in _grouped(by_thread).most_common(6) if n >= total / 100]
    threads = ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in busy)
    return [
        f"threads: {threads}", "self time:", *(f"  {share(n)} {leaf}" for leaf, n in by_leaf.most_common(top)),
        "inclusive time, calo/ functions:", *(f"  {share(n)} {name}" for name, n in inclusive.most_common(top)),
    ]


ENTRY_FRAMES = ("main (calo/cli.py)", "serve (calo/cli.py)", "Writer._run (calo/storage/sqlite_store.py)")


def _thread(frame: str) -> str:
    """The thread's name from py-spy's first frame, `thread (TID): NAME`."""
    name = frame.split(": ", 1)[1].strip('"') if frame.startswith("thread (") else "?"
    return name if name.isprintable() else "?"


def _grouped(by_thread: collections.Counter[str]) -> collections.Counter[str]:
    """The pool's threads (calo-fetch_0, calo-fetch_1, ...) counted as one."""
    grouped: collections.Counter[str] = collections.Counter()
    for name, n in by_thread.items():
        grouped[re.sub(r"_\d+$", "_*", name)] += n
    return grouped


def _describe(frames: list[str]) -> str:
    """'leaf <- nearest calo/ caller [thread]' for one collapsed stack."""
    leaf, via = frames[-1], ""
    if "calo/" not in leaf:
        via = next((f" <- {frame}" for frame in reversed(frames[1:-1]) if "calo/" in frame), "")
    return f"{leaf}{via} [{_thread(frames[0])}]"


# -- data and the machine ------------------------------------------------------------------


def copy_db(source_dir: str, target_dir: str) -> None:
    """Copy a generated data dir's database (checkpointed: one file) into a new data dir."""
    os.makedirs(target_dir, exist_ok=True)
    shutil.copyfile(os.path.join(source_dir, "calo.db"), os.path.join(target_dir, "calo.db"))


def read_only(db_path: str) -> sqlite3.Connection:
    """A read-only connection to a data dir's database (WAL: the server may be running)."""
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "calo"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" (calo/ modified)" if dirty else "")


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as info:
        mem_kb = next((int(line.split()[1]) for line in info if line.startswith("MemTotal")), 0)
    wrk = subprocess.run([ensure_wrk(), "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    return {
        "CPU": cpu, "cores": str(os.cpu_count()), "RAM": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}", "Python": platform.python_version(),
        "Tornado": importlib.metadata.version("tornado"), "SQLite": sqlite3.sqlite_version, "wrk": wrk.strip(),
        "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
