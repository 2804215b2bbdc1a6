"""The browser page: `/` serves `templates/index.html`, which loads `static/app.js`.

Owns the HTML entry point and how `static/` is served (errors as JSON, like every route);
the page itself (list, detail view, live updates, offline queue) is plain JavaScript
modules in `static/`, with no build step.

Threads: IOLoop thread only, like every Tornado handler.
Must never: embed job data in the HTML (the page reads it from the API, as text).
"""

from __future__ import annotations

import base64
import hashlib
import re

import tornado.web

from calo.errors import ApiError, JsonErrors

INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)
# Scripts, styles, fonts and fetches from this server only (connect-src 'self' covers its
# own ws:// and wss://); photos from any http(s) origin (a job's image URL is any absolute
# http(s) URL Unsplash gave), blurhash placeholders as data: URLs; never framed, no
# plugins, no <base>, forms post here only.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'{inline}; style-src 'self'; img-src 'self' https: http: data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def page_policy(html: bytes) -> str:
    """The page's Content-Security-Policy: PAGE_POLICY with a hash for each inline
    script (the import map, whose content-hashed URLs change with each deploy)."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
        for body in INLINE_SCRIPT.findall(html)
    )
    return PAGE_POLICY.format(inline=hashes)


def duration_text(seconds: float) -> str:
    """5 -> '5 s', 300 -> '5 min', 90 -> '1.5 min', 95 -> '1 min 35 s' (never '1.58333 min')."""
    minutes = seconds / 60
    if seconds >= 60 and (minutes * 2).is_integer():
        return f"{minutes:g}\u00a0min"
    if seconds >= 60:
        return f"{int(seconds // 60)}\u00a0min {seconds % 60:.3g}\u00a0s"
    return f"{seconds:g}\u00a0s"


class IndexHandler(JsonErrors, tornado.web.RequestHandler):
    def initialize(self, delays: tuple[float, float]) -> None:
        low, high = delays
        self.delay_range = duration_text(low) if low == high else f"{duration_text(low)} to {duration_text(high)}"

    def get(self) -> None:
        html = self.render_string("index.html", delay_range=self.delay_range)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", page_policy(html))
        self.finish(html)


class StaticFiles(JsonErrors, tornado.web.StaticFileHandler):
    """`/static/...`: Tornado's static files (ETags, ranges, `?v=` caching), errors as JSON."""

    head = tornado.web.StaticFileHandler.head  # its own: no body read at all

    async def get(self, path: str, include_body: bool = True) -> None:
        await super().get(path, include_body)
        if self.get_status() == 416 and not self._finished:  # Tornado's is an empty text/plain answer
            raise ApiError(416, "range_not_satisfiable", "the Range asked for lies outside the file (its "
                           "size is in Content-Range)", {"Content-Range": self._headers.get("Content-Range", "")})

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if "\x00" in absolute_path:  # os.stat refuses it with ValueError: a 500 otherwise
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)
