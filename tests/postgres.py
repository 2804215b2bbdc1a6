"""A throwaway PostgreSQL cluster for the tests: Debian's binaries, a temporary directory,
loopback only.

`initdb` makes the cluster in a fresh temporary directory (as the `postgres` user when the
tests run as root, since PostgreSQL refuses to run as root); `pg_ctl` starts it listening
on 127.0.0.1 only, on a free port, with its unix socket in that directory, and stops it at
the end. Each test gets a database of its own (`new_database`). `fsync` is off: the tests
kill processes, never the machine, so what PostgreSQL has written survives them anyway,
and the suite stays fast on a shared disk.

A missing PostgreSQL is an error, never a skip: `scripts/test.sh` installs it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import psycopg

START_TIMEOUT_SECONDS = 30


class PostgresMissing(Exception):
    """No PostgreSQL server binaries: install Debian's `postgresql` (scripts/test.sh does)."""


def find_bindir() -> str:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if not found:
        raise PostgresMissing("no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql (scripts/test.sh does)")
    return os.path.dirname(found[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayPostgres:
    """One cluster: `start()`, `new_database()` per test, `stop()` at the end. `restart()`
    and `stop()`/`start()` let fault tests take it away under running servers."""

    def __init__(self, *, fsync: bool = False) -> None:
        """`fsync=True` for measurements (the benchmark): commits durable as in production."""
        self.fsync = fsync
        self.bindir = find_bindir()
        self.dir = tempfile.mkdtemp(prefix="calo-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self._numbers = itertools.count(1)
        self._user = None
        if os.geteuid() == 0:  # postgres will not run as root: hand it the directory
            self._user = pwd.getpwnam("postgres")
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        command = [os.path.join(self.bindir, program), *args]
        if self._user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir}"
                   f" -c fsync={'on' if self.fsync else 'off'} -c max_connections=300")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o", options,
                  "-w", "-t", str(START_TIMEOUT_SECONDS), "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: a clean shutdown that ends every session; `immediate`: a crash."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"calo_test_{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(os.path.join(self.dir, "log"), encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)
