"""The writer in a process of its own, so that SQLite commits never wait for the IOLoop's GIL.

Owns the child process that holds the only write connection, and the two pipes to it.
The child runs the store's own `Writer` (group commit, `synchronous=FULL`); this module
only carries requests there and results back. Why a process: in one process the writer
thread needs the GIL between SQLite calls, and a busy IOLoop keeps it for up to the
interpreter's 5 ms switch interval each time, so a group's commit took 3 ms (1.7 ms
alone) while the IOLoop, every client waiting for that commit, sat idle. Here the two
run side by side on two cores.

The child is `python -m calo.writer_process`, a fresh interpreter that imports only the
store, with the two pipes' ends passed as file descriptors.

Protocol (`pickle` messages over two `multiprocessing.connection` pipes):
- parent -> child: a list of `(number, operation name, args)` requests (one, as each
  is made); `None` asks the child to commit what it has and stop.
- child -> parent: `("ready"|"failed", error, None)` once at start; then one
  `("group", [(number, result, error), ...], events)` per commit; `("stopped", None,
  None)` last.

Threads:
- Parent: the IOLoop thread only. Each request is sent as it is made, so the child
  starts committing while the IOLoop still reads the next ones (batching them per loop
  iteration measured 10% slower); results are read by a reader callback on the pipe
  (`loop.add_reader`): no thread, no cross-thread wake-up. It blocks on the child only
  at start and at stop, and on a full pipe (64 KiB) while the child drains it.
- Child: its main thread reads requests and queues them; the writer thread commits and
  sends each group's results.

Must never: outlive the server (the kernel kills the child with its parent:
PR_SET_PDEATHSIG), or leave a caller waiting after the child died (its futures fail).
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from calo.store import Completion, Event, StoreError, Writer, WriteRequests, WrongStatus

STOP_TIMEOUT_SECONDS = 30  # a commit takes milliseconds; this only bounds a wedged disk
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


class WriterProcess(WriteRequests):
    """The parent's side: the store's `WriteRequests`, answered by asyncio futures."""

    def __init__(
        self,
        path: str,
        on_commit: Callable[[list[Event]], None],
        loop: asyncio.AbstractEventLoop,
        on_death: Callable[[str], None] = lambda reason: None,
    ):
        """`on_commit(events)` runs on the loop after each commit that appended events,
        after that commit's futures were completed. `on_death(reason)` runs on the loop
        if the child dies while the server runs: from then on every write fails."""
        self._on_commit = on_commit
        self._on_death = on_death
        self._loop = loop
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._numbers = itertools.count()
        self._failure: str | None = None  # why writes fail, once the child is gone
        self._path = path
        self._requests_in, self._requests = multiprocessing.Pipe(duplex=False)
        self._results, self._results_out = multiprocessing.Pipe(duplex=False)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def failure(self) -> str | None:
        """Why every write fails (the child died), or None while it works."""
        return self._failure

    def start(self) -> None:
        """Start the child and wait until its connection is open; raises StoreError.
        A fresh interpreter runs this module (`python -m`): no fork of a threaded
        server, and the child imports only the store."""
        child_ends = (self._requests_in.fileno(), self._results_out.fileno())
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "calo.writer_process", self._path, *map(str, child_ends), str(os.getpid())],
            pass_fds=child_ends, env=env, stdin=subprocess.DEVNULL,
        )
        self._requests_in.close()  # the child's ends
        self._results_out.close()
        try:
            kind, error, _ = _decode(self._results.recv_bytes())
        except EOFError:
            kind, error = "failed", StoreError(f"the writer process exited at start ({self._process.wait()})")
        if kind != "ready":
            self._process.wait()
            self._close_pipes()
            raise error
        self._loop.add_reader(self._results.fileno(), self._read_results)

    def stop(self) -> None:
        """Commit everything requested so far, deliver the results, end the child."""
        if self._failure is not None or self._process is None or self._process.poll() is not None:
            self._close_pipes()
            return
        self._loop.remove_reader(self._results.fileno())
        try:
            self._requests.send_bytes(_encode(None))
            while self._dispatch(_decode(self._results.recv_bytes())):
                pass
        except (EOFError, OSError):
            self._fail_waiting("the writer process ended while stopping")
        try:
            self._process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._close_pipes()

    def _request(self, name: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        if self._failure is not None:
            future.set_exception(StoreError(self._failure))
            return future
        number = next(self._numbers)
        self._waiting[number] = future
        self._send([(number, name, args)])
        return future

    def _send(self, requests: list[tuple[int, str, tuple[Any, ...]]] | None) -> None:
        try:
            self._requests.send_bytes(_encode(requests))
        except OSError:  # a broken pipe: the child is gone
            self._child_died()

    def _read_results(self) -> None:
        try:
            while self._results.poll():
                self._dispatch(_decode(self._results.recv_bytes()))
        except (EOFError, OSError):
            self._child_died()

    def _dispatch(self, message: tuple[str, Any, Any]) -> bool:
        """Complete a group's futures, then report its events; False once stopped."""
        kind, completions, events = message
        if kind == "stopped":
            return False
        for number, result, error in completions:
            future = self._waiting.pop(number)
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        if events:
            self._on_commit(events)
        return True

    def _child_died(self) -> None:
        if self._failure is not None or self._process is None:
            return  # both the pipe and the reader noticed (or it never started)
        self._loop.remove_reader(self._results.fileno())
        try:
            code = self._process.wait(1)
        except subprocess.TimeoutExpired:  # it closed its pipe but lives on: end it
            self._process.kill()
            code = self._process.wait()
        self._failure = f"the writer process died (exit code {code})"
        self._fail_waiting(self._failure)
        self._on_death(self._failure)

    def _fail_waiting(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(StoreError(reason))

    def _close_pipes(self) -> None:
        for conn in (self._requests, self._results, self._requests_in, self._results_out):
            conn.close()


def _encode(message: object) -> bytes:
    # Plain pickle, not Connection.send's ForkingPickler: a few microseconds less per
    # request on the IOLoop, and nothing here needs its reducers (no sockets, no fds).
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


_decode = pickle.loads


class _ChildWriter(Writer):
    """The store's Writer, handing each group's results to the parent over the pipe."""

    def __init__(self, path: str, results: Connection):
        super().__init__(path, on_commit=lambda events: None)
        self._results = results

    def _hand_over(self, completions: list[Completion], events: list[Event]) -> None:
        outcomes = [(op.tag, result, _portable(error)) for op, result, error in completions]
        try:
            self._results.send_bytes(_encode(("group", outcomes, events)))
        except OSError:
            pass  # the parent is gone; the kernel ends this process too


def _portable(error: BaseException | None) -> BaseException | None:
    """An error the parent can unpickle and the API knows: the store's own are kept,
    anything else becomes a StoreError that names it (an exception whose constructor
    does not take its own args back would otherwise fail in the parent's reader)."""
    if error is None or type(error) is StoreError or isinstance(error, WrongStatus):
        return error
    return StoreError(f"write failed: {error!r}")


def _child_main(path: str, requests: Connection, results: Connection, parent_pid: int) -> None:
    """The child process: open the writer, then queue every request the parent sends.
    Errors go to stderr (the server's log): the child has no logging of its own."""
    _die_with_parent(parent_pid)
    # Ctrl-C and systemd's SIGTERM reach the whole process group; the server decides when
    # the writer stops (after in-flight work is committed), by its stop request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    writer = _ChildWriter(path, results)
    try:
        writer.start()
    except StoreError as exc:
        results.send_bytes(_encode(("failed", exc, None)))
        return
    results.send_bytes(_encode(("ready", None, None)))
    try:
        while (batch := _decode(requests.recv_bytes())) is not None:
            for number, name, args in batch:
                writer.submit(name, args, tag=number)
    except EOFError:
        pass  # the parent closed the pipe without a stop request
    finally:
        writer.stop()  # commits what was queued; its results go out before "stopped"
    results.send_bytes(_encode(("stopped", None, None)))


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the server dies (even by SIGKILL), so a
    restarted server never finds the old writer still committing; and name it
    `calo-writer` for ps and top."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_NAME, b"calo-writer")
    except (OSError, AttributeError):  # not Linux: the pipe's EOF still ends the child
        pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


if __name__ == "__main__":  # started by WriterProcess.start
    db_path, requests_fd, results_fd, parent = sys.argv[1:5]
    _child_main(db_path, Connection(int(requests_fd), writable=False), Connection(int(results_fd), readable=False),
                int(parent))
