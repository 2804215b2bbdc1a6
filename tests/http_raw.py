"""HTTP/1.1 over a plain socket, for requests no HTTP library would send: raw bytes in the
request line, duplicate headers, invalid UTF-8, a body that is not what its headers say.

Owns only the client side of one exchange. Must never: reach beyond loopback.
"""

from __future__ import annotations

import dataclasses
import json
import socket


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def is_json(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/json")


def exchange(port: int, method: bytes, target: bytes, headers: dict[bytes, bytes] | None = None,
             body: bytes = b"", host: bytes | None = None, timeout: float = 10.0) -> Answer:
    """Send one request on a new connection (closed after it) and read the whole answer."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + (host or f"127.0.0.1:{port}".encode()),
             b"Connection: close"]
    lines += [name + b": " + value for name, value in (headers or {}).items()]
    if body or method == b"POST":
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return send_raw(port, b"\r\n".join(lines) + b"\r\n\r\n" + body, head=method == b"HEAD", timeout=timeout)


def send_raw(port: int, request: bytes, head: bool = False, timeout: float = 10.0) -> Answer:
    """Send `request` exactly as given on a new connection and read one whole answer
    (`head`: it answers a HEAD, so it has no body whatever its Content-Length says)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        length = 0 if head or status in (101, 204, 304) else int(parsed.get("content-length", 0))
        while len(rest) < length and (chunk := sock.recv(65536)):  # not till close: keep-alive may win
            rest += chunk
    return Answer(status, parsed, rest)
