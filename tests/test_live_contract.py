"""The WebSocket's contract with clients that are not ours: the `websockets` package (not
Tornado's client) and raw sockets, against Calo Jobs in-process over loopback.

Covers: the token as a subprotocol (`calo.v1, calo.bearer.<base64url>`), JSON refusals of
the upgrade, the application-level ping, messages the server does not take, the message
size limit, and that none of it puts a traceback or a token in the log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from calo.live import MAX_CLIENT_MESSAGE_BYTES

TOKEN = "s3cret+/~._-T0KEN=="  # characters that base64 (not base64url) and URLs would mangle
PRIVATE = pytest.mark.calo_flags("--private")
WITH_TOKEN = pytest.mark.calo_env(CALO_API_TOKEN=TOKEN)


def bearer(token: str) -> str:
    return "calo.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/ws{query}"


async def open_socket(port, query="", **kwargs):
    return await ws_connect(url(port, query), proxy=None, open_timeout=10, **kwargs)


async def refusal(port, query="", **kwargs):
    """The HTTP answer to an upgrade the server refuses: (status, JSON body, headers)."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await open_socket(port, query, **kwargs)
    response = refused.value.response
    assert response.headers["Content-Type"].startswith("application/json")
    return response.status_code, json.loads(response.body), response.headers


async def receive(ws, timeout=10.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def assert_quiet(caplog):
    """No warning or error, no traceback and no token in anything logged."""
    for record in caplog.records:
        text = record.getMessage() + str(getattr(record, "fields", ""))
        assert record.levelno < logging.WARNING or record.name == "calo.access", text
        assert record.exc_info is None, text
        assert TOKEN not in text and bearer(TOKEN) not in text and "access_token" not in text


@pytest.mark.gen_test
@WITH_TOKEN
@PRIVATE
async def test_the_token_as_a_subprotocol_opens_the_socket_and_calo_v1_is_selected(
    http_server, http_port, caplog
):
    ws = await open_socket(http_port, subprotocols=["calo.v1", bearer(TOKEN)])
    assert ws.subprotocol == "calo.v1"
    assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == ["calo.v1"]  # never the bearer entry
    assert await receive(ws) == {"type": "hello", "seq": 0}
    await ws.close()
    # The same in the other order, and with the header form and the discouraged query.
    ws = await open_socket(http_port, subprotocols=[bearer(TOKEN), "calo.v1"])
    assert ws.subprotocol == "calo.v1" and (await receive(ws))["type"] == "hello"
    await ws.close()
    ws = await open_socket(http_port, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    assert ws.subprotocol is None and (await receive(ws))["type"] == "hello"
    await ws.close()
    query = "?" + __import__("urllib.parse").parse.urlencode({"access_token": TOKEN})
    ws = await open_socket(http_port, query)
    assert (await receive(ws))["type"] == "hello"
    await ws.close()
    assert_quiet(caplog)


@pytest.mark.gen_test
@WITH_TOKEN
@PRIVATE
@pytest.mark.parametrize("offered", [
    None, ["calo.v1"], ["calo.v1", bearer("wrong")], ["calo.v1", "calo.bearer."],
    ["calo.v1", "calo.bearer.!!!"], ["calo.v1", "calo.bearer.__8"],  # not base64url; not UTF-8
    ["calo.v1", bearer(TOKEN + "x")], ["calo.v1", bearer(TOKEN)[:-1]],
])
async def test_a_missing_or_wrong_token_is_a_json_401(http_server, http_port, caplog, offered):
    status, body, headers = await refusal(http_port, subprotocols=offered)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert_quiet(caplog)


@pytest.mark.gen_test
@WITH_TOKEN
async def test_without_private_the_socket_needs_no_token(http_server, http_port):
    ws = await open_socket(http_port, subprotocols=["calo.v1"])
    assert ws.subprotocol == "calo.v1" and (await receive(ws))["type"] == "hello"
    await ws.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("since", ["abc", "%C2%B9", "%D9%A1", "%EF%BC%95", "-1", "+1", "%2B1", "%201", "1%20",
                                   "", "99999999999999999999", "9223372036854775808", "1.0", "%00",
                                   "1&since=2"])
async def test_a_bad_since_is_a_json_400(http_server, http_port, caplog, since):
    status, body, _ = await refusal(http_port, f"?since={since}")
    assert status == 400 and body["error"]["code"] == "bad_parameter"
    assert_quiet(caplog)


@pytest.mark.gen_test
async def test_since_takes_the_largest_64_bit_number(http_server, http_port):
    ws = await open_socket(http_port, "?since=9223372036854775807")
    assert [(await receive(ws))["type"], (await receive(ws))["type"]] == ["hello", "reset"]
    await ws.close()


@pytest.mark.gen_test
async def test_a_foreign_origin_is_a_json_403(http_server, http_port, caplog):
    status, body, _ = await refusal(http_port, origin="https://evil.example")
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    assert_quiet(caplog)


@pytest.mark.gen_test
async def test_the_page_s_own_origin_is_accepted(http_server, http_port):
    ws = await open_socket(http_port, origin=f"http://127.0.0.1:{http_port}")
    assert (await receive(ws))["type"] == "hello"
    await ws.close()


def http_exchange(port: int, request: str) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            body += sock.recv(65536)
        return int(lines[0].split()[1]), headers, body


@pytest.mark.gen_test
@pytest.mark.parametrize("headers, status", [
    ("", 426),  # a plain GET
    ("Upgrade: websocket\r\nConnection: keep-alive\r\n", 426),
    ("Upgrade: h2c\r\nConnection: Upgrade\r\n", 426),
    ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: a2V5\r\n", 426),
    ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", 400),  # no key
])
async def test_requests_that_are_not_a_websocket_upgrade_get_json(http_server, http_port, caplog, headers, status):
    request = f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{http_port}\r\n{headers}\r\n"
    got, answer_headers, body = await asyncio.get_running_loop().run_in_executor(
        None, http_exchange, http_port, request)
    assert got == status and answer_headers["content-type"].startswith("application/json")
    assert set(json.loads(body)["error"]) == {"code", "message"}
    assert_quiet(caplog)


@pytest.mark.gen_test
async def test_a_ping_is_answered_with_a_pong_and_other_messages_are_ignored(http_server, http_port, caplog):
    ws = await open_socket(http_port)
    await receive(ws)
    await ws.send('{"type":"ping"}')
    assert await receive(ws) == {"type": "pong"}
    await ws.send(json.dumps({"type": "ping", "id": 7, "at": [1, {"x": None}]}))
    assert await receive(ws) == {"type": "pong"}
    ignored = ["ping", "", "{", "null", "[]", '{"type":5}', '{"type":"subscribe"}', "\x00", "é" * 100,
               "[" * 2000, '{"a":' * 600 + "1" + "}" * 600, '{"type":"ping","type":"nope"}']
    for text in ignored:
        await ws.send(text)
    await ws.send('{"type":"ping"}')
    assert await receive(ws) == {"type": "pong"}  # the first answer after all of those
    await ws.close()
    assert_quiet(caplog)


@pytest.mark.gen_test
async def test_a_binary_message_closes_with_1003(http_server, http_port, caplog):
    ws = await open_socket(http_port)
    await receive(ws)
    await ws.send(b"\x00\x01")
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1003
    assert_quiet(caplog)


@pytest.mark.gen_test
async def test_a_message_over_the_limit_closes_with_1009(http_server, http_port, caplog):
    ws = await open_socket(http_port)
    await receive(ws)
    await ws.send('{"type":"ping","pad":"' + "x" * MAX_CLIENT_MESSAGE_BYTES + '"}')
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1009
    assert_quiet(caplog)


def announce_huge_frame(port: int) -> bytes:
    """Handshake, then only the header of a masked text frame announcing 9 MiB: the
    server must close with 1009 without waiting for (or buffering) the payload."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101")
    sock.sendall(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 9 << 20))
    received = data.partition(b"\r\n\r\n")[2]
    while True:  # the hello, then the close frame; the server closes the socket
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    sock.close()
    return received


@pytest.mark.gen_test
async def test_a_frame_announcing_9_mib_is_refused_from_its_header(http_server, http_port, caplog):
    received = await asyncio.get_running_loop().run_in_executor(None, announce_huge_frame, http_port)
    close_at = received.index(b"\x88")
    assert struct.unpack("!H", received[close_at + 2:close_at + 4])[0] == 1009
    assert_quiet(caplog)


@pytest.mark.gen_test(timeout=60)
@WITH_TOKEN
@PRIVATE
async def test_clients_that_send_heartbeats_and_reconnect_leave_the_log_quiet(http_server, http_port, caplog):
    for _ in range(60):
        ws = await open_socket(http_port, "?since=0", subprotocols=["calo.v1", bearer(TOKEN)])
        await receive(ws)
        await ws.send("ping")
        await ws.send('{"type":"ping"}')
        assert await receive(ws) == {"type": "pong"}
        await ws.close()
    assert_quiet(caplog)
