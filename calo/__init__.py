"""Calo Jobs: delayed jobs that fetch a food photo, with a live dashboard.

The package is wired together in one place, `calo.app` (`make_app`, the route table, and
`Calo`, which builds and starts every part); `calo.cli` is the entry point behind both
`python server.py` and the `calo-server` console script.
"""

__version__ = "0.1.0"
