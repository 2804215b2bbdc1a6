"""WebSocket clients for the fan-out benchmark: hundreds in one process, cheap per message.

Owns one client process of scenario 6. It opens `--clients` connections to `/ws` (at most
`CONNECT_AT_ONCE` handshakes at a time), waits for each one's `hello`, prints
`connected N`, then reads every frame until `--until` (a Unix time). For each
`job.resolved` event it records the delivery latency: the time the frame was received
minus the job's `resolved_at` (the clocks are the same: loopback, one machine).

The client is a small asyncio Protocol rather than a full WebSocket library so that the
load generator is not the bottleneck: frames are cut from the byte stream and events
are found by byte search, with no JSON decoding per client (server frames are never
masked, and Calo sends the event type before the job document, see calo/live.py).
Pings are answered. With `--stalled` one more client connects, reads its hello, and
then stops reading (a small receive buffer, reading paused): the client that fell asleep.

At the end: latencies (ms, float64) are written to `--out`, and one JSON line is printed:
{"clients", "connected", "events_min", "events_max", "closed"}.

    python -m bench.ws_clients --url ws://127.0.0.1:PORT/ws --clients 250 --until T --out F

Must never: connect anywhere but the URL given (loopback), or run past `--until` + 30 s.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import calendar
import json
import os
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

CONNECT_AT_ONCE = 50  # concurrent handshakes: stay under the server's listen backlog
HELLO_TIMEOUT = 30.0
RESOLVED = b'"type":"job.resolved"'
RESOLVED_AT = b'"resolved_at":"'
STALLED_RCVBUF = 4096
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class Recorder:
    """Latencies of every client of this process, and a cache of parsed timestamps
    (every client sees the same events, so each timestamp is parsed once)."""

    def __init__(self) -> None:
        self.latencies = array.array("d")
        self._epoch_ms: dict[bytes, float] = {}

    def resolved_ms(self, iso: bytes) -> float:
        cached = self._epoch_ms.get(iso)
        if cached is None:
            text = iso.decode("ascii")  # 2026-11-22T17:05:16.214Z
            seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
            cached = self._epoch_ms[iso] = seconds * 1000 + int(text[20:23])
        return cached

    def message(self, payload: bytes, received_ms: float) -> int:
        """Record the job.resolved events of one text message; returns how many."""
        count, start = 0, 0
        while (found := payload.find(RESOLVED, start)) >= 0:
            at = payload.find(RESOLVED_AT, found)
            if at < 0:
                break
            begin = at + len(RESOLVED_AT)
            self.latencies.append(received_ms - self.resolved_ms(payload[begin:begin + 24]))
            count, start = count + 1, begin
        return count


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads under 126 bytes: pongs and closes only)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


class Client(asyncio.Protocol):
    def __init__(self, host: str, path: str, recorder: Recorder, stalled: bool = False):
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._recorder, self.stalled = recorder, stalled
        self._buffer = bytearray()
        self._upgraded = False
        self.hello: asyncio.Future = asyncio.get_running_loop().create_future()
        self.events = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("closed before hello"))

    def data_received(self, data: bytes) -> None:
        received_ms = time.time() * 1000
        self._buffer += data
        if not self._upgraded and not self._upgrade():
            return
        self._frames(received_ms)

    def _upgrade(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        if not self._buffer.startswith(b"HTTP/1.1 101"):
            self.transport.close()
            return False
        del self._buffer[:end + 4]
        self._upgraded = True
        return True

    def _frames(self, received_ms: float) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            length, offset = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = struct.unpack_from(">H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = struct.unpack_from(">Q", buffer, 2)[0], 10
            if len(buffer) < offset + length:
                return
            opcode, payload = buffer[0] & 0x0F, bytes(buffer[offset:offset + length])
            del buffer[:offset + length]
            self._on_frame(opcode, payload, received_ms)

    def _on_frame(self, opcode: int, payload: bytes, received_ms: float) -> None:
        if opcode == OP_TEXT:
            if not self.hello.done():
                self.hello.set_result(None)
                if self.stalled:
                    self.transport.pause_reading()  # and never resume: the sleeping client
                return
            self.events += self._recorder.message(payload, received_ms)
        elif opcode == OP_PING:
            self.transport.write(_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.transport.close()


async def _connect(url: str, recorder: Recorder, gate: asyncio.Semaphore, stalled: bool = False) -> Client | None:
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    async with gate:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port)), HELLO_TIMEOUT)
            _, client = await loop.create_connection(
                lambda: Client(parts.netloc, parts.path or "/", recorder, stalled), sock=sock)
            await asyncio.wait_for(client.hello, HELLO_TIMEOUT)
        except (TimeoutError, OSError):  # TimeoutError: asyncio.wait_for
            sock.close()
            return None
    return client


async def run(url: str, count: int, until: float, out: str, stalled: bool) -> dict[str, int]:
    recorder, gate = Recorder(), asyncio.Semaphore(CONNECT_AT_ONCE)
    tasks = [_connect(url, recorder, gate) for _ in range(count)]
    if stalled:
        tasks.append(_connect(url, recorder, gate, stalled=True))
    clients = [client for client in await asyncio.gather(*tasks) if client is not None]
    print(f"connected {len(clients)}", flush=True)
    await asyncio.sleep(min(max(0.0, until - time.time()), 600))
    readers = [client for client in clients if not client.stalled]
    events = [client.events for client in readers] or [0]
    summary = {
        "clients": count, "connected": len(readers), "events_min": min(events),
        "events_max": max(events), "closed": sum(client.closed for client in readers),
    }
    for client in clients:
        client.transport.abort()
    with open(out, "wb") as file:
        recorder.latencies.tofile(file)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Many cheap WebSocket clients that time job.resolved events.")
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--until", type=float, required=True, help="Unix time to stop reading at")
    parser.add_argument("--out", required=True, help="file for the latencies (float64, ms)")
    parser.add_argument("--stalled", action="store_true", help="add one client that stops reading")
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args.url, args.clients, args.until, args.out, args.stalled))
    print("CLIENTS_JSON " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
