"""Who may call what: the optional API token, `--private`, and the allowed origins.

Owns the access rules, in one place, for the REST handlers and the WebSocket:
- With `CALO_API_TOKEN` set, requests that change something (POST) must carry
  `Authorization: Bearer <token>`; with `--private`, every request must. A browser cannot
  give a WebSocket headers, so `/ws` also takes the token as a subprotocol it offers,
  `Sec-WebSocket-Protocol: calo.v1, calo.bearer.<token as base64url, no padding>`
  (`bearer_from_subprotocols`), and, discouraged because URLs end up in logs and
  histories, as `?access_token=`. Tokens are compared in constant time.
- The host names the server answers to (`--allowed-hosts`; by default the loopback names
  when it listens on a loopback address): a page on another name that resolves to us (DNS
  rebinding) gets 421, so its requests count as foreign whatever its Origin says.
- Origins in `--allowed-origins` may open the WebSocket (besides the page's own origin,
  which Tornado's default check allows) and get CORS headers on the REST API. With no
  list there is no CORS at all.

Threads: plain immutable data, safe anywhere.
Must never: log, echo or compare the token in a way that leaks it (no `==` on secrets).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import ipaddress
import re

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key"
CORS_EXPOSED = "Link, Location, Retry-After, X-Request-Id"
CORS_MAX_AGE = "600"
SUBPROTOCOL = "calo.v1"  # the one the server selects; never the bearer entry
BEARER_SUBPROTOCOL = "calo.bearer."
BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def answered_hosts(bind_host: str, allowed_hosts: tuple[str, ...]) -> frozenset[str] | None:
    """The Host names (lower case, no port) to answer; None: any. From --allowed-hosts,
    else the loopback names when bound to loopback, else any."""
    if allowed_hosts:
        return None if "*" in allowed_hosts else frozenset(allowed_hosts)
    try:
        loopback = ipaddress.ip_address(bind_host.strip("[]")).is_loopback
    except ValueError:
        loopback = bind_host.lower() == "localhost"
    return LOOPBACK_NAMES if loopback else None


def bearer_from_subprotocols(offered: list[str]) -> str | None:
    """The token a WebSocket client offered as `calo.bearer.<base64url>`; None when it
    offered none, "" when the entry is not base64url of UTF-8 text (a wrong token)."""
    entry = next((p for p in offered if p.startswith(BEARER_SUBPROTOCOL)), None)
    if entry is None:
        return None
    encoded = entry[len(BEARER_SUBPROTOCOL):]
    if not BASE64URL.fullmatch(encoded):
        return ""
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    token: str | None = dataclasses.field(default=None, repr=False)
    private: bool = False
    allowed_origins: tuple[str, ...] = ()

    def needs_token(self, method: str) -> bool:
        if self.token is None or method == "OPTIONS":
            return False
        return self.private or method not in ("GET", "HEAD")

    def token_ok(self, authorization: str | None, other: str | None = None) -> bool:
        """Is the bearer token the right one? From the Authorization header, else (for the
        WebSocket) `other`: the subprotocol's or the query's token."""
        given = other
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() == "bearer":  # auth schemes are case-insensitive (RFC 9110 11.1)
            given = credentials.lstrip(" ")
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is not None and origin.rstrip("/") in self.allowed_origins

    def cors_headers(self, origin: str | None, preflight: bool) -> dict[str, str]:
        """The CORS headers for a request from `origin` (none if it is not allowed)."""
        if origin is None or not self.origin_allowed(origin):
            return {}
        headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": CORS_EXPOSED}
        if preflight:
            headers.update({
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
            })
        return headers
