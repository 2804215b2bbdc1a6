"""The baseline: bare Tornado handlers that answer like Calo Jobs without doing any work.

Owns the yardstick every speed figure is divided by. Same Tornado, same Python, same
machine, same load generator, measured in the same run; no database, no threads, no
validation. Bodies are built once at start-up with Calo's own `Job.to_json()`:

- GET /jobs/{anything} -> 200 and one resolved job's document (about 700 bytes);
- GET /jobs -> 200 and a JSON array of `--page-size` such documents (what
  `GET /jobs?limit=100` returns from a full database);
- POST /jobs -> 201, `Location`, and a new pending job's document.

Prints `baseline listening on http://127.0.0.1:PORT` once listening.

    python -m bench.baseline_server --port 0 --page-size 100

Must never: touch a database or a file after start-up, or do anything per request that
a bare handler would not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tornado.web  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.netutil import bind_sockets  # noqa: E402

from bench.jobdocs import image_pool, pending_job, resolved_job  # noqa: E402
from calo.clock import now_ms  # noqa: E402

JSON_TYPE = "application/json; charset=utf-8"


class Bodies:
    """The prebuilt answers."""

    def __init__(self, page_size: int):
        rng, images, now = random.Random(0), image_pool(page_size), now_ms()
        docs = [resolved_job(now - 3_600_000 + i, images, rng).to_json() for i in range(page_size)]
        self.job = docs[0]
        self.page = "[" + ",".join(docs) + "]"
        created = pending_job(now, now + 300_000)
        self.created, self.created_id = created.to_json(), created.id


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, bodies: Bodies) -> None:
        self.bodies = bodies

    def answer(self, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(body)


class JobsHandler(BaseHandler):
    def get(self) -> None:
        self.answer(self.bodies.page)

    def post(self) -> None:
        self.set_header("Location", f"/jobs/{self.bodies.created_id}")
        self.answer(self.bodies.created, 201)


class JobHandler(BaseHandler):
    def get(self, job_id: str) -> None:
        self.answer(self.bodies.job)


async def serve(port: int, page_size: int) -> None:
    bodies = {"bodies": Bodies(page_size)}
    app = tornado.web.Application([(r"/jobs", JobsHandler, bodies), (r"/jobs/([^/]+)", JobHandler, bodies)])
    server = HTTPServer(app)
    sockets = bind_sockets(port, "127.0.0.1")
    server.add_sockets(sockets)
    print(f"baseline listening on http://127.0.0.1:{sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bare Tornado handlers answering job-sized JSON.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--page-size", type=int, default=100, help="jobs in the GET /jobs answer")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.page_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
