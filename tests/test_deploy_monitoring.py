"""The operator's files in deploy/: the Prometheus alerting rules pass `promtool check rules`
and their own unit tests (`promtool test rules`, Debian's `prometheus` package, which
scripts/test.sh installs when missing), the Grafana dashboard is well formed, and every
series the rules and the dashboard use exists in a real server's /metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, poll

RULES = os.path.join(ROOT, "deploy", "prometheus", "calo-alerts.yml")
RULE_TESTS = os.path.join(ROOT, "deploy", "prometheus", "calo-alerts.test.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "calo-dashboard.json")
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself, not read from /metrics
ADDED_BY_PROMETHEUS = {"instance", "job"}  # target labels, on every scraped series
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run `bash scripts/test.sh`, which installs Debian's prometheus "
                    "package (apt-get install prometheus)", pytrace=False)
    return path


def rule_expressions() -> list[str]:
    with open(RULES, encoding="utf-8") as file:
        groups = yaml.safe_load(file)["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    with open(DASHBOARD, encoding="utf-8") as file:
        return json.load(file)


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def series_used(expressions: list[str]) -> dict[str, set[str]]:
    """Metric name -> label names matched on it, for every `calo_` series in the PromQL."""
    used: dict[str, set[str]] = {}
    for expr in expressions:
        for name, braces in SELECTOR.findall(expr):
            if name.startswith("calo_") or name in PROMETHEUS_OWN:
                labels = set(MATCHER.findall(braces)) - ADDED_BY_PROMETHEUS
                used.setdefault(name, set()).update(labels)
    return used


def test_alert_rules_pass_promtool_and_their_unit_tests():
    checked = subprocess.run([promtool(), "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = subprocess.run([promtool(), "test", "rules", RULE_TESTS], capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_grafana_dashboard_is_well_formed():
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_every_series_the_rules_and_the_dashboard_use_exists_in_metrics(server_process, fake_unsplash):
    server = server_process("--unsplash-batch", "1")
    job = server.post("/jobs").json()["id"]
    poll(lambda: server.get(f"/jobs/{job}").json()["status"] == "resolved")
    text = server.get("/metrics").text
    labels_of: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels_of.setdefault(sample.name, set()).update(sample.labels)

    used = series_used(rule_expressions() + dashboard_expressions())
    assert {"calo_jobs", "calo_upstream_state", "calo_scheduler_stuck", "calo_writer_up",
            "calo_job_lateness_seconds_bucket"} <= set(used)
    for name, labels in sorted(used.items()):
        if name in PROMETHEUS_OWN:
            continue
        assert name in labels_of, f"{name} is used but not in /metrics"
        assert labels <= labels_of[name], f"{name} has no label {labels - labels_of[name]} in /metrics"
