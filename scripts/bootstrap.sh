#!/usr/bin/env bash
# Make ./.venv with Calo Jobs installed in it (with `--test`: and its test tools too).
# Safe to run again: it only installs what is missing. Needs only python3 (>= 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv >/dev/null 2>&1; then
    # Debian's python3 ships venv's pip separately.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf .venv && "$python" -m venv .venv
  fi
fi
extra="" stamp=.venv/.calo-installed
[ "${1:-}" = "--test" ] && extra="[test]" stamp=.venv/.calo-installed-test
# The install is editable, so only a changed setup.py (its dependencies) needs pip again:
# the stamp holds setup.py's hash from the last install (a test install serves a plain run).
want=$(sha256sum setup.py | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] || \
   { [ -z "$extra" ] && [ "$(cat .venv/.calo-installed-test 2>/dev/null)" = "$want" ]; }; then
  exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
echo "$want" > "$stamp"
