"""The OpenAPI document at /openapi.json: real responses match it, and schemathesis's
property-based requests against a running server find no 5xx and no answer that breaks it."""

from __future__ import annotations

import hypothesis
import jsonschema
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from calo.openapi import DOCUMENT
from tests.conftest import poll

schema = schemathesis.openapi.from_dict(DOCUMENT)


def job_schema():
    """The Job schema as plain JSON Schema (OpenAPI 3.0's `nullable` spelled out)."""

    def convert(node):
        if isinstance(node, dict):
            node = {key: convert(value) for key, value in node.items()}
            if node.pop("nullable", False):
                node = {"anyOf": [node, {"type": "null"}]}
            if "$ref" in node:
                return convert(DOCUMENT["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
            return node
        if isinstance(node, list):
            return [convert(item) for item in node]
        return node

    return convert(DOCUMENT["components"]["schemas"]["Job"])


def test_the_served_document_is_the_one_in_the_code(server_process):
    server = server_process()
    served = server.get("/openapi.json")
    assert served.status_code == 200 and served.json() == DOCUMENT
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


@pytest.fixture
def running(server_process, fake_unsplash):
    return server_process("--max-pending", "50")


@schema.parametrize()
@hypothesis.settings(
    max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(case, running):
    response = case.call(base_url=running.url, timeout=10)
    case.validate_response(response, checks=(
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
    ))
