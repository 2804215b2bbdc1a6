#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs Chromium (for the browser tests),
# systemd (whose `systemd-analyze verify` checks the deploy/ units), Prometheus (whose
# `promtool` checks deploy/prometheus/), PostgreSQL (the tests start a throwaway cluster of
# their own; no system cluster is started or touched), faketime (clock steps) and the
# Python test tools when missing, runs the linters (ruff and mypy: scripts/lint.sh; any
# finding fails the run), then runs pytest with any extra arguments you give.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd
fi
if ! command -v promtool >/dev/null 2>&1; then
  # Only promtool is used; the server and node exporter it recommends are not started.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
# libfaketime steps a test server's wall clock while it runs (tests/test_faults_clock.py).
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime
fi
bash scripts/bootstrap.sh --test
bash scripts/lint.sh
exec .venv/bin/python -m pytest "$@"
