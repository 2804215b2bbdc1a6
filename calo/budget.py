"""The Unsplash request budget: how many calls may start now, whoever starts them.

Owns the arithmetic that keeps the calls started by every server together within the
budget Unsplash last reported (`X-Ratelimit-Remaining`). A call is *reserved* before it
starts and *released* when its answer comes; the calls reserved and not yet answered count
as spent, because Unsplash may count them before or after the answers already seen. So
the calls that may start now are `remaining - reserved`, where `remaining` is the lowest
figure reported in the current window (answers of concurrent calls arrive in any order,
and within a window the budget only shrinks).

Unsplash sends no reset time, so a reported figure is trusted for one window
(`--rate-limit-pause`, an hour) from when it was learned, and a spent budget until the
rate-limit pause ends. After that the budget may have been renewed: one call at a time
(a probe) learns it afresh, or as many as the old figure allowed. An answer with no
budget header (the demo source, some proxies) means the upstream meters nothing: no limit
until the window ends. A call that failed without an answer saying otherwise is assumed
not counted (Unsplash does not charge for its own 5xx, nor for a refused connection).

The `Budget` value is held by the storage (calo.storage.base `reserve_calls`,
`release_calls`): in memory with SQLite (`MemoryBudget`, one server), in a shared row with
each live server's reservations with PostgreSQL (calo.storage.postgres), which runs the
same arithmetic on the row as read and writes it back only if the row's version is
unchanged meanwhile (else it reads and decides again; no lock is held across the decision).

Threads: plain values; `MemoryBudget` on the IOLoop thread only.
Must never: do I/O, know about jobs, or know which backend holds the budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import NamedTuple, TypeVar

T = TypeVar("T")


class BudgetReport(NamedTuple):
    """What one answer said of the budget."""

    remaining: int | None  # its X-Ratelimit-Remaining (0: spent, also on a 429/403); None: none sent
    until: int  # wall-clock ms it holds until: the end of the window, or of the pause when spent


@dataclasses.dataclass
class Budget:
    """The budget as last reported; `until` (wall-clock ms): trusted until then."""

    remaining: int | None = None  # None within `until`: the upstream sends no budget
    until: int = 0  # 0: never learned

    def grant(self, wanted: int, reserved: int, now: int) -> int:
        """How many of `wanted` calls may start at `now` (wall-clock ms), with `reserved`
        calls started (by every server) and not yet answered."""
        if now >= self.until:  # never learned, or the window may have been renewed since
            allowed = max(1, self.remaining or 0) - reserved
        elif self.remaining is None:  # no budget is metered
            return wanted
        else:
            allowed = self.remaining - reserved
        return max(0, min(wanted, allowed))

    def learn(self, report: BudgetReport, now: int) -> None:
        """Take in what an answer said, at `now` (wall-clock ms)."""
        stale = now >= self.until
        if report.remaining == 0:  # spent: nothing is lower, and it holds until the pause ends
            self.remaining, self.until = 0, max(report.until, self.until if self.remaining == 0 else 0)
        elif stale or self.remaining is None:
            if report.remaining is not None or stale:
                self.remaining, self.until = report.remaining, report.until
        elif report.remaining is not None:  # an answer that was overtaken reports more: keep the lowest
            self.remaining = min(self.remaining, report.remaining)


class MemoryBudget:
    """The budget of one server alone (SQLite): the reservations are its own calls."""

    def __init__(self) -> None:
        self.budget = Budget()
        self.reserved = 0

    def reserve_calls(self, wanted: int, now: int) -> asyncio.Future[int]:
        granted = self.budget.grant(wanted, self.reserved, now)
        self.reserved += granted
        return _done(granted)

    def release_calls(self, count: int, report: BudgetReport | None, now: int) -> asyncio.Future[None]:
        self.reserved = max(0, self.reserved - count)
        if report is not None:
            self.budget.learn(report, now)
        return _done(None)


def _done(value: T) -> asyncio.Future[T]:
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
