"""The browser page: `/` serves `templates/index.html`, which loads `static/app.js`.

Owns only the HTML entry point; the page itself (list, detail view, live updates,
offline queue) is plain JavaScript modules in `static/`, with no build step.
Must never: embed job data in the HTML (the page reads it from the API, as text).
"""

from __future__ import annotations

import tornado.web


class IndexHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.render("index.html")
