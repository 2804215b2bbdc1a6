"""The seven benchmark scenarios of issue #6, each a function of a `Context` returning rows.

Owns what each scenario does and how its figures are judged: the server's flags, the
data it starts with, the load, the window measured, the target. How processes are run
and measured is `bench/harness.py`; how databases are made is `bench/make_db.py`.

Every figure is a median over `sizes.runs` runs; every speed is also a ratio to the bare
baseline (bench/baseline_server.py) measured in the same run, run by run.

Must never: send traffic anywhere but 127.0.0.1, or wait without a bound.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench import harness as h
from bench.make_db import cached_db, even_due, make_db, sample_ids, spread_due
from calo.clock import now_ms, parse_iso_utc

LONG_DELAYS = ("--delay-min", "300", "--delay-max", "300")  # nothing resolves during a run
WORKERS = 8
# Threads besides the pool, in all of the server's processes: the IOLoop, the exporter, the
# writer process's reader and writer threads.
OTHER_THREADS = 4
FETCH_SECONDS = 0.02  # the fake Unsplash answers in 20 ms
STALL_TARGET_MS = 50


@dataclasses.dataclass(frozen=True)
class Sizes:
    runs: int  # runs per figure; the median is reported
    http_seconds: float  # one wrk run
    connections: int  # wrk connections
    big_jobs: int  # "1,000,000 jobs in the database"
    big_pending: int  # of which pending (recovery)
    pending: int  # "100,000 jobs pending at once"
    spread_seconds: float  # their due times spread over
    fan_clients: int
    fan_processes: int
    fan_rate: int  # jobs resolved per second during fan-out
    fan_seconds: float
    export_seconds: float
    memory_seconds: float


FULL = Sizes(
    runs=3, http_seconds=10, connections=32, big_jobs=1_000_000, big_pending=100_000, pending=100_000,
    spread_seconds=60, fan_clients=1000, fan_processes=4, fan_rate=100, fan_seconds=15,
    export_seconds=20, memory_seconds=5,
)
QUICK = Sizes(
    runs=1, http_seconds=3, connections=32, big_jobs=20_000, big_pending=2_000, pending=5_000,
    spread_seconds=10, fan_clients=100, fan_processes=2, fan_rate=100, fan_seconds=5,
    export_seconds=5, memory_seconds=2,
)


@dataclasses.dataclass
class Result:
    """One row of the results table."""

    number: str
    name: str
    figure: str
    target: str
    passed: bool
    baseline: str = ""
    ratio: str = ""
    stall: str = "n/a"
    details: list[str] = dataclasses.field(default_factory=list)
    profile: list[str] = dataclasses.field(default_factory=list)


class Context:
    """What every scenario gets: sizes, a scratch dir, the database cache, profiling."""

    def __init__(self, sizes: Sizes, work_dir: str, cache_dir: str, profiling: bool = False):
        self.sizes, self.work_dir, self.cache_dir = sizes, work_dir, cache_dir
        self.profiling = profiling
        self.peak_resolving_mb: float | None = None  # scenario 3's, shown by scenario 4
        self._profiles: dict[str, tuple[Any, str]] = {}

    def fresh_dir(self, name: str) -> str:
        return tempfile.mkdtemp(prefix=f"{name}-", dir=self.work_dir)

    def big_db(self) -> str:
        """The cached data dir with `big_jobs` jobs, `big_pending` of them pending."""
        s = self.sizes
        return cached_db(self.cache_dir, resolved=s.big_jobs - s.big_pending, pending=s.big_pending)

    def copy_of(self, source_dir: str, name: str) -> str:
        data_dir = self.fresh_dir(name)
        h.copy_db(source_dir, data_dir)
        return data_dir

    @contextlib.contextmanager
    def upstream(self, delay: float = FETCH_SECONDS) -> Iterator[str]:
        proc, url = h.start_fake_unsplash(delay=delay)
        with h.running(proc):
            yield url

    @contextlib.contextmanager
    def calo(
        self, data_dir: str, upstream: str, flags: Sequence[str] = (), kill: bool = False
    ) -> Iterator[tuple[h.Proc, str]]:
        proc, url = h.start_calo(data_dir, upstream, flags)
        with h.running(proc, kill=kill):
            yield proc, url

    @contextlib.contextmanager
    def baseline(self, page_size: int = 100) -> Iterator[tuple[h.Proc, str]]:
        proc, url = h.start_baseline(page_size)
        with h.running(proc):
            yield proc, url

    def profile(self, label: str, pid: int, seconds: float) -> None:
        """When profiling, sample `pid` with py-spy for `seconds` (once per label)."""
        if self.profiling and label not in self._profiles:
            path = os.path.join(self.work_dir, f"profile-{label}.txt")
            self._profiles[label] = (h.start_profile(pid, seconds, path), path)

    def profile_findings(self, label: str) -> list[str]:
        popen, path = self._profiles.get(label, (None, ""))
        if popen is None:
            return []
        popen.wait(120)
        return h.summarize_profile(path)


# -- shared measurements -------------------------------------------------------------------


def each(fmt: str, values: Sequence[Any]) -> str:
    """'a, b, c': every value (a tuple fills several fields) formatted with `fmt`."""
    return ", ".join(fmt.format(*v) if isinstance(v, tuple) else fmt.format(v) for v in values)


def job_count(data_dir: str, status: str | None = None) -> int:
    conn = h.read_only(os.path.join(data_dir, "calo.db"))
    try:
        if status is None:
            return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]
    finally:
        conn.close()


def wait_settled(data_dir: str, timeout: float) -> bool:
    """Poll until no job is pending (True) or `timeout` seconds pass (False)."""
    for _ in range(int(timeout / 0.5) + 1):
        if job_count(data_dir, "pending") == 0:
            return True
        time.sleep(0.5)
    return False


def lateness_ms(data_dir: str) -> tuple[list[float], int]:
    """(resolved_at - due_at of every settled job, how many of them failed), from the
    jobs' documents in the database."""
    conn = h.read_only(os.path.join(data_dir, "calo.db"))
    try:
        rows = conn.execute("SELECT doc FROM jobs WHERE status != 'pending'").fetchall()
    finally:
        conn.close()
    late, failed = [], 0
    for (doc,) in rows:
        job = json.loads(doc)
        late.append(parse_iso_utc(job["resolved_at"]) - parse_iso_utc(job["due_at"]))
        failed += job["status"] == "failed"
    return late, failed


def late_start_warning(margins_ms: Sequence[float]) -> list[str]:
    """A warning line when a run's server or clients were not ready before the first job
    was due (the machine was too slow or too busy: the figures then include start-up)."""
    if min(margins_ms) > 0:
        return []
    return ["WARNING: a run was not ready before its first job was due; its figures include start-up"]


def stall_text(reports: Sequence[dict[str, Any]]) -> str:
    """The worst stall over the runs of a scenario (a stall is judged only in 7)."""
    return f"{max(report['worst_stall_ms'] for report in reports):.0f} ms"


def wrk_run(url: str, script: str, sizes: Sizes, pid: int, args: Sequence[str] = ()) -> dict:
    """One wrk run of the scenario's length, measuring the server's CPU time too."""
    return h.run_wrk(url, script, connections=sizes.connections, duration=sizes.http_seconds, args=args,
                     server_pid=pid)


def wait_for_export(data_dir: str, timeout: float) -> bool:
    """Wait until the server's start-up export has written `jobs.json` (True), so that
    a read benchmark measures reads, not reads racing the first export."""
    for _ in range(int(timeout / 0.1) + 1):
        if os.path.exists(os.path.join(data_dir, "jobs.json")):
            return True
        time.sleep(0.1)
    return False


def throughput_row(number: str, name: str, pairs: Sequence[tuple[dict, dict]], want: float, ok_status: str) -> Result:
    """A row for wrk runs (calo, baseline): median rps and p99, median run-by-run ratio."""
    calo_rps = h.median([c["rps"] for c, _ in pairs])
    base_rps = h.median([b["rps"] for _, b in pairs])
    ratio = h.median([c["rps"] / b["rps"] for c, b in pairs])
    bad = sum(sum(n for status, n in c["statuses"].items() if status != ok_status) for c, _ in pairs)
    errors = sum(sum(c["errors"].values()) - c["errors"]["status"] for c, _ in pairs)
    runs = each("{:,.0f}/{:,.0f}", [(c["rps"], b["rps"]) for c, b in pairs])
    cpu = f"{h.median([c['cpu_us'] for c, _ in pairs]):.0f}/{h.median([b['cpu_us'] for _, b in pairs]):.0f}"
    return Result(
        number, name,
        figure=f"{calo_rps:,.0f} req/s, p99 {h.median([c['p99_ms'] for c, _ in pairs]):.1f} ms",
        baseline=f"{base_rps:,.0f} req/s, p99 {h.median([b['p99_ms'] for _, b in pairs]):.1f} ms",
        ratio=f"{ratio:.2f}×", target=f"≥ {want:.1f}× baseline", passed=ratio >= want and bad == 0 and errors == 0,
        details=[
            f"runs (calo/baseline req/s): {runs}",
            f"server CPU time per request, Calo/baseline: {cpu} µs (Calo's: the server and its "
            "writer process together)",
            f"answers other than {ok_status}: {bad}; socket errors and timeouts: {errors}",
        ],
    )


# -- 1. POST /jobs ---------------------------------------------------------------------------


def post_jobs(ctx: Context) -> list[Result]:
    """32 connections creating jobs, each 201 sent only after its commit (synchronous=FULL)."""
    pairs, durable = [], []
    with ctx.upstream() as upstream, ctx.baseline() as (base, base_url):
        for _ in range(ctx.sizes.runs):
            data_dir = ctx.fresh_dir("post")
            with ctx.calo(data_dir, upstream, LONG_DELAYS) as (proc, url):
                ctx.profile("1", proc.pid, ctx.sizes.http_seconds)
                calo_report = wrk_run(url + "/jobs", "post", ctx.sizes, proc.pid)
                durable.append((calo_report["statuses"].get("201", 0), job_count(data_dir)))
            pairs.append((calo_report, wrk_run(base_url + "/jobs", "post", ctx.sizes, base.pid)))
    row = throughput_row("1", f"POST /jobs, {ctx.sizes.connections} connections", pairs, 0.7, "201")
    lost = sum(max(0, answered - stored) for answered, stored in durable)
    counts = each("{:,}/{:,}", durable)
    row.details.append(f"201s answered / jobs in the database right after: {counts} "
                       f"(a 201 not in the database: {lost})")
    row.passed = row.passed and lost == 0
    return [row]


# -- 2. GET with 1,000,000 jobs --------------------------------------------------------------


def get_jobs(ctx: Context) -> list[Result]:
    s = ctx.sizes
    data_dir = ctx.copy_of(ctx.big_db(), "get")
    ids_file = os.path.join(data_dir, "ids.txt")
    sample_ids(os.path.join(data_dir, "calo.db"), 100_000, ids_file)
    by_id, page = [], []
    with ctx.upstream() as upstream, ctx.baseline(100) as (base, base_url), \
            ctx.calo(data_dir, upstream, LONG_DELAYS) as (proc, url):
        wait_for_export(data_dir, 300)
        h.run_wrk(url, "get_ids", connections=s.connections, duration=1, args=[ids_file])  # warm up
        for _ in range(s.runs):
            ctx.profile("2a", proc.pid, s.http_seconds)
            by_id.append((wrk_run(url, "get_ids", s, proc.pid, [ids_file]),
                          wrk_run(base_url, "get_ids", s, base.pid, [ids_file])))
        for _ in range(s.runs):
            ctx.profile("2b", proc.pid, s.http_seconds)
            page.append((wrk_run(url + "/jobs?limit=100", "get", s, proc.pid),
                         wrk_run(base_url + "/jobs?limit=100", "get", s, base.pid)))
    jobs = f"{s.big_jobs:,} jobs"
    rows = [
        throughput_row("2a", f"GET /jobs/{{id}}, {jobs}, random ids", by_id, 0.8, "200"),
        throughput_row("2b", f"GET /jobs?limit=100, {jobs}", page, 0.5, "200"),
    ]
    for row in rows:
        row.details.insert(0, "measured once the start-up export of every job to jobs.json was written "
                              "(scenario 7 measures the export itself); ids drawn at random from up to 100,000 jobs")
    return rows


# -- 3. Timeliness ---------------------------------------------------------------------------


def _timeliness_run(ctx: Context, upstream: str) -> dict[str, Any]:
    """One run: `pending` jobs due over `spread_seconds`, recovered by a fresh server."""
    s = ctx.sizes
    lead_ms = 5000 + s.pending * 3 // 20  # covers generating the rows (≤ 150 µs each) and start-up
    first_due = now_ms() + lead_ms
    data_dir = ctx.fresh_dir("timely")
    make_db(data_dir, resolved=0, pending_due=spread_due(s.pending, first_due, s.spread_seconds))
    with ctx.calo(data_dir, upstream, ("--workers", str(WORKERS))) as (proc, url):
        margin_ms = first_due - now_ms()
        window = (first_due - now_ms()) / 1000 + s.spread_seconds
        probe = h.start_probe(url, window)
        ctx.profile("3", proc.pid, window)
        with h.Sampler(proc.pid) as sampler:
            settled = wait_settled(data_dir, window + 60)
        stalls = h.probe_report(probe, window + 30)
    late, failed = lateness_ms(data_dir)
    return {"late": late, "failed": failed, "settled": settled, "threads": sampler.max_threads,
            "margin_ms": margin_ms, "probe": stalls, "rss_kb": sampler.hwm_kb}


def timeliness(ctx: Context) -> list[Result]:
    s = ctx.sizes
    with ctx.upstream() as upstream:
        runs = [_timeliness_run(ctx, upstream) for _ in range(s.runs)]
    p50 = h.median([h.percentile(r["late"], 50) for r in runs])
    p99 = h.median([h.percentile(r["late"], 99) for r in runs])
    worst = h.median([max(r["late"]) for r in runs])
    threads = max(r["threads"] for r in runs)
    ctx.peak_resolving_mb = max(r["rss_kb"] for r in runs) / 1024
    per_run = each("{:.0f}/{:.0f}", [(h.percentile(r["late"], 99), max(r["late"])) for r in runs])
    margins = each("{:.1f} s", [r["margin_ms"] / 1000 for r in runs])
    ok = p99 <= 100 and worst <= 1000 and threads <= WORKERS + OTHER_THREADS and all(r["settled"] for r in runs)
    return [Result(
        "3", f"timeliness: {s.pending:,} pending, due over {s.spread_seconds:g} s, upstream 20 ms",
        figure=f"lateness p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms; threads {threads}",
        target=f"p99 ≤ 100 ms, max ≤ 1 s, threads ≤ {WORKERS}+{OTHER_THREADS}", passed=ok,
        stall=stall_text([r["probe"] for r in runs]),
        details=[
            "jobs made by bench/make_db.py (status pending, due_at = start + uniform(0, "
            f"{s.spread_seconds:g} s)); the server recovers and schedules them at start-up, "
            f"--workers {WORKERS}, --unsplash-batch 30 (default)",
            f"per run p99 / max lateness (ms): {per_run}",
            f"all settled in time: {all(r['settled'] for r in runs)}; failed jobs: {sum(r['failed'] for r in runs)}; "
            f"ready this long before the first due time: {margins}",
            f"peak VmHWM while resolving: {ctx.peak_resolving_mb:.0f} MB",
            *late_start_warning([r["margin_ms"] for r in runs]),
        ],
    )]


# -- 4. Memory -------------------------------------------------------------------------------


def memory(ctx: Context) -> list[Result]:
    """RSS of a server holding `pending` pending jobs (due in a month, so none resolves)."""
    s = ctx.sizes
    source = cached_db(ctx.cache_dir, resolved=0, pending=s.pending)
    samples, probes = [], []
    with ctx.upstream() as upstream:
        for _ in range(s.runs):
            data_dir = ctx.copy_of(source, "memory")
            with ctx.calo(data_dir, upstream) as (proc, url), h.Sampler(proc.pid) as sampler:
                ctx.profile("4", proc.pid, s.memory_seconds)
                probe = h.start_probe(url, s.memory_seconds)
                probes.append(h.probe_report(probe, s.memory_seconds + 30))
            samples.append((sampler.max_rss_kb / 1024, sampler.hwm_kb / 1024))
    rss, hwm = h.median([r for r, _ in samples]), h.median([w for _, w in samples])
    return [Result(
        "4", f"memory: server with {s.pending:,} pending jobs",
        figure=f"VmRSS {rss:.0f} MB, VmHWM {hwm:.0f} MB", target="≤ 200 MB", passed=hwm <= 200,
        stall=stall_text(probes),
        details=[
            "the server's two processes summed (the server and its SQLite writer process); "
            f"jobs pending, due in a month (made by bench/make_db.py); sampled every 0.2 s for "
            f"{s.memory_seconds:g} s after ready (the start-up JSON export included); "
            f"per run VmHWM: {each('{:.0f} MB', [w for _, w in samples])}",
            *([f"while jobs like these resolve (scenario 3 of this run), VmHWM reached {ctx.peak_resolving_mb:.0f} MB"]
              if ctx.peak_resolving_mb is not None else []),
        ],
    )]


# -- 5. Recovery -----------------------------------------------------------------------------


def recovery(ctx: Context) -> list[Result]:
    """Start-up to "ready" (every pending job scheduled) with a big database."""
    s = ctx.sizes
    data_dir = ctx.copy_of(ctx.big_db(), "recovery")
    times, recovered = [], []
    with ctx.upstream() as upstream:
        for _ in range(s.runs):
            proc = h.launch_calo(data_dir, upstream)
            with h.running(proc, kill=True):  # a crash: no final export to wait for
                ctx.profile("5", proc.pid, 5)
                seconds, _ = h.calo_ready(proc)
                _, match = proc.wait_for(r"recovered (\d+) pending jobs", 5)
            times.append(seconds)
            recovered.append(int(match.group(1)))
    ready = h.median(times)
    return [Result(
        "5", f"recovery: start-up with {s.big_jobs:,} jobs, {s.big_pending:,} pending",
        figure=f"ready in {ready:.2f} s", target="≤ 3 s", passed=ready <= 3 and min(recovered) == s.big_pending,
        details=[f"from process start to the ready line (pending jobs all scheduled: recovered "
                 f"{each('{}', recovered)}); per run: {each('{:.2f} s', times)}"],
    )]


# -- 6. Fan-out ------------------------------------------------------------------------------


def _start_clients(ws_url: str, ctx: Context, until: float, stalled: bool) -> list[tuple[h.Proc, str]]:
    s, clients = ctx.sizes, []
    for i in range(s.fan_processes):
        out = os.path.join(ctx.work_dir, f"latencies-{os.getpid()}-{i}-{time.monotonic_ns()}.bin")
        args = ["-m", "bench.ws_clients", "--url", ws_url, "--clients", str(s.fan_clients // s.fan_processes),
                "--until", str(until), "--out", out, *(["--stalled"] if stalled and i == 0 else [])]
        clients.append((h.python_proc(f"ws-clients-{i}", args), out))
    return clients


def _collect_clients(clients: list[tuple[h.Proc, str]], timeout: float) -> tuple[list[float], list[dict]]:
    latencies, summaries = array.array("d"), []
    for proc, out in clients:
        with h.running(proc):
            summaries.append(proc.json_line("CLIENTS_JSON", timeout))
        with open(out, "rb") as file:
            latencies.frombytes(file.read())
    return list(latencies), summaries


def _fanout_run(ctx: Context, upstream: str, stalled: bool) -> dict[str, Any]:
    s = ctx.sizes
    count = int(s.fan_rate * s.fan_seconds)
    first_due = now_ms() + 6000  # time to start the server and connect every client
    data_dir = ctx.fresh_dir("fanout")
    make_db(data_dir, resolved=0, pending_due=even_due(count, first_due, s.fan_rate))
    with ctx.calo(data_dir, upstream, ("--workers", str(WORKERS))) as (proc, url):
        until = first_due / 1000 + s.fan_seconds + 2
        clients = _start_clients(url.replace("http://", "ws://") + "/ws", ctx, until, stalled)
        connected = [proc_.wait_for(r"^connected (\d+)$", 60) for proc_, _ in clients]
        margin_ms = first_due - now_ms()
        probe = h.start_probe(url, max(1.0, until - time.time()))
        ctx.profile("6b" if stalled else "6a", proc.pid, s.fan_seconds)
        latencies, summaries = _collect_clients(clients, until - time.time() + 30)
        stalls = h.probe_report(probe, 30)
        cut_off = proc.count("closing a WebSocket client that stopped reading")
        resolved = job_count(data_dir, "resolved")
    return {"late": latencies, "summaries": summaries, "probe": stalls, "margin_ms": margin_ms,
            "connected": sum(int(m.group(1)) for _, m in connected), "cut_off": cut_off, "jobs": count,
            "resolved": resolved}


def fanout(ctx: Context) -> list[Result]:
    s = ctx.sizes
    rows = []
    with ctx.upstream() as upstream:
        for stalled in (False, True):
            runs = [_fanout_run(ctx, upstream, stalled) for _ in range(s.runs)]
            rows.append(_fanout_row(ctx, runs, stalled))
    return rows


def _fanout_row(ctx: Context, all_runs: list[dict[str, Any]], stalled: bool) -> Result:
    s = ctx.sizes
    runs = [r for r in all_runs if r["late"]] or all_runs  # a run that delivered nothing is reported below
    p50 = h.median([h.percentile(r["late"], 50) for r in runs])
    p99 = h.median([h.percentile(r["late"], 99) for r in runs])
    worst = h.median([max(r["late"], default=float("nan")) for r in runs])
    silent = [f"run {i + 1} delivered no job.resolved event ({r['resolved']} of {r['jobs']} jobs resolved)"
              for i, r in enumerate(all_runs) if not r["late"]]
    events = [(min(x["events_min"] for x in r["summaries"]), max(x["events_max"] for x in r["summaries"]))
              for r in all_runs]
    per_run = each("{:.0f}", [h.percentile(r["late"], 99) for r in all_runs])
    margins = each("{:.1f} s", [r["margin_ms"] / 1000 for r in all_runs])
    cut_off = each("{}", [r["cut_off"] for r in all_runs])
    name = f"fan-out: {s.fan_clients:,} WebSocket clients, {s.fan_rate} jobs resolved/s"
    return Result(
        "6b" if stalled else "6a", name + (", plus one client that stopped reading" if stalled else ""),
        figure=f"delivery p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms",
        target="p99 ≤ 250 ms", passed=p99 <= 250 and not silent,
        stall=stall_text([r["probe"] for r in all_runs]),
        details=[
            f"clients in {s.fan_processes} processes (bench/ws_clients.py); {s.fan_seconds:g} s of "
            f"{s.fan_rate} jobs/s made by bench/make_db.py with evenly spaced due times",
            f"per run p99 (ms): {per_run}; connected: {each('{}', [r['connected'] for r in all_runs])}"
            + (" (the sleeping one included); " if stalled else "; ") +
            f"resolved events per client (min-max, of {runs[0]['jobs']} jobs): {each('{}-{}', events)}",
            f"clients ready this long before the first due time: {margins}"
            + (f"; the sleeping client was cut off by the server: {cut_off} time(s)" if stalled else ""),
            *late_start_warning([r["margin_ms"] for r in all_runs]),
            *(f"MISS: {line}" for line in silent),
        ],
    )


# -- 7. Export -------------------------------------------------------------------------------


def _watch_exports(path: str, seconds: float) -> list[float]:
    """Times (monotonic) at which `path` was replaced by a new export, for `seconds`."""
    seen, times = None, []
    for _ in range(int(seconds / 0.05)):
        with contextlib.suppress(FileNotFoundError):
            inode = os.stat(path).st_ino
            if inode != seen:
                seen = inode
                times.append(time.monotonic())
        time.sleep(0.05)
    return times


def export_stall(ctx: Context) -> list[Result]:
    """The worst IOLoop stall while `jobs.json` is rewritten with every job, again and again."""
    s = ctx.sizes
    source, probes, exports = ctx.big_db(), [], []
    with ctx.upstream() as upstream:
        for _ in range(s.runs):
            data_dir = ctx.copy_of(source, "export")
            # --max-pending: the database already holds as many pending jobs as the default allows
            flags = (*LONG_DELAYS, "--max-pending", str(10 * s.big_jobs))
            with ctx.calo(data_dir, upstream, flags, kill=True) as (proc, url):
                probe = h.start_probe(url, s.export_seconds, post_every=1.0)
                ctx.profile("7", proc.pid, s.export_seconds)
                exports.append(len(_watch_exports(os.path.join(data_dir, "jobs.json"), s.export_seconds)))
                probes.append(h.probe_report(probe, 30))
    worst = h.median([p["worst_stall_ms"] for p in probes])
    return [Result(
        "7", f"JSON export of {s.big_jobs:,} jobs: worst IOLoop stall",
        figure=f"worst stall {worst:.0f} ms (p99 ping {h.median([p['p99_ms'] for p in probes]):.1f} ms)",
        target=f"≤ {STALL_TARGET_MS} ms", passed=worst <= STALL_TARGET_MS, stall=stall_text(probes),
        details=[
            f"bench/probe.py: GET /jobs/<missing> every 10 ms for {s.export_seconds:g} s from ready, "
            "and one POST /jobs a second so that exports follow each other; stall = slowest answer - median",
            f"per run worst stall (ms): {each('{:.0f}', [p['worst_stall_ms'] for p in probes])}; "
            f"pings over 50 ms late: {each('{}', [p['over_50ms'] for p in probes])}; "
            f"exports finished in the window: {each('{}', exports)}; jobs created by the probe: "
            f"{each('{}', [p['posts'] for p in probes])}",
        ],
    )]


SCENARIOS: dict[int, Callable[[Context], list[Result]]] = {
    1: post_jobs, 2: get_jobs, 3: timeliness, 4: memory, 5: recovery, 6: fanout, 7: export_stall,
}
