"""The HTTP contract every route keeps, whatever a client sends (README "The API"):
hostile values in every parameter answer JSON 4xx and never a 500 or a traceback; HEAD,
OPTIONS and 405 with Allow on every route; security headers; foreign origins and foreign
Host names refused; the token never in a log line. Real server processes over loopback,
raw sockets where no HTTP library would send the bytes.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse

import pytest
import requests

from calo.access import answered_hosts
from tests.helpers import poll
from tests.http_raw import Answer, exchange, send_raw

TOKEN = "tok-3f9a+/_~.SECRET=="
AUTH = {b"Authorization": b"Bearer " + TOKEN.encode()}
JSON_POST = {**AUTH, b"Content-Type": b"application/json"}
CURSOR_PAST_64_BITS = base64.urlsafe_b64encode(b"n:99999999999999999999999").rstrip(b"=")

# Values for any text parameter, as they appear on the wire (already percent-encoded
# where a client would encode them; raw bytes where a hostile one would not).
HOSTILE = [
    b"%C2%B2", b"%D9%A1", b"%EF%BC%95", b"%E2%85%A0",  # digits of other scripts: 2, 1, 5, Roman I
    b"-1", b"%2B1", b"+1", b"%201", b"1%20", b"1_000", b"0x10", b"1e3", b"1.0",  # signs, spaces, forms
    b"99999999999999999999", b"18446744073709551616", b"9223372036854775808",  # past 64 bits
    b"", b"%00", b"1%002", b"%FF%FE", b"%C3%28", b"%ED%A0%80",  # empty, NUL, invalid UTF-8, a surrogate
    b"%", b"%G1", b"%%%", b"%E2%82", b"%5B" * 2000, b"A" * 8000,  # junk, nesting, overlong
    b"\xff\xfe", b"%0D%0ASet-Cookie:%20x=1", b"%3Cscript%3E", CURSOR_PAST_64_BITS,
]
QUERIES = {  # route -> its query parameters
    b"/jobs": [b"status", b"limit", b"cursor"],
    b"/ws": [b"since", b"access_token"],
    b"/": [b"x"], b"/openapi.json": [b"x"], b"/healthz": [b"x"], b"/readyz": [b"x"], b"/metrics": [b"x"],
}
PATHS = [b"/jobs/{}", b"/jobs/{}/retry", b"/static/{}", b"/static/demo/{}", b"/{}"]
BODIES = [
    b"[" * 50_000, b"{" * 30_000, b'{"a":' * 20_000, b"\xff\xfe", b"\x00", b"{}\x00", b'{"x":1}',
    b'{"a":1,"a":2}', b"[]", b"null", b"1e999999", b"-", b'"' + b"A" * 60_000 + b'"', b"{" + b" " * 70_000 + b"}",
    b'{"\\ud800":1}', b'{"\\u0000":1}',
]
HEADER_VALUES = [b"", b"\xff\xfe", b"x" * 4000, b"%00", b"\xc2\xb2", b"Bearer", b"Bearer ", b"Basic abc",
                 b"Bearer " + b"\xff" * 10, b"a, b", b"\t", b"k\x00ey", b"k\x7fey", b"\x01", b"a\x1bb", b"\x00"]
READ_HEADERS = [b"Idempotency-Key", b"Authorization", b"Content-Type", b"Origin", b"Sec-Fetch-Site",
                b"X-Request-Id", b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Version", b"Sec-WebSocket-Key",
                b"If-None-Match", b"Range", b"If-Modified-Since"]


def assert_contract(answer: Answer, what: object, head: bool = False) -> None:
    """Never a 5xx; every error is a JSON error document (an answer to HEAD has no body)."""
    assert answer.status < 500, (what, answer)
    if answer.status >= 400:
        assert answer.is_json, (what, answer)
        if not head:
            assert set(answer.json()["error"]) == {"code", "message"}, (what, answer)


def assert_clean_log(lines: list[str]) -> None:
    for line in lines:
        assert len(line) < 1500, line[:300]  # a client's 60 KB path is cut short in the access line
        assert "level=error" not in line and "Traceback" not in line and "exc=" not in line, line
        assert TOKEN not in line and urllib.parse.quote(TOKEN) not in line, line


@pytest.fixture
def server(server_process):
    return server_process(env={"CALO_API_TOKEN": TOKEN})


def test_hostile_values_in_every_query_parameter_answer_json_4xx(server):
    port = int(server.url.rsplit(":", 1)[1])
    for route, names in QUERIES.items():
        for name in names:
            for value in HOSTILE:
                target = route + b"?" + name + b"=" + value
                headers = {**AUTH, b"Upgrade": b"websocket", b"Connection": b"Upgrade",
                           b"Sec-WebSocket-Version": b"13", b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ=="}
                if route == b"/ws" and name == b"access_token":
                    continue  # with a valid header, a wrong query token is never read
                answer = exchange(port, b"GET", target, headers if route == b"/ws" else AUTH)
                if answer.status != 101:
                    assert_contract(answer, target)
            twice = route + b"?" + name + b"=1&" + name + b"=2"
            if route == b"/jobs" or name == b"since":
                assert exchange(port, b"GET", twice, AUTH).json()["error"]["code"] in ("bad_parameter",
                                                                                       "upgrade_required")
    assert_clean_log(server.lines)


def test_hostile_values_in_every_path_parameter_answer_json_4xx(server):
    port = int(server.url.rsplit(":", 1)[1])
    for pattern in PATHS:
        for value in [*HOSTILE, b"..%2F..%2Fetc%2Fpasswd", b"%2E%2E/README.md", b"app.js%00.css", b"a/b/c/d"]:
            for method in (b"GET", b"HEAD", b"POST"):
                target = pattern.replace(b"{}", value)
                answer = exchange(port, method, target, JSON_POST if method == b"POST" else AUTH)
                assert_contract(answer, (method, target), head=method == b"HEAD")
    assert_clean_log(server.lines)


def test_hostile_bodies_and_headers_answer_json_4xx(server):
    port = int(server.url.rsplit(":", 1)[1])
    for target in (b"/jobs", b"/jobs/nope/retry"):
        for body in BODIES:
            answer = exchange(port, b"POST", target, JSON_POST, body)
            assert_contract(answer, (target, body[:20]))
            assert answer.status in (400, 404, 413), (target, body[:20], answer)
    for name in READ_HEADERS:
        for value in HEADER_VALUES:
            for method, target in ((b"POST", b"/jobs"), (b"GET", b"/jobs"), (b"GET", b"/ws"),
                                   (b"GET", b"/static/style.css"), (b"GET", b"/")):
                headers = {**JSON_POST, name: value} if name != b"Authorization" else {name: value}
                assert_contract(exchange(port, method, target, headers), (name, value[:20], target))
    assert_clean_log(server.lines)


MALFORMED = [  # requests Tornado's HTTP/1 parser refuses before any handler runs
    b"GET /jobs HTTP/1.1\r\nHost: {host}\r\nIdempotency-Key: k\x00ey\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nX-Note: a\x7fb\r\nContent-Length: 0\r\n\r\n",
    b"GET /jobs HTTP/1.1\r\nHost: {host}\r\nNoColonHere\r\n\r\n",
    b"GET /jobs HTTP/1.1\r\nHost: {host}\r\nBad Name: x\r\n\r\n",
    b"GET /jobs HTTP/1.1 extra\r\nHost: {host}\r\n\r\n",
    b"GET\r\nHost: {host}\r\n\r\n",
    b"GET /jobs HTTP/7.0\r\nHost: {host}\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nContent-Length: abc\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{{}}\r\n0\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{{}}\r\n0\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\n{{}}\r\n0\r\n\r\n",  # a chunk shorter than its size
]


def test_requests_the_http_parser_refuses_itself_answer_json_400(server):
    """Tornado answers these with a bare `400` and no body; ours is the JSON error every
    other refusal is, with the same security headers."""
    port = int(server.url.rsplit(":", 1)[1])
    for raw in MALFORMED:
        host = f"127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}".encode()
        answer = send_raw(port, raw.replace(b"{host}", host).replace(b"{{}}", b"{}"))
        assert answer.status == 400 and answer.is_json, (raw, answer)
        assert answer.json()["error"]["code"] == "malformed_request", (raw, answer)
        assert answer.headers["x-content-type-options"] == "nosniff" and "server" not in answer.headers
    assert server.get("/healthz").status_code == 200
    assert_clean_log(server.lines)


def test_a_request_line_or_headers_past_64_kib_answer_json_431(server):
    """Tornado closes such a connection without a word; a client (a browser with a huge
    cookie) deserves to know why."""
    port = int(server.url.rsplit(":", 1)[1])
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    chunked = b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer " + TOKEN.encode()
    for raw in (
        b"GET /jobs HTTP/1.1\r\n" + host + b"Cookie: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /jobs?" + b"q" * 70_000 + b" HTTP/1.1\r\n" + host + b"\r\n",
        b"GET / HTTP/1.1\r\n" + host + b"".join(b"X-H%d: %s\r\n" % (n, b"v" * 1000) for n in range(80)) + b"\r\n",
        b"POST /jobs HTTP/1.1\r\n" + host + chunked + b"\r\n\r\n" + b"0" * 100 + b"2\r\n{}\r\n0\r\n\r\n",
    ):
        answer = send_raw(port, raw)
        assert answer.status == 431 and answer.json()["error"]["code"] == "request_too_large", (raw[:40], answer)
    assert server.get("/healthz").status_code == 200
    assert_clean_log(server.lines)


def test_an_answer_before_the_body_was_read_says_connection_close_and_the_next_request_works(server_process):
    """Tornado closes the connection after an answer given before the request's body was
    read (a refusal in a streaming handler's prepare); the answer must say so, or a client
    reusing the connection loses its next request."""
    server = server_process("--private", env={"CALO_API_TOKEN": TOKEN})
    port = int(server.url.rsplit(":", 1)[1])
    good = {"Authorization": f"Bearer {TOKEN}"}
    early = [("GET", "/jobs", {}), ("POST", "/jobs", {**good, "Origin": "https://evil.example"}),
             ("GET", "/nowhere", good), ("DELETE", "/jobs", good), ("GET", "/jobs", {**good, "Host": "evil.example"}),
             ("POST", "/jobs", {**good, "Content-Type": "text/plain", "Content-Length": "5"})]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for method, path, headers in early:
            body = "hello" if headers.get("Content-Length") else None
            connection.request(method, path, body=body, headers=headers)
            refused = connection.getresponse()
            refused.read()
            assert refused.status >= 400 and refused.getheader("Connection") == "close", (method, path, refused.status)
            connection.request("GET", "/jobs", headers=good)  # http.client reconnects after "close"
            after = connection.getresponse()
            assert after.status == 200 and json.loads(after.read()) == [], (method, path)
    finally:
        connection.close()


@pytest.mark.parametrize("access_log", [False, True])
def test_one_client_s_errors_cannot_flood_the_log_unless_every_request_is_asked_for(server_process, access_log):
    server = server_process(*(["--access-log"] if access_log else []))
    with requests.Session() as session:
        for number in range(120):
            assert session.get(f"{server.url}/jobs/nope-{number}", timeout=10).status_code == 404
    assert server.terminate() == 0  # every line it wrote is read by then
    logged = [line for line in server.lines if "status=404" in line]
    assert len(logged) == 120 if access_log else 1 <= len(logged) <= 10, len(logged)


def test_canned_answers_carry_the_headers_every_answer_has(server):
    port = int(server.url.rsplit(":", 1)[1])
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    ids = set()
    for raw in (b"GET /jobs HTTP/1.1\r\n" + host + b"X: a\x00b\r\n\r\n",
                b"GET /jobs HTTP/1.1\r\n" + host + b"Cookie: " + b"c" * 70_000 + b"\r\n\r\n"):
        answer = send_raw(port, raw)
        assert answer.status in (400, 431) and answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-security-policy"] and answer.headers["x-frame-options"] == "DENY"
        ids.add(answer.headers["x-request-id"])
    assert len(ids) == 2  # one of its own each


def test_edge_forms_of_valid_values_are_read_as_the_rfcs_say(server):
    port = int(server.url.rsplit(":", 1)[1])
    for scheme in (b"bearer", b"BEARER", b"Bearer"):  # auth schemes are case-insensitive
        answer = exchange(port, b"POST", b"/jobs", {b"Authorization": scheme + b" " + TOKEN.encode()})
        assert answer.status == 201, scheme
    for value in (b"0", b"00000000000000000001", b"0" * 40 + b"5"):  # leading zeros: the same number
        assert exchange(port, b"GET", b"/jobs?limit=" + value, AUTH).status in (200, 400), value
    assert exchange(port, b"GET", b"/jobs?limit=" + b"0" * 30 + b"2", AUTH).status == 200
    assert exchange(port, b"GET", b"/jobs?cursor=" + b"0" * 30 + b"1", AUTH).status == 200
    assert exchange(port, b"GET", b"/jobs?limit=" + b"1" * 65, AUTH).json()["error"]["code"] == "bad_parameter"
    for host in (b"localhost:65536", b"localhost:99999", b"127.0.0.1:00000099999"):
        assert exchange(port, b"GET", b"/jobs", AUTH, host=host).json()["error"]["code"] == "bad_host", host
    assert exchange(port, b"GET", b"/jobs", AUTH, host=b"localhost:65535").status == 200


def test_a_target_in_absolute_form_is_served_and_its_authority_is_the_host(server):
    """RFC 9112 3.2.2: a server must accept `GET http://host/path`; the authority in the
    target replaces the Host header, so the DNS-rebinding check sees it."""
    port = int(server.url.rsplit(":", 1)[1])
    ours = f"http://127.0.0.1:{port}".encode()
    assert exchange(port, b"GET", ours + b"/jobs?limit=5", AUTH).status == 200
    assert exchange(port, b"GET", b"HTTP://LOCALHOST:1/healthz", AUTH).status == 200
    assert exchange(port, b"GET", ours, AUTH).status == 200  # the page, path "/"
    foreign = exchange(port, b"GET", b"http://evil.example/jobs", AUTH)  # Host says 127.0.0.1: the target wins
    assert foreign.status == 421 and foreign.json()["error"]["code"] == "unknown_host"
    for junk in (b"http://[::1/jobs", b"http:///jobs", b"https://user@localhost/jobs"):
        answer = exchange(port, b"GET", junk, AUTH)
        assert 400 <= answer.status < 500 and answer.is_json, (junk, answer)


def test_repeated_headers_that_would_be_joined_are_refused(server):
    port = int(server.url.rsplit(":", 1)[1])
    host = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    twice = send_raw(port, b"POST /jobs HTTP/1.1\r\n" + host + b"Idempotency-Key: k1\r\nIdempotency-Key: k2\r\n"
                     b"Content-Length: 0\r\n\r\n")
    assert twice.status == 400 and twice.json()["error"]["code"] == "bad_idempotency_key"
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    second_key = b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
    keys = send_raw(port, b"GET /ws HTTP/1.1\r\n" + host + upgrade + second_key + b"\r\n")
    assert keys.status == 400 and keys.is_json
    old = send_raw(port, b"GET /ws HTTP/1.0\r\n" + host + upgrade + b"\r\n")  # 101 then a silent close before
    assert old.status == 400 and old.is_json
    assert server.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json() == []


def test_a_declared_body_over_64_kib_is_413_on_every_api_method_and_a_bad_range_is_json(server):
    port = int(server.url.rsplit(":", 1)[1])
    for method in (b"GET", b"POST", b"HEAD", b"DELETE"):
        answer = send_raw(port, method + b" /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 70000\r\n\r\n", head=method == b"HEAD")
        assert answer.status in (405, 413), method
        assert answer.status == 413 or method == b"DELETE", method
    for value in (b"bytes=999999999-", b"bytes=-0", b"bytes=50-10"):
        answer = exchange(port, b"GET", b"/static/app.js", {b"Range": value})
        assert answer.status in (206, 416) and (answer.status == 206 or answer.is_json), (value, answer)
        if answer.status == 416:
            assert answer.json()["error"]["code"] == "range_not_satisfiable"
            assert answer.headers["content-range"].startswith("bytes */")


def test_a_missing_empty_repeated_or_malformed_host_is_400(server_process, tmp_path):
    """RFC 9112 3.2: one Host header naming a host. Tornado alone would read a missing or
    empty one as 127.0.0.1, a loopback name that passes the DNS-rebinding check."""
    checked = server_process()
    anyone = server_process("--allowed-hosts", "*", "--data-dir", str(tmp_path / "second"))
    for server in (checked, anyone):
        port = int(server.url.rsplit(":", 1)[1])
        for head in (b"", b"Host: \r\n", b"Host: localhost\r\nHost: localhost\r\n", b"Host: local host\r\n",
                     b"Host: localhost:abc\r\n", b"Host: localhost:1:2\r\n", b"Host: [::1\r\n",
                     b"Host: user@localhost\r\n", b"Host: localhost/x\r\n", b"Host: localhost:999999\r\n"):
            for target in (b"/jobs", b"/", b"/ws", b"/static/style.css", b"/healthz"):
                answer = send_raw(port, b"GET " + target + b" HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
                assert answer.status == 400 and answer.json()["error"]["code"] in ("bad_host", "malformed_request"), (
                    head, target, answer)
        old = send_raw(port, b"GET /jobs HTTP/1.0\r\n\r\n")  # HTTP/1.0 may leave Host out
        assert old.status == (421 if server is checked else 200), old
    assert checked.get("/jobs").json() == []


def test_a_body_that_names_fields_is_refused_naming_them(server):
    answer = server.post("/jobs", json={"delay": 5, "url": "x"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "unknown_field"
    assert '"delay"' in answer.json()["error"]["message"] and '"url"' in answer.json()["error"]["message"]
    for body in ("", "{}", " {} "):
        made = server.post("/jobs", data=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                        "Content-Type": "application/json; charset=utf-8"})
        assert made.status_code == 201


ROUTES = ["/", "/openapi.json", "/jobs", "/jobs/{id}", "/jobs/{id}/retry", "/ws", "/healthz", "/readyz",
          "/metrics", "/static/style.css", "/nowhere"]


def test_head_answers_every_get_route_like_get_without_a_body(server):
    job_id = server.post("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()["id"]
    # Settled first: a job resolving between the GET and the HEAD changes its length.
    poll(lambda: server.get(f"/jobs/{job_id}").json()["status"] != "pending", timeout=30)
    for route in ROUTES:
        path = route.replace("{id}", job_id)
        got, head = server.get(path), requests.head(server.url + path, timeout=10)
        assert head.status_code == got.status_code, path
        assert head.content == b"" and head.headers["Content-Type"] == got.headers["Content-Type"], path
        if got.status_code == 200 and path not in ("/metrics", "/readyz"):  # those change between calls
            assert head.headers["Content-Length"] == str(len(got.content)), path


def test_every_route_answers_options_and_405_with_the_same_allow(server):
    expected = {"/jobs": "GET, HEAD, POST, OPTIONS", "/jobs/x/retry": "POST, OPTIONS"}  # else GET, HEAD, OPTIONS
    for route in ROUTES:
        path = route.replace("{id}", "x")
        options = requests.options(server.url + path, timeout=10)
        if path == "/nowhere":
            assert options.status_code == 404 and options.json()["error"]["code"] == "not_found"
            continue
        assert options.status_code == 204 and options.content == b"", path
        allow = options.headers["Allow"]
        assert allow == expected.get(path, "GET, HEAD, OPTIONS"), path
        for method in ("PUT", "DELETE", "PATCH", "POST", "TRACE", "FOO"):
            if method in allow:
                continue
            answer = requests.request(method, server.url + path, timeout=10)
            assert answer.status_code == 405, (method, path)
            assert answer.headers["Allow"] == allow and answer.json()["error"]["code"] == "method_not_allowed"


def test_with_a_token_an_unknown_method_is_still_405(server_process):
    server = server_process("--private", env={"CALO_API_TOKEN": TOKEN})
    for path in ("/jobs", "/jobs/x", "/jobs/x/retry", "/ws"):
        answer = requests.delete(server.url + path, timeout=10)
        assert answer.status_code == 405 and "Allow" in answer.headers, path
    assert server.get("/jobs").status_code == 401


SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def test_every_answer_carries_the_security_headers_and_no_server_version(server):
    port = int(server.url.rsplit(":", 1)[1])
    answers = [server.get(route.replace("{id}", "x")) for route in ROUTES]
    answers += [server.post("/jobs"), requests.put(server.url + "/jobs", timeout=10)]
    raw = [exchange(port, b"GET", b"/ws"), exchange(port, b"GET", b"/static/app.js%00.css")]
    for answer in answers:
        for name, value in SECURITY.items():
            assert answer.headers[name] == value, (answer.url, name)
        assert "Server" not in answer.headers, answer.url
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"], answer.url
    for answer in raw:
        assert answer.headers["x-content-type-options"] == "nosniff" and "server" not in answer.headers
    assert all(a.headers["Cache-Control"] == "no-store" for a in answers if a.url.rsplit("/", 1)[-1] in ("jobs", "x"))


def test_the_page_has_a_strict_content_security_policy(server):
    page = server.get("/")
    policy = dict(part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["style-src"] == "'self'" and policy["object-src"] == "'none'"
    script = policy["script-src"].split()
    assert script[0] == "'self'" and all(s.startswith("'sha256-") for s in script[1:])
    assert "'unsafe-inline'" not in page.headers["Content-Security-Policy"]


FOREIGN = [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"},
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site"},
]
NOT_JSON = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain",
            "text/plain;charset=UTF-8", "application/jsonp", "", "application/xml"]


def test_a_post_from_a_foreign_origin_or_not_json_is_refused(server_process):
    server = server_process()  # no token: the default, where a form on any page could post
    for headers in FOREIGN:
        for path in ("/jobs", "/jobs/x/retry"):
            answer = server.post(path, headers=headers)
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "cross_origin_refused", path
    for content_type in NOT_JSON:  # what an HTML form sends (a CORS "simple request")
        answer = server.post("/jobs", data=b"{}", headers={"Content-Type": content_type})
        assert answer.status_code == 415 and answer.json()["error"]["code"] == "unsupported_media_type"
        chunked = server.post("/jobs", data=iter([b"{", b"}"]), headers={"Content-Type": content_type})
        assert chunked.status_code == 415, content_type
    assert server.get("/jobs").json() == []


def test_posts_from_our_own_page_or_an_allowed_origin_or_no_browser_are_accepted(server_process):
    server = server_process("--allowed-origins", "https://app.example")
    own = server.url  # e.g. http://127.0.0.1:PORT
    for headers in ({}, {"Origin": own}, {"Origin": own, "Sec-Fetch-Site": "same-origin"},
                    {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "none"}):
        assert server.post("/jobs", headers=headers).status_code == 201, headers


def test_a_foreign_host_name_is_421_when_bound_to_loopback(server_process):
    server = server_process()
    port = int(server.url.rsplit(":", 1)[1])
    for host in (b"evil.example", b"evil.example:8888", b"127.0.0.1.nip.io", b"localhost.evil", b"[::2]",
                 b"0.0.0.0", b"127.0.0.2"):
        for method, target in ((b"GET", b"/jobs"), (b"POST", b"/jobs"), (b"GET", b"/"), (b"GET", b"/ws"),
                               (b"GET", b"/static/style.css"), (b"GET", b"/nowhere"), (b"GET", b"/healthz")):
            answer = exchange(port, method, target, host=host)
            assert answer.status == 421 and answer.json()["error"]["code"] == "unknown_host", (target, host)
    assert server.get("/jobs").json() == []


def test_the_loopback_names_and_a_configured_name_are_answered(server_process, tmp_path):
    server = server_process("--allowed-hosts", "jobs.example")
    port = int(server.url.rsplit(":", 1)[1])
    assert exchange(port, b"GET", b"/jobs", host=b"Jobs.Example:443").status == 200
    assert exchange(port, b"GET", b"/jobs", host=b"127.0.0.1").status == 421
    assert answered_hosts("127.0.0.1", ()) == frozenset({"localhost", "127.0.0.1", "[::1]"})
    assert answered_hosts("::1", ()) == answered_hosts("localhost", ()) == answered_hosts("127.0.0.1", ())
    assert answered_hosts("0.0.0.0", ()) is None and answered_hosts("10.1.2.3", ()) is None
    assert answered_hosts("0.0.0.0", ("*",)) is None
    assert answered_hosts("127.0.0.1", ("a.example",)) == frozenset({"a.example"})
    default = server_process("--data-dir", str(tmp_path / "second"))
    port = int(default.url.rsplit(":", 1)[1])
    for host in (b"localhost", b"localhost:1234", b"127.0.0.1:99", b"[::1]:8888", b"LOCALHOST"):
        assert exchange(port, b"GET", b"/jobs", host=host).status == 200, host


def test_readyz_shows_counts_never_a_job_id(server_process):
    server = server_process("--private", env={"CALO_API_TOKEN": TOKEN})
    made = server.post("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    ready = server.get("/readyz")
    assert ready.status_code == 200 and made["id"] not in ready.text
    assert json.loads(ready.text)["checks"]["recovery"]["ok"] is True


def test_link_headers_come_from_the_public_url_or_a_vetted_host_never_an_unvetted_one(server_process, tmp_path):
    published = server_process("--public-url", "https://jobs.example/calo")
    for _ in range(2):
        published.post("/jobs")
    link = published.get("/jobs?limit=1", headers={"Host": "localhost"}).headers["Link"]
    assert link.startswith("<https://jobs.example/calo/jobs?limit=1&cursor=") and link.endswith('>; rel="next"')
    anyone = server_process("--allowed-hosts", "*", "--data-dir", str(tmp_path / "second"))
    for _ in range(2):
        anyone.post("/jobs")
    port = int(anyone.url.rsplit(":", 1)[1])
    answer = exchange(port, b"GET", b"/jobs?limit=1", host=b"evil.example")
    assert answer.status == 200 and answer.headers["link"].startswith("</jobs?limit=1&cursor=")
    follow = anyone.get(answer.headers["link"][1:].split(">")[0])
    assert follow.status_code == 200 and len(follow.json()) == 1 and "Link" not in follow.headers
