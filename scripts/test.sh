#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs Chromium (for the browser tests) and
# the Python test tools when missing, then runs pytest with any extra arguments you give.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
bash scripts/bootstrap.sh --test
exec .venv/bin/python -m pytest "$@"
