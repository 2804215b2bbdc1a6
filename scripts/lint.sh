#!/usr/bin/env bash
# Ruff (rules in ruff.toml) and the type checker (mypy, settings in mypy.ini) over the
# package and its tests; exits non-zero on any finding. Needs the test tools in ./.venv
# (`bash scripts/bootstrap.sh --test`); scripts/test.sh runs this before pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check calo tests server.py setup.py
.venv/bin/mypy
