"""Realistic job documents for the benchmarks, made with Calo's own code.

Owns what a benchmark job looks like: a photo as the fake Unsplash API builds it
(`tests.fake_unsplash.build_photo`), turned into the job's `image` by the server's own
`calo.unsplash.image_from_photo`, on a `calo.jobs.Job` serialized by `Job.to_json()`. So
the generated database and the baseline server's bodies have exactly the size and shape
of what the server itself stores and sends (about 700 bytes for a resolved job).

Must never: do I/O. Pure functions of their arguments and the `random.Random` given.
"""

from __future__ import annotations

import random
from typing import Any

from calo.jobs import Job
from calo.unsplash import image_from_photo
from tests.fake_unsplash import build_photo

IMAGE_BASE_URL = "https://images.unsplash.com"
DELAYS = [5.0 * step for step in range(1, 61)]  # the server's default delays: 5 s to 5 min


def image_pool(size: int, seed: int = 0) -> list[dict[str, Any]]:
    """`size` distinct `image` objects to draw from (building one per job would be slow)."""
    random.seed(seed)  # build_photo draws from the module-level generator
    return [image_from_photo(build_photo(IMAGE_BASE_URL)) for _ in range(size)]


def resolved_job(created_at: int, images: list[dict[str, Any]], rng: random.Random) -> Job:
    """A job created at `created_at` that resolved 5-60 ms after its due time."""
    job = Job.new(rng.choice(DELAYS), created_at)
    job.resolve(rng.choice(images), job.due_at + rng.randint(5, 60))
    return job


def pending_job(created_at: int, due_at: int) -> Job:
    """A pending job due at `due_at` (ms since the epoch), as `POST /jobs` makes it."""
    job = Job.new((due_at - created_at) / 1000, created_at)
    job.due_at = due_at  # exact, whatever the rounding of the delay
    return job
