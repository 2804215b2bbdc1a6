"""Who may call what: the optional API token, `--private`, and the allowed origins.

Owns the access rules, in one place, for the REST handlers and the WebSocket:
- With `CALO_API_TOKEN` set, requests that change something (POST) must carry
  `Authorization: Bearer <token>`; with `--private`, every request must (the WebSocket,
  which a browser cannot give headers, may pass it as `?access_token=`). Tokens are
  compared in constant time.
- Origins in `--allowed-origins` may open the WebSocket (besides the page's own origin,
  which Tornado's default check allows) and get CORS headers on the REST API. With no
  list there is no CORS at all.

Threads: plain immutable data, safe anywhere.
Must never: log, echo or compare the token in a way that leaks it (no `==` on secrets).
"""

from __future__ import annotations

import dataclasses
import hmac

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key"
CORS_EXPOSED = "Link, Location, Retry-After, X-Request-Id"
CORS_MAX_AGE = "600"


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    token: str | None = dataclasses.field(default=None, repr=False)
    private: bool = False
    allowed_origins: tuple[str, ...] = ()

    def needs_token(self, method: str) -> bool:
        if self.token is None or method == "OPTIONS":
            return False
        return self.private or method not in ("GET", "HEAD")

    def token_ok(self, authorization: str | None, query_token: str | None = None) -> bool:
        """Is the bearer token (header, or for the WebSocket the query) the right one?"""
        given = query_token
        if authorization and authorization.startswith("Bearer "):
            given = authorization[len("Bearer "):]
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
