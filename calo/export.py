"""The JSON export: `jobs.json` in the data dir mirrors every job in the database.

Owns that one file. It is always a complete, valid JSON document: each export is written
to a temporary file in the same directory, fsynced, and renamed over the old one. It
runs on its own thread with its own read connection, only after something changed, at
most once per `interval` (1 s), so with up to a few hundred thousand jobs it trails the
database by under 2 s. A bigger table is paced by its own cost (the next export waits
PACING times the last one's duration), so the export never takes more than a sixth of
the time, or of the GIL, however large the table grows. SQLite joins the documents in
chunks, so Python runs once per 2,000 jobs, not once per job.

Format: {"format": "calo-jobs-export", "version": 1, "exported_at": ISO time,
"jobs": [job, ...]} with jobs oldest first, each exactly as `GET /jobs/{id}` shows it.

A failed export (a full disk, a row SQLite cannot decode, anything) is logged, shown by
`calo_upkeep_last_run_ok{task="export_json"}` as 0, and tried again after the pause:
the thread outlives every error of one export, and `alive` lets a supervisor check it.

Threads: `mark_changed`, `alive` and `stop` are safe from any thread; the export runs on
its own.
Must never: run on the IOLoop thread, leave a torn or half-written `jobs.json`, or stop
exporting after one failure.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from calo.clock import iso_utc, now_ms
from calo.storage.base import StoreError

if TYPE_CHECKING:
    from calo.storage.base import ExportReader, Storage

log = logging.getLogger("calo.export")

EXPORT_FILE = "jobs.json"
PACING = 5  # wait at least this many times an export's duration before the next
FORMAT = "calo-jobs-export"


def write_atomically(path: str, write_body: Callable[[TextIO], None]) -> None:
    """Write a file so that readers see the old or the new one, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(prefix=".jobs-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 20) as file:
            write_body(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class JsonExporter:
    def __init__(self, storage: Storage, data_dir: str, interval: float = 1.0):
        self.path = os.path.join(data_dir, EXPORT_FILE)
        self._storage = storage
        self._interval = interval
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._owed = False  # an export was skipped while another server ran upkeep
        self._thread = threading.Thread(target=self._run, name="calo-export", daemon=True)
        self._started = False
        # What the last export did, for /metrics. Written by the export thread only;
        # readers on other threads see whole values (plain attribute stores).
        self.last_run_at: int | None = None
        self.last_duration: float | None = None
        self.last_ok: bool | None = None

    def start(self) -> None:
        self._started = True
        try:  # SQLite made it already; with PostgreSQL the data dir holds only the export
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        except OSError as exc:
            log.error("cannot create the data dir for %s: %s", self.path, exc.strerror)
        self._changed.set()  # one export at start-up, so the file exists and is current
        self._thread.start()

    def mark_changed(self) -> None:
        """Something was committed; export soon. Safe from any thread."""
        self._changed.set()

    def stop(self) -> None:
        """Write a final export if anything changed since the last, then end the thread.
        Idempotent."""
        self._stopping.set()
        self._changed.set()
        if self._thread.is_alive():
            self._thread.join()

    def alive(self) -> bool:
        """Is the export thread running (a supervisor asks; it should always be)?"""
        return self._thread.is_alive() or not self._started

    def _run(self) -> None:
        reader = self._storage.export_reader()
        try:
            while True:
                # An export skipped because another server ran upkeep is owed: look again
                # each interval, so this server writes it soon after it takes upkeep over.
                self._changed.wait(self._interval if self._owed else None)
                self._changed.clear()
                self._export_logged(reader)
                if self._stopping.is_set():
                    if self._changed.is_set():
                        self._export_logged(reader)
                    return
                self._stopping.wait(self._pause())
        finally:
            reader.close()

    def _pause(self) -> float:
        """Seconds until the next export may start: `interval`, or more for a big table,
        so that exporting takes at most 1/(PACING + 1) of the time (and of the GIL)."""
        return max(self._interval, PACING * (self.last_duration or 0.0))

    def _export_logged(self, reader: ExportReader) -> None:
        """One export; a failure is logged (rate-limited) and shown by /metrics, and the
        next change tries again: the thread outlives any error of one export."""
        self._owed = not self._storage.runs_upkeep
        if self._owed:
            return  # another server sharing the database writes the export now
        started, started_monotonic, ok = now_ms(), time.monotonic(), False
        try:
            self.export(reader)
            ok = True
        except (OSError, StoreError) as exc:  # a full disk, a database away: try again on the next change
            log.error("JSON export to %s failed: %s", self.path, exc)
        except Exception:  # e.g. a row SQLite cannot decode: never the end of exporting
            log.exception("JSON export to %s failed", self.path)
        # The duration on the monotonic clock: a wall-clock step must not pace the next export.
        self.last_run_at, self.last_duration, self.last_ok = started, time.monotonic() - started_monotonic, ok
        if not ok:
            self._changed.set()  # the file is stale: try again after the pause

    def export(self, reader: ExportReader) -> int:
        """Write every job to `jobs.json`; returns how many."""
        count = 0

        def body(file: TextIO) -> None:
            nonlocal count
            file.write(f'{{"format":"{FORMAT}","version":1,"exported_at":"{iso_utc(now_ms())}","jobs":[')
            for chunk_count, docs in reader.iter_job_chunks():
                file.write(",\n" if count else "\n")
                file.write(docs)
                count += chunk_count
            file.write("\n]}\n")

        write_atomically(self.path, body)
        return count


def read_export(path: str) -> list[str]:
    """The job documents of a `jobs.json` export, re-encoded; raises ValueError (one
    line) if the file is not a complete export in this format."""
    try:
        # Bytes that are not UTF-8 become U+FFFD: one damaged caption must not stop a restore.
        with open(path, encoding="utf-8", errors="replace") as file:
            document = json.load(file)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be an export") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != 1:
        raise ValueError(f"{path} is not a Calo Jobs export (format {FORMAT}, version 1)")
    jobs = document.get("jobs")
    if not isinstance(jobs, list) or not all(isinstance(job, dict) and "id" in job for job in jobs):
        raise ValueError(f"{path} has no valid list of jobs")
    return [json.dumps(job, separators=(",", ":"), ensure_ascii=False) for job in jobs]
