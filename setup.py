"""Calo Jobs: delayed jobs that fetch a food photo, with a live dashboard."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# `pip install .[postgres]`: the PostgreSQL backend (--database-url postgresql://...).
# psycopg 3 speaks asyncio natively (reads and writes on the IOLoop, LISTEN for new
# events); the binary wheel bundles libpq, so no compiler or libpq-dev is needed.
POSTGRES = ["psycopg[binary]>=3.1,<4", "psycopg-pool>=3.2,<4"]


def web_files(top):
    """(install dir, files) pairs so `pip install .` carries static/ and templates/."""
    pairs = []
    for folder, _, files in os.walk(os.path.join(HERE, top)):
        relative = os.path.relpath(folder, HERE)
        pairs.append((os.path.join("share", "calo", relative), [os.path.join(relative, f) for f in sorted(files)]))
    return pairs


def readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as file:
        return file.read()


setup(
    name="calo-jobs",
    version="0.1.0",
    description="Delayed jobs that fetch a food photo from Unsplash, with a live dashboard",
    long_description=readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["calo", "calo.*"]),
    data_files=web_files("static") + web_files("templates"),
    install_requires=["tornado>=6.4,<7", "requests>=2.31,<3", "prometheus_client>=0.17,<1"],
    extras_require={
        "test": [
            "pytest>=8,<10",  # pytest-tornado (2020) works with pytest 9; keep it below 10
            "pytest-tornado>=0.8.1",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5,<4",  # the suite runs on 4 workers: most of its time is spent waiting
            "schemathesis>=4.0,<5",  # property-based requests from the OpenAPI document
            "hypothesis>=6.100",
            "jsonschema>=4.18",
            "websockets>=13,<18",  # a WebSocket client that is not Tornado's, for the /ws contract
            "playwright>=1.41,<2",  # drives Debian's chromium; never `playwright install`
            *POSTGRES,  # the PostgreSQL tests run in CI too
            # Linters, run by scripts/lint.sh before the tests. Pinned to a minor release:
            # a new one may add findings, and CI must not turn red on its own.
            "ruff>=0.17,<0.18",
            "mypy>=2.4,<2.5",
            "types-requests>=2.31",
            "types-jsonschema>=4.18",
            "pyyaml>=6",  # reads deploy/prometheus/calo-alerts.yml in its test
            "types-PyYAML>=6",
        ],
        "postgres": POSTGRES,
    },
    entry_points={"console_scripts": ["calo-server = calo.cli:main"]},
)
