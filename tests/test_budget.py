"""The Unsplash budget (calo.budget): the calls of every server together never exceed what
Unsplash last said was left, and the jobs that wait for it resolve once it is renewed.

Real `python server.py` processes (one on SQLite; three on the throwaway PostgreSQL of
tests/postgres.py) against the fake Unsplash, whose budget of K calls is renewed one
window after its first call, as Unsplash renews its hourly budget; the servers' rate-limit
pause is that window. The fake counts the calls it refused for a spent budget: none."""

from __future__ import annotations

import pytest

from calo.budget import Budget, BudgetReport
from tests.helpers import poll
from tests.test_postgres_instances import pending_left, resolution_counts, start_servers

WINDOW = 1.5  # seconds: the fake's budget window, and the servers' --rate-limit-pause


def budget_flags(batch: int, workers: int) -> tuple[str, ...]:
    return ("--unsplash-batch", str(batch), "--workers", str(workers), "--rate-limit-pause", str(WINDOW),
            "--delay-min", "0.2", "--delay-max", "0.4", "--delay-step", "0.2")


def create_and_settle(fake_unsplash, servers, budget, jobs_per_server, calls_needed):
    """Create jobs due at about the same moment on every server, with a budget of
    `budget` calls per window; once all are settled, check the budget was kept. Returns
    the jobs' ids."""
    fake_unsplash.reset_rate_limit(budget)
    fake_unsplash.set_rate_limit_window(WINDOW)
    fake_unsplash.set_delay(0.2)  # calls overlap: those in flight when the budget runs out count too
    ids = [server.post("/jobs").json()["id"] for server in servers for _ in range(jobs_per_server)]
    windows = -(-calls_needed // budget)
    poll(lambda: servers[0].get("/jobs?status=pending&limit=1").json() == [], 10 + windows * WINDOW * 3)
    jobs = [servers[0].get(f"/jobs/{job_id}").json() for job_id in ids]
    assert [job["status"] for job in jobs] == ["resolved"] * len(ids)
    assert fake_unsplash.over_budget_calls == 0  # no call was made past the budget
    assert budget < fake_unsplash.photo_requests_count <= windows * budget  # it came back after the pause
    assert any(waited_for_the_rate_limit(servers[0], job_id) for job_id in ids)
    return ids


def waited_for_the_rate_limit(server, job_id):
    events = server.get(f"/jobs/{job_id}/events").json()
    return any((event["job"].get("error") or {}).get("code") == "rate_limited"
               for event in events)


@pytest.mark.parametrize(("budget", "batch", "workers", "jobs"), [
    pytest.param(2, 1, 4, 5, id="budget2-batch1-workers4"),
    pytest.param(3, 2, 2, 10, id="budget3-batch2-workers2"),
])
def test_one_server_keeps_within_the_budget_and_resumes_after_the_pause(
    server_process, fake_unsplash, budget, batch, workers, jobs,
):
    server = server_process(*budget_flags(batch, workers))
    create_and_settle(fake_unsplash, [server], budget, jobs, -(-jobs // batch))


@pytest.mark.parametrize(("budget", "batch", "workers", "jobs_per_server"), [
    pytest.param(3, 1, 2, 2, id="budget3-batch1-workers2"),
    pytest.param(4, 3, 4, 5, id="budget4-batch3-workers4"),
])
def test_three_servers_together_keep_within_the_budget(
    server_process, fake_unsplash, tmp_path, database_url, budget, batch, workers, jobs_per_server,
):
    servers = start_servers(server_process, tmp_path, database_url, 3, "--instance-lease", "1",
                            *budget_flags(batch, workers))
    ids = create_and_settle(fake_unsplash, servers, budget, jobs_per_server, 3 * -(-jobs_per_server // batch))
    assert resolution_counts(database_url, ids) == {job_id: 1 for job_id in ids}


def test_the_calls_a_killed_server_reserved_do_not_hold_the_budget_for_ever(
    server_process, fake_unsplash, tmp_path, database_url,
):
    killed, survivor = start_servers(server_process, tmp_path, database_url, 2, "--instance-lease", "1")
    fake_unsplash.set_delay(30)  # the first call (the probe that learns the budget) hangs
    first = killed.post("/jobs").json()["id"]
    poll(lambda: fake_unsplash.photo_requests_count == 1)
    killed.kill()  # holding the one call the unknown budget allows
    fake_unsplash.set_delay(0)
    second = survivor.post("/jobs").json()["id"]
    # Once its lease has run out, its reservation no longer counts: the survivor probes,
    # and runs its own job and the one it took over.
    poll(lambda: pending_left(database_url) == 0, 15)
    assert resolution_counts(database_url, [first, second]) == {first: 1, second: 1}
    assert fake_unsplash.over_budget_calls == 0


@pytest.mark.parametrize("reports", [[7, 9, 8], [3, 0, 5], [None, 4]])
def test_the_budget_keeps_the_lowest_figure_of_a_window(reports):
    budget = Budget()
    for remaining in reports:
        budget.learn(BudgetReport(remaining, 10_000), 1000)
    lowest = min((r for r in reports if r is not None), default=None)
    assert budget.remaining == lowest
    assert budget.grant(10, 1, 2000) == max(0, (lowest or 0) - 1)


def test_an_unknown_or_renewed_budget_allows_one_probe_and_an_unmetered_one_any():
    assert Budget().grant(5, 0, 1000) == 1 and Budget().grant(5, 1, 1000) == 0
    spent = Budget()
    spent.learn(BudgetReport(0, 5000), 1000)  # spent until the pause ends at 5000
    assert spent.grant(5, 0, 4999) == 0 and spent.grant(5, 0, 5000) == 1
    spent.learn(BudgetReport(40, 9000), 5000)  # the probe found it renewed
    assert spent.grant(5, 1, 5001) == 5
    unmetered = Budget()
    unmetered.learn(BudgetReport(None, 9000), 1000)
    assert unmetered.grant(50, 49, 2000) == 50
