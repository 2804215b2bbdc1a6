#!/usr/bin/env bash
# Install Calo Jobs into ./.venv if needed (nothing when setup.py is unchanged: about a
# second to start), then run `.venv/bin/python server.py` with your flags.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python server.py "$@"
