"""The supervisor: notices a part of the server that died, and stops the server loudly.

Owns one periodic check (every CHECK_SECONDS) of the parts that run outside the IOLoop
thread: the writer process and the JSON exporter's thread. Each is built to outlive
its own failures (the writer fails one group, the exporter one export); if one dies
anyway, nothing else would notice: writes would hang, or `jobs.json` would go stale for
ever. Then the supervisor logs it as critical and calls `on_fatal`, and the server
stops with exit code 1 so that systemd restarts it (recovery takes under a second).
Modelled on huey's `Consumer.check_worker_health`, which restarts dead workers; here
the restart is systemd's, since a dead writer means the process's state is suspect.

Threads: IOLoop thread only (a tornado PeriodicCallback).
Must never: block, or call `on_fatal` more than once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tornado.ioloop import PeriodicCallback

log = logging.getLogger("calo.supervisor")

CHECK_SECONDS = 1.0


class Supervisor:
    def __init__(self, parts: dict[str, Callable[[], bool]], on_fatal: Callable[[str], None]):
        """`parts` maps a name ("the writer process") to a check that is True while it
        runs."""
        self._parts = parts
        self._on_fatal = on_fatal
        self._failed = False
        self._callback = PeriodicCallback(self._check_now, CHECK_SECONDS * 1000)

    def start(self) -> None:
        self._callback.start()

    def stop(self) -> None:
        self._callback.stop()

    def _check_now(self) -> None:
        self.check()

    def check(self) -> list[str]:
        """The parts found dead (each is reported once, on the first check that sees it)."""
        dead = [name for name, alive in self._parts.items() if not alive()]
        if dead and not self._failed:
            self._failed = True
            reason = f"{', '.join(dead)} stopped unexpectedly"
            log.critical("%s; stopping so that the service restarts", reason)
            self._on_fatal(reason)
        return dead
