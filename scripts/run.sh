#!/usr/bin/env bash
# Install Calo Jobs into ./.venv if needed, then run `python server.py` with your flags.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python server.py "$@"
