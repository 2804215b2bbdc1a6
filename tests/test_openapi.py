"""The OpenAPI document at /openapi.json: real responses match it, and schemathesis (every
check, every phase including the stateful one, with and without a token) finds nothing
against a running server."""

from __future__ import annotations

import os
import subprocess
import sys

import jsonschema
import pytest

from calo.access import AccessPolicy
from calo.openapi import DOCUMENT, document
from tests.helpers import job_schema, poll

TOKEN = "schemathesis-token-1"
SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")


def test_the_served_document_is_the_one_in_the_code(server_process):
    server = server_process()
    served = server.get("/openapi.json")
    assert served.status_code == 200 and served.json() == document(AccessPolicy())
    assert set(DOCUMENT["paths"]) == {"/jobs", "/jobs/{id}", "/jobs/{id}/retry", "/jobs/retry-failed",
                                      "/jobs/{id}/cancel", "/jobs/{id}/events", "/stats"}


def test_real_jobs_in_every_state_match_the_job_schema(server_process, fake_unsplash):
    server = server_process("--max-attempts", "1", "--unsplash-batch", "1")
    validator = jsonschema.Draft7Validator(job_schema())
    resolved = server.post("/jobs").json()
    poll(lambda: server.get(f"/jobs/{resolved['id']}").json()["status"] == "resolved")
    fake_unsplash.fail_with(500)
    failed = server.post("/jobs").json()
    poll(lambda: server.get(f"/jobs/{failed['id']}").json()["status"] == "failed")
    jobs = [server.get(f"/jobs/{job['id']}").json() for job in (resolved, failed)]
    jobs += server.get("/jobs").json() + [server.post("/jobs").json()]
    assert {job["status"] for job in jobs} == {"pending", "resolved", "failed"}  # cancelled: tests/test_actions.py
    for job in jobs:
        validator.validate(job)


def test_the_bearer_scheme_is_on_exactly_the_operations_that_need_the_token():
    def secured(access):
        doc = document(access)
        return {(method.upper(), path) for path, ops in doc["paths"].items() for method, op in ops.items()
                if op.get("security") == [{"bearer": []}] and "401" in op["responses"]}

    everything = {(method.upper(), path) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert secured(AccessPolicy()) == set()
    assert secured(AccessPolicy("t")) == {op for op in everything if op[0] == "POST"}
    assert secured(AccessPolicy("t", private=True)) == everything
    cursor = next(p for p in DOCUMENT["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "cursor")
    assert cursor["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}


def run_schemathesis(url: str, cwd, *extra: str) -> str:
    """`schemathesis run` with every check and every phase; its report (output)."""
    command = [SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", "25",
               "--seed", "20261130", "--workers", "1", "--request-timeout", "10", "--warnings", "off",
               "--phases", "examples,coverage,fuzzing,stateful", *extra]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing_without_a_token(server_process, tmp_path):
    server = server_process("--max-pending", "50")
    report = run_schemathesis(server.url, tmp_path)
    assert "Stateful" in report and "No issues found" in report, report[-3000:]
    assert not any("level=error" in line or "exc=" in line for line in server.lines)


@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing_with_a_token_and_private(server_process, tmp_path):
    server = server_process("--max-pending", "50", "--private", env={"CALO_API_TOKEN": TOKEN})
    report = run_schemathesis(server.url, tmp_path, "--header", f"Authorization: Bearer {TOKEN}")
    assert "Stateful" in report and "No issues found" in report, report[-3000:]
    assert not any(TOKEN in line or "level=error" in line for line in server.lines)
