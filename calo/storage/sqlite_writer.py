"""The writer in a process of its own, so that SQLite commits never wait for the IOLoop's GIL.

Owns the child process that holds the only write connection, and the two pipes to it.
The child runs the store's `Writer` (group commit, `synchronous=FULL`); this module only
carries requests there and results back. Why a process: in one process the writer
thread needs the GIL between SQLite calls, and a busy IOLoop keeps it for up to the
interpreter's 5 ms switch interval each time, so a group's commit took 3 ms (1.7 ms
alone) while the IOLoop, every client waiting for that commit, sat idle. Here the two
run side by side on two cores.

The child is `python -m calo.storage.sqlite_writer`, a fresh interpreter that imports only the
store, with the two pipes' ends passed as file descriptors.

Protocol: frames of a 4-byte big-endian length and a pickle, over two plain pipes.
- parent -> child: a list of `(number, operation name, args)` requests (one, as each
  is made); `None` asks the child to commit what it has, checkpoint the WAL and stop.
- child -> parent: `("ready"|"failed", error)` once at start; then one `("group",
  [(number, result, error), ...], events)` per commit; `("fatal", reason)` if the
  writer stops taking writes (its database file was removed or replaced, a rollback
  failed); `("stopped",)` last.

What an answer means (the API says it to clients): a result is committed; a
`StoreError` is certainly not stored (refused, or never left this process); a
`CommitUnknown` may or may not be: the request reached the child, and then the child
died, or its answer took longer than `write_timeout`.

Threads:
- Parent: the IOLoop thread only, and it never blocks on the child after start. Requests
  are written to a non-blocking pipe as they are made (the child starts committing while
  the IOLoop still reads the next ones); when the pipe is full (the child is slow, or
  stopped) they wait in a buffer of at most MAX_UNSENT_BYTES, and past that, or past
  MAX_OUTSTANDING requests unanswered, a write fails at once with `WriterBusy`. Results
  are read by a reader callback (`loop.add_reader`), also non-blocking. A sweep every
  SWEEP_SECONDS ends requests older than `write_timeout`.
- Child: its main thread reads requests and queues them; the writer thread commits and
  sends each group's results.

Must never: outlive the server (the kernel kills the child with its parent:
PR_SET_PDEATHSIG), leave a caller waiting after the child died or past the time limit,
or say "not stored" of a request that reached the child unanswered.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import itertools
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from calo.storage.base import CommitUnknown, CreateResult, Event, RetriedBatch, StoreError, WriterBusy, WrongStatus
from calo.storage.sqlite_store import Completion, Writer, WriteRequests

log = logging.getLogger("calo.writer")

MAX_OUTSTANDING = 10_000  # requests sent or buffered, not yet answered
MAX_UNSENT_BYTES = 1 << 20  # requests waiting in this process for room in the pipe (~3,000 creates)
SWEEP_SECONDS = 0.1  # how often requests past their time limit are ended
KILL_WAIT_SECONDS = 5  # after SIGKILL, for the kernel to end the child
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_HEADER = struct.Struct("!I")
_CONTROL = -1  # the number of the stop request, which no caller waits for


def _frame(message: object) -> bytes:
    # Plain pickle, not Connection.send's ForkingPickler: a few microseconds less per
    # request on the IOLoop, and nothing here needs its reducers (no sockets, no fds).
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class WriterProcess(WriteRequests):
    """The parent's side: the store's requests, answered by asyncio futures on `loop`."""

    def __init__(
        self,
        path: str,
        on_commit: Callable[[list[Event]], None],
        loop: asyncio.AbstractEventLoop,
        on_death: Callable[[str], None] = lambda reason: None,
        *,
        on_late: Callable[[list[tuple[int, str]]], None] = lambda jobs: None,
        write_timeout: float = 5.0,
        max_outstanding: int = MAX_OUTSTANDING,
        max_unsent_bytes: int = MAX_UNSENT_BYTES,
    ):
        """`on_commit(events)` runs on the loop after each commit that appended events,
        after that commit's futures were completed. `on_death(reason)` runs on the loop
        once if the child dies or stops taking writes while the server runs: from then
        on every write fails. A request unanswered after `write_timeout` seconds fails
        with CommitUnknown; if it commits later, `on_late([(due_at, job id), ...])` gets
        the jobs it made pending (a create or retry), so that they still run."""
        self._path = path
        self._on_commit = on_commit
        self._on_death = on_death
        self._on_late = on_late
        self._loop = loop
        self._write_timeout = write_timeout
        self._max_outstanding = max_outstanding
        self._max_unsent_bytes = max_unsent_bytes
        self._numbers = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}  # sent or buffered, unanswered
        self._late: set[int] = set()  # sent, answered CommitUnknown by the time limit
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()  # in request order
        self._unsent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._unsent_bytes = 0
        self._head_written = 0  # bytes of the first unsent frame already in the pipe
        self._inbox = bytearray()
        self._failure: str | None = None  # why writes fail, once they do
        self._stopped: asyncio.Future[None] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._requests_fd = self._results_fd = -1
        self._sweep_handle: asyncio.TimerHandle | None = None

    def alive(self) -> bool:
        """Is the child running (or at least not yet reaped)?"""
        return self._process is not None and self._process.poll() is None

    @property
    def writes_waiting(self) -> int:
        """Requests sent or buffered and not yet answered."""
        return len(self._waiting)

    # -- start and stop ----------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why every write fails (the child died), or None while it works."""
        return self._failure

    def start(self) -> None:
        """Start the child and wait until its connection is open; raises StoreError.
        A fresh interpreter runs this module (`python -m`): no fork of a threaded
        server, and the child imports only the store."""
        requests_in, self._requests_fd = os.pipe()
        self._results_fd, results_out = os.pipe()
        child_ends = (requests_in, results_out)
        # The directory holding the `calo` package this server runs (calo/storage/ is two
        # levels down), so that the child runs the same code, installed or not.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "calo.storage.sqlite_writer", self._path, *map(str, child_ends), str(os.getpid())],
            pass_fds=child_ends, env=env, stdin=subprocess.DEVNULL,
        )
        for fd in child_ends:
            os.close(fd)
        with os.fdopen(os.dup(self._results_fd), "rb", buffering=0) as results:
            message = _read_frame(results)  # blocking, once, at start
        kind, error = message[:2] if message else ("failed", None)
        if kind != "ready":
            code = self._process.wait()
            self._close_pipes()
            raise error or StoreError(f"the writer process exited at start ({code})")
        os.set_blocking(self._requests_fd, False)
        os.set_blocking(self._results_fd, False)
        self._loop.add_reader(self._results_fd, self._read_results)
        self._sweep_handle = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    async def stop(self, timeout: float) -> bool:
        """Ask the child to commit everything requested so far, checkpoint the WAL and
        end; wait at most `timeout` seconds, then kill it. Every caller gets an answer
        before this returns. Idempotent. True if the child stopped by itself."""
        if self._process is None:
            return True
        clean = await self._ask_to_stop(timeout) if self.alive() else False
        self._end(f"the writer stopped{'' if clean else ' (killed)'}")
        return clean

    async def _ask_to_stop(self, timeout: float) -> bool:
        if self._stopped is None:
            self._stopped = self._loop.create_future()
            if self._failure is None:
                self._failure = "the server is stopping"
            self._enqueue(_CONTROL, _frame(None))
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout)
            return True
        except TimeoutError:
            log.error("the writer process did not stop within %g s; killing it", timeout)
            return False

    def _end(self, reason: str) -> None:
        """Kill the child if it still runs, answer every caller, release the pipes."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        try:
            process.wait(KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("the writer process %d did not end after SIGKILL", process.pid)
        self._failure = self._failure or reason
        self._fail_all(reason)
        self._close_pipes()
        self._process = None

    # -- requests ------------------------------------------------------------------------------

    def _request(self, name: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self._failure is not None:
            future.set_exception(StoreError(self._failure))
            return future
        frame = _frame([(number := next(self._numbers), name, args)])
        if len(self._waiting) >= self._max_outstanding or self._unsent_bytes + len(frame) > self._max_unsent_bytes:
            future.set_exception(WriterBusy(
                f"the writer is behind ({len(self._waiting)} writes waiting); not stored"))
            return future
        self._waiting[number] = future
        self._deadlines.append((self._loop.time() + self._write_timeout, number))
        self._enqueue(number, frame)
        return future

    def _enqueue(self, number: int, frame: bytes) -> None:
        waiting_for_room = bool(self._unsent)
        self._unsent.append((number, frame))
        self._unsent_bytes += len(frame)
        if not waiting_for_room:
            self._flush()

    def _flush(self) -> None:
        """Write buffered frames until the pipe is full; wait for room if it is."""
        while self._unsent:
            frame = self._unsent[0][1]
            try:
                self._head_written += os.write(self._requests_fd, memoryview(frame)[self._head_written:])
            except BlockingIOError:
                break
            except OSError:  # a broken pipe: the child is gone
                self._child_died()
                return
            if self._head_written < len(frame):
                break
            self._unsent.popleft()
            self._unsent_bytes -= len(frame)
            self._head_written = 0
        if self._unsent:
            self._loop.add_writer(self._requests_fd, self._flush)
        else:
            self._loop.remove_writer(self._requests_fd)

    def _sweep(self) -> None:
        """End the requests past their time limit: withdrawn if still unsent, else of
        unknown outcome (the child may yet commit them; its answer is then ignored)."""
        now = self._loop.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            number = self._deadlines.popleft()[1]
            future = self._waiting.pop(number, None)
            if future is None or future.done():
                continue
            if self._withdraw(number):
                future.set_exception(StoreError(
                    f"the writer did not take the write within {self._write_timeout:g} s; not stored"))
            else:
                self._late.add(number)
                future.set_exception(CommitUnknown(
                    f"the writer did not answer within {self._write_timeout:g} s; the write may have been stored"))
        self._sweep_handle = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def _withdraw(self, number: int) -> bool:
        """Take an unsent request back; False if any of it is already in the pipe.
        Requests expire in order, so an unsent one is at the front of the buffer."""
        for index in (0, 1) if self._head_written else (0,):
            if index < len(self._unsent) and self._unsent[index][0] == number:
                self._unsent_bytes -= len(self._unsent[index][1])
                del self._unsent[index]
                return True
        return False

    # -- results --------------------------------------------------------------------------------

    def _read_results(self) -> None:
        ended = False
        while True:
            try:
                chunk = os.read(self._results_fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                ended = True
                break
            self._inbox += chunk
        for message in self._take_frames():  # the child's last answers come just before its end
            self._dispatch(message)
        if ended:
            self._child_died()

    def _take_frames(self) -> list[tuple[Any, ...]]:
        messages, at = [], 0
        while len(self._inbox) - at >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._inbox, at)
            if len(self._inbox) - at - _HEADER.size < size:
                break
            messages.append(pickle.loads(self._inbox[at + _HEADER.size:at + _HEADER.size + size]))
            at += _HEADER.size + size
        del self._inbox[:at]
        return messages

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        """Complete a group's futures, then report its events."""
        kind = message[0]
        if kind == "group":
            late = self._complete(message[1])
            if message[2]:
                self._on_commit(message[2])
            if late:
                self._on_late(_made_pending(late, message[2]))
        elif kind == "fatal":
            self._writes_lost(message[1])
        elif kind == "stopped" and self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _complete(self, completions: list[Completion]) -> list[Any]:
        """Settle the futures of a group's requests; the results of those that had
        been ended by the time limit and committed after all."""
        late = []
        for tag, result, error in completions:
            future = self._waiting.pop(tag, None) if isinstance(tag, int) else None
            if future is None or future.done():
                if tag in self._late:  # its caller was told the outcome is unknown
                    self._late.discard(tag)
                    if error is None:
                        late.append(result)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        return late

    # -- failures -------------------------------------------------------------------------------

    def _writes_lost(self, reason: str) -> None:
        """The child stopped taking writes (it answers the rest with refusals): fail new
        ones at once, and tell the server, once."""
        if self._failure is not None and self._stopped is not None:
            return  # stopping anyway
        first = self._failure is None
        self._failure = reason
        if first:
            self._on_death(reason)

    def _child_died(self) -> None:
        if self._process is None or self._results_fd < 0:
            return
        self._loop.remove_reader(self._results_fd)
        if self._stopped is not None:
            if not self._stopped.done():
                self._stopped.set_result(None)  # stop() ends it and answers everyone
            return
        if self._process.poll() is None:  # it closed its pipe but lives on: end it
            self._process.kill()
        code = self._process.wait()
        reason = f"the writer process died (exit code {code})"
        first = self._failure is None
        self._failure = self._failure or reason
        self._fail_all(reason)
        if first:
            self._on_death(reason)

    def _fail_all(self, reason: str) -> None:
        """Answer every caller still waiting: unsent requests were certainly not stored;
        sent ones may have been."""
        unsent = {number for number, _ in self._unsent}  # a frame half in the pipe is never read whole
        waiting, self._waiting = self._waiting, {}
        for number, future in waiting.items():
            if future.done():
                continue
            if number in unsent:
                future.set_exception(StoreError(f"{reason}; not stored"))
            else:
                future.set_exception(CommitUnknown(f"{reason}; the write may have been stored"))
        self._unsent.clear()
        self._unsent_bytes = self._head_written = 0

    def _close_pipes(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for fd in (self._requests_fd, self._results_fd):
            if fd >= 0:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
                os.close(fd)
        self._requests_fd = self._results_fd = -1


def _made_pending(results: list[Any], events: list[Event]) -> list[tuple[int, str]]:
    """(due_at, job id) of the jobs these results (a create's, a retry's) made pending."""
    ids: set[str] = set()
    for result in results:
        if isinstance(result, CreateResult):
            ids.add(result.job_id)
        elif isinstance(result, RetriedBatch):
            ids.update(result.job_ids)
        elif isinstance(result, str):  # a retried (or cancelled) job's document
            ids.add(json.loads(result)["id"])
    return [(event.due_at, event.job_id) for event in events if event.due_at is not None and event.job_id in ids]


def _read_frame(file: BinaryIO) -> Any:
    """The next message from a blocking pipe, or None at its end."""
    header = _read_exactly(file, _HEADER.size)
    if header is None:
        return None
    payload = _read_exactly(file, _HEADER.unpack(header)[0])
    return None if payload is None else pickle.loads(payload)


def _read_exactly(file: BinaryIO, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = file.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class _ChildLink:
    """The child's end of the results pipe: whole frames, from any of its threads."""

    def __init__(self, fd: int):
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        frame = _frame(message)
        with self._lock:
            view = memoryview(frame)
            while view:
                view = view[self._file.write(view):]

    def send_group(self, completions: list[Completion], events: list[Event]) -> None:
        try:
            self.send(("group", [(tag, result, _portable(error)) for tag, result, error in completions], events))
        except BrokenPipeError:
            pass  # the parent is gone; the kernel ends this process too

    def send_fatal(self, reason: str) -> None:
        print(f"calo-writer: {reason}", file=sys.stderr, flush=True)
        try:
            self.send(("fatal", reason))
        except BrokenPipeError:
            pass


def _portable(error: BaseException | None) -> BaseException | None:
    """An error the parent can unpickle and the API knows: the store's own are kept,
    anything else becomes a StoreError that names it (an exception whose constructor
    does not take its own args back would otherwise fail in the parent's reader)."""
    if error is None or type(error) is StoreError or isinstance(error, WrongStatus):
        return error
    return StoreError(f"write failed: {error!r}")


def _child_main(path: str, requests_fd: int, results_fd: int, parent_pid: int) -> None:
    """The child process: open the writer, then queue every request the parent sends.
    Errors go to stderr (the server's log): the child has no logging of its own."""
    _die_with_parent(parent_pid)
    # Ctrl-C and systemd's SIGTERM reach the whole process group; the server decides when
    # the writer stops (after in-flight work is committed), by its stop request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    link = _ChildLink(results_fd)
    writer = Writer(path, link.send_group, on_fatal=link.send_fatal)
    try:
        writer.start()
    except StoreError as exc:
        link.send(("failed", exc))
        return
    link.send(("ready", None))
    requests = os.fdopen(requests_fd, "rb", buffering=1 << 16)
    try:
        while (batch := _read_frame(requests)) is not None:
            for number, name, args in batch:
                writer.submit(number, name, args)
    finally:  # a stop request, or the parent closed the pipe
        writer.stop()  # commits what was queued; its results go out before "stopped"
    link.send(("stopped",))


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
    db_path, requests_arg, results_arg, parent = sys.argv[1:5]
    _child_main(db_path, int(requests_arg), int(results_arg), int(parent))
