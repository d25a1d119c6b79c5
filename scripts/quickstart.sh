#!/usr/bin/env bash
# Quickstart: set up, then run the main job on the built-in digits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GENFORGE_HOME=${GENFORGE_HOME:-$PWD/genforge-workspace}
gf=.venv/bin/genforge
$gf data ingest builtin:digits --name digits
echo "workspace: $GENFORGE_HOME"
