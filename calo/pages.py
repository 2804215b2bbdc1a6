"""The browser page: `/` serves `templates/index.html`, which loads `static/app.js`.

Owns only the HTML entry point; the page itself (list, detail view, live updates,
offline queue) is plain JavaScript modules in `static/`, with no build step.
Must never: embed job data in the HTML (the page reads it from the API, as text).
"""

from __future__ import annotations

import tornado.web


def duration_text(seconds: float) -> str:
    """5 -> '5 s', 300 -> '5 min', 90 -> '1.5 min', 95 -> '1 min 35 s' (never '1.58333 min')."""
    minutes = seconds / 60
    if seconds >= 60 and (minutes * 2).is_integer():
        return f"{minutes:g}\u00a0min"
    if seconds >= 60:
        return f"{int(seconds // 60)}\u00a0min {seconds % 60:.3g}\u00a0s"
    return f"{seconds:g}\u00a0s"


class IndexHandler(tornado.web.RequestHandler):
    def initialize(self, delays: tuple[float, float]) -> None:
        low, high = delays
        self.delay_range = duration_text(low) if low == high else f"{duration_text(low)} to {duration_text(high)}"

    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.render("index.html", delay_range=self.delay_range)
