"""The contract's operator side: the API token in no log line on any error path, /metrics
as the README lists it (from the first scrape, no noise, OpenMetrics on request), and the
command line (`--help`, `--version`, a closed pipe, errors naming their source). Real
server processes and real `python server.py` runs."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import urllib.parse

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from calo.cli import listening_url
from tests.helpers import ROOT, create_many, poll, run_server, settled_via_api
from tests.http_raw import exchange

TOKEN = "Tk-7d1e0c5b9a+/_~.LEAKCHECK=="
FORMS = (TOKEN, urllib.parse.quote(TOKEN, safe=""), urllib.parse.quote_plus(TOKEN),
         base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("="), "LEAKCHECK")


def test_the_token_reaches_no_log_line_on_any_error_path(server_process):
    server = server_process("--private", "--access-log", env={"CALO_API_TOKEN": TOKEN})
    port = int(server.url.rsplit(":", 1)[1])
    query = "access_token=" + urllib.parse.quote(TOKEN, safe="")
    good, bad = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}
    for path in ("/jobs", "/jobs/nope", "/jobs/nope/retry", "/static/demo/", "/static/nope.css", "/nowhere",
                 "/static/app.js%00.css", "/ws", "/jobs?limit=%C2%B2", "/readyz", "/"):
        for method in ("GET", "HEAD", "POST", "DELETE", "OPTIONS", "FOO"):
            for headers in (good, bad, {}):
                sep = "&" if "?" in path else "?"
                requests.request(method, f"{server.url}{path}{sep}{query}", headers=headers, timeout=10)
    ws_url = server.url.replace("http", "ws", 1) + "/ws?since=0&" + query
    with connect(ws_url, proxy=None) as ws:  # the discouraged query form; then frames of every kind
        ws.recv(timeout=10)
        ws.send("ping")
        ws.send('{"type":"ping","token":"' + TOKEN + '"}')
        ws.send(b"\x00" + TOKEN.encode())
        try:
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed:
            pass
    for subprotocol in ("calo.bearer." + FORMS[3] + "x", "calo.bearer.!!"):
        try:
            connect(server.url.replace("http", "ws", 1) + "/ws",
                    subprotocols=[Subprotocol("calo.v1"), Subprotocol(subprotocol)],
                    proxy=None).close()
        except InvalidStatus:
            pass
    # Malformed requests that Tornado refuses itself, each quoting the token somewhere.
    for raw in ({b"Authorization": b"Bearer " + TOKEN.encode() + b"\x01"}, {TOKEN.encode(): b"x"},
                {b"X-Token": TOKEN.encode() + b"\x7f"}):
        exchange(port, b"GET", b"/jobs?" + query.encode(), raw)
    exchange(port, b"GET", b"/jobs?" + query.encode() + b" junk", {})
    assert server.terminate() == 0
    assert any("status=401" in line for line in server.lines)  # the paths were really taken
    leaks = [line for line in server.lines if any(form in line for form in FORMS)]
    assert leaks == []
    assert not any("Traceback" in line or "level=error" in line for line in server.lines)


def metric_names_in_readme() -> set[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    bullet = text[text.index("- **`GET /metrics`**"):text.index("Scrape it with")]
    return {re.sub(r"_total$", "", name) for name in re.findall(r"`(calo_[a-z_]+)", bullet)}


def test_metrics_are_the_readme_s_list_from_the_first_scrape_with_no_noise(server_process):
    server = server_process()
    text = server.get("/metrics").text
    served = {family.name for family in text_string_to_metric_families(text)}
    assert served == metric_names_in_readme()
    assert not re.search(r"^\w+_created(\{[^}]*\})? ", text, re.M)  # no start-time series
    assert 'calo_upstream_requests_total{outcome="ok"} 0.0' in text
    for task in ("prune_events", "export_json"):
        assert f'calo_upkeep_last_run_ok{{task="{task}"}}' in text
    server.post("/jobs")
    poll(lambda: 'calo_jobs{status="resolved"} 1.0' in server.get("/metrics").text)
    later = {family.name for family in text_string_to_metric_families(server.get("/metrics").text)}
    assert later == served  # nothing appears later either


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(server_process):
    server = server_process()
    answer = server.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"})
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")
    families = {family.name for family in openmetrics_families(answer.text)}
    assert families == metric_names_in_readme()
    plain = server.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain") and "# EOF" not in plain.text


def server_py(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})}, **kwargs)


@pytest.mark.parametrize("public_url", [None, "https://jobs.example/calo/"])
def test_demo_image_urls_are_absolute_and_served(server_process, public_url):
    """A front end on another origin shows demo images: their URLs are absolute, from
    --public-url when set (a proxy's prefix kept), else from the address the server listens on."""
    flags = ("--public-url", public_url) if public_url else ()
    server = server_process(*flags, env={"CALO_UNSPLASH_ACCESS_KEY": ""})
    jobs = settled_via_api(server, create_many(server, 3, workers=3))
    base = public_url.rstrip("/") if public_url else server.url
    for job in jobs:
        image = job["image"]
        assert job["status"] == "resolved" and image["source"] == "demo"
        assert job["result"] == image["url"] == image["thumb_url"]
        assert image["url"].startswith(base + "/static/demo/"), image["url"]
        path = image["url"][len(base):]
        assert requests.get(server.url + path, timeout=10).status_code == 200


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:8888"), ("::1", "http://[::1]:8888"), ("[::1]", "http://[::1]:8888"),
    ("localhost", "http://localhost:8888"), ("jobs.internal", "http://jobs.internal:8888"),
])
def test_the_listening_url_names_the_address_clients_use(host, url):
    assert listening_url(host, 8888) == url


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "", "[::]"])
def test_a_wildcard_address_is_named_by_this_machine_s_name(wildcard):
    name = socket.gethostname()
    assert listening_url(wildcard, 80) == (f"http://[{name}]:80" if ":" in name else f"http://{name}:80")


def test_help_shows_real_placeholders_and_defaults_and_version_exists():
    shown = server_py("--help")
    assert shown.returncode == 0 and shown.stderr == ""
    for wrong in ("VALUE", "default ()", "default None", "default: None", "default: ()"):
        assert wrong not in shown.stdout, wrong
    for right in ("--port PORT", "--data-dir DIR", "--client-timeout SECONDS", "--allowed-origins ORIGINS",
                  "default: 8888", "default: unset", "default: off", "CALO_API_TOKEN"):
        assert right in shown.stdout, right
    version = server_py("--version")
    assert version.returncode == 0 and re.fullmatch(r"calo-server \d+\.\d+\.\d+\n", version.stdout)


def test_help_into_a_closed_pipe_exits_0_without_a_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, as with `| head -1` at worst
    try:
        done = subprocess.run([sys.executable, "server.py", "--help"], cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == ""
    piped = subprocess.run(f"{sys.executable} server.py --help | head -1", shell=True, cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert piped.returncode == 0 and piped.stdout.startswith("usage: calo-server") and piped.stderr == ""


def test_a_bad_value_names_the_variable_or_flag_it_came_from():
    from_env = run_server(env={"CALO_PORT": "abc"})
    assert from_env.returncode == 2 and "CALO_PORT" in from_env.stderr and "--port" not in from_env.stderr
    from_flag = run_server("--port", "abc")
    assert from_flag.returncode == 2 and "--port" in from_flag.stderr
    together = run_server(env={"CALO_DELAY_MIN": "60", "CALO_DELAY_MAX": "5"})
    assert together.returncode == 2 and "CALO_DELAY_MIN" in together.stderr and "CALO_DELAY_MAX" in together.stderr
    token = run_server(env={"CALO_API_TOKEN": "has space " + TOKEN})
    assert token.returncode == 2 and "CALO_API_TOKEN" in token.stderr and TOKEN not in token.stderr
