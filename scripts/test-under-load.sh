#!/usr/bin/env bash
# The whole suite N times in a row (default 5) while another process keeps one core busy
# (Debian's stress-ng, installed when missing, stopped at the end): the check that no
# test depends on this machine's speed. Prints each run's pytest summary line; exits
# non-zero if any run failed. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
if ! command -v stress-ng >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng
fi
bash scripts/test.sh --collect-only -q >/dev/null || exit 1  # installs what the suite needs; lints
stress-ng --cpu 1 --timeout "$((runs * 900))s" --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null' EXIT
failed=0
for n in $(seq "$runs"); do
  log=$(mktemp)
  rc=0
  .venv/bin/python -m pytest -q -p no:randomly "$@" >"$log" 2>&1 || rc=$?
  echo "run $n of $runs ($(date +%T)): $(tail -1 "$log")"
  if [ "$rc" != 0 ]; then failed=1; echo "  log: $log"; fi
done
exit "$failed"
