#!/usr/bin/env bash
# Quickstart: set up, then the main job on the built-in digits: ingest -> train -> generate -> evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GENFORGE_HOME=${GENFORGE_HOME:-$PWD/genforge-workspace}
gf=.venv/bin/genforge
$gf data ingest builtin:digits --name digits
$gf train configs/quickstart.yaml
$gf generate latest --n 100 --seed 0
$gf evaluate latest --n 1000
echo "workspace: $GENFORGE_HOME  (runs/<run-id>/samples: the grid, one row per digit; runs/<run-id>/eval/report.html: the report)"
