"""Calo Jobs as a user runs it: `python server.py` as a real process, killed and restarted."""

from __future__ import annotations

import json
import os

from tests.helpers import ROOT, all_jobs, create_many, poll, resolution_events, run_server


def test_200_concurrent_jobs_all_resolve_with_threads_bounded(server_process, data_dir):
    server = server_process("--workers", "4")
    peak = [server.threads()]

    def all_resolved():
        peak.append(server.threads())
        return len(all_jobs(server, "resolved")) == 200

    ids = create_many(server, 200)
    peak.append(server.threads())
    poll(all_resolved, timeout=20)
    # main + exporter + the pool's 4 (the writer is a process of its own): the count never
    # grows with pending jobs.
    assert max(peak) <= 4 + 4, peak
    assert set(resolution_events(data_dir)) == set(ids)
    assert set(resolution_events(data_dir).values()) == {1}


def test_kill_9_then_restart_loses_nothing_and_resolves_the_rest(server_process, data_dir, fake_unsplash):
    server = server_process("--delay-min", "1", "--delay-max", "2", "--delay-step", "0.5")
    ids = create_many(server, 60, key_prefix="press")
    fake_unsplash.set_delay(3)  # the first fetches are in flight when the process dies
    poll(lambda: fake_unsplash.photo_requests_count > 0, timeout=10)
    server.kill()
    fake_unsplash.clear_faults()

    server = server_process()
    assert sorted(job["id"] for job in all_jobs(server)) == sorted(ids)
    poll(lambda: len(all_jobs(server, "resolved")) == 60, timeout=20)
    assert any("of them overdue" in line for line in server.lines)
    events = resolution_events(data_dir)
    assert set(events) == set(ids) and set(events.values()) == {1}  # each resolved exactly once
    # The idempotency keys survived the crash too: repeating a press creates nothing.
    again = server.post("/jobs", json={}, headers={"Idempotency-Key": "press-7"})
    assert again.status_code == 200 and again.json()["id"] in ids
    assert len(all_jobs(server)) == 60


def test_sigterm_exits_0_and_pending_jobs_continue_after_the_next_start(server_process):
    server = server_process("--delay-min", "30", "--delay-max", "30", "--delay-step", "1")
    ids = create_many(server, 5)
    assert server.terminate() == 0
    assert any("msg=stopped" in line for line in server.lines)
    server = server_process("--delay-min", "1", "--delay-max", "1")
    jobs = {job["id"]: job for job in all_jobs(server)}
    assert set(jobs) == set(ids) and {job["status"] for job in jobs.values()} == {"pending"}
    assert {job["delay_seconds"] for job in jobs.values()} == {30.0}  # kept their due times


def test_json_export_mirrors_every_job_and_is_always_valid(server_process, data_dir):
    server = server_process()
    ids = create_many(server, 30)
    export_path = os.path.join(data_dir, "jobs.json")

    def exported():
        with open(export_path, encoding="utf-8") as file:
            document = json.load(file)  # never torn: always parses
        jobs = {job["id"]: job for job in document["jobs"]}
        return document if set(jobs) == set(ids) and all(j["status"] == "resolved" for j in jobs.values()) else None

    document = poll(exported, timeout=15)
    assert document["format"] == "calo-jobs-export" and document["version"] == 1
    api = {job["id"]: job for job in all_jobs(server)}
    assert {job["id"]: job for job in document["jobs"]} == api
    assert not [name for name in os.listdir(data_dir) if name.endswith(".tmp")]


def test_a_second_server_on_the_same_data_dir_is_refused(server_process, data_dir):
    server_process()
    result = run_server("--port", "0", env={"CALO_DATA_DIR": data_dir})
    assert result.returncode == 1
    assert "in use by another calo-server" in result.stderr and "Traceback" not in result.stderr


def test_bad_settings_exit_nonzero_with_one_line_naming_the_setting(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--port", "70000"], {}, "--port"),
        (["--port", "eighty"], {}, "--port"),
        ([], {"CALO_PORT": "-1"}, "CALO_PORT"),  # the variable it came from, not the flag
        (["--delay-min", "10", "--delay-max", "5"], {}, "--delay-min"),
        (["--delay-step", "0"], {}, "--delay-step"),
        (["--workers", "0"], {}, "--workers"),
        (["--data-dir", str(a_file / "sub")], {}, "data dir"),
        ([], {"CALO_UNSPLASH_API_URL": "ftp://x"}, "CALO_UNSPLASH_API_URL"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--client-timeout", "0"], {}, "--client-timeout"),  # a sweep every 0 s: a core spinning
        ([], {"CALO_INSTANCE_LEASE": "0.01"}, "CALO_INSTANCE_LEASE"),
        (["--unsplash-timeout", "0"], {}, "--unsplash-timeout"),
        (["--rate-limit-pause", "0"], {}, "--rate-limit-pause"),  # rate-limited calls retried at once
        ([], {"CALO_RATE_LIMIT_PAUSE": "0.05"}, "CALO_RATE_LIMIT_PAUSE"),
    ]
    for flags, env, named in cases:
        result = run_server(*flags, env={"CALO_DATA_DIR": str(tmp_path / "d"), **env})
        lines = [line for line in result.stderr.splitlines() if "level=warning" not in line]
        assert result.returncode != 0, flags
        assert len(lines) == 1 and named in lines[0], (flags, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_flag_wins_over_its_environment_variable(server_process):
    server = server_process("--delay-min", "7", "--delay-max", "7", env={"CALO_DELAY_MIN": "1", "CALO_DELAY_MAX": "9"})
    assert server.post("/jobs").json()["delay_seconds"] == 7.0


def test_help_lists_every_flag_and_environment_variable():
    from calo.config import SETTINGS

    result = run_server("--help")
    assert result.returncode == 0
    for setting in SETTINGS:
        assert (setting.flag or setting.env[0]) in result.stdout
        for name in setting.env:
            assert name in result.stdout


def test_readme_documents_every_setting():
    from calo.config import SETTINGS

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    for setting in SETTINGS:
        for name in ([setting.flag] if setting.flag else []) + list(setting.env):
            assert f"`{name}`" in readme, name
