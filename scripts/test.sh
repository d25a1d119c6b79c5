#!/usr/bin/env bash
# Set up (if needed) and run the test suite; slow tests are left out (run them with: -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
