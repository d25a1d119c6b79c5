#!/usr/bin/env bash
# Quickstart: set up, then the main job on the built-in digits: ingest -> train -> evaluate -> register ->
# promote (genforge run; run again, it goes on where it stopped), then a grid of samples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GENFORGE_HOME=${GENFORGE_HOME:-$PWD/genforge-workspace}
gf=.venv/bin/genforge
$gf run configs/quickstart.yaml          # ingest -> train -> evaluate (n = 1000) -> register -> promote
$gf generate latest --n 100 --seed 0
echo "workspace: $GENFORGE_HOME  (runs/<run-id>/samples: the grid, one row per digit; runs/<run-id>/eval/report.html: the report)"
