#!/usr/bin/env bash
# Optional setup for benchmarks/bench_tables.py (genforge's table synthesizers against SDV's).
#
# 1. SDV and sdmetrics go into a venv of their own, benchmarks/out/tables/sdv-venv, never into
#    genforge's: SDV is under the Business Source License (never a dependency of genforge), and
#    sdv 2.0 / sdmetrics 0.32 require pandas < 3, so installing them into .venv would replace its
#    pandas 3 with 2.3 under genforge and its tests. Its torch is the same pinned CPU build as .venv's
#    (TORCH_SPEC as in scripts/setup.sh), held there by a constraints file, and checked afterwards.
# 2. diamonds.csv (53,940 rows) and txhousing.csv (8,602 rows) come out of plotnine's wheel:
#    downloaded with `pip download --no-deps` (plotnine is not installed anywhere), only those two
#    files unpacked into benchmarks/out/tables/. Penguins and breast cancer ship in palmerpenguins and
#    scikit-learn, already in genforge's venv.
#
#   bash benchmarks/setup_tables.sh        # about 2 minutes the first time; a no-op once done
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "error: no .venv: run bash scripts/setup.sh first" >&2; exit 1; }
OUT=benchmarks/out/tables
VENV=$OUT/sdv-venv
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SDV_SPEC=${SDV_SPEC:-"sdv==2.0.0 sdmetrics==0.32.0 pyarrow"}
PLOTNINE=${PLOTNINE:-plotnine==0.15.9}
mkdir -p "$OUT"

# 1. the tables from plotnine's wheel
if [ ! -s "$OUT/diamonds.csv" ] || [ ! -s "$OUT/txhousing.csv" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/python -m pip download -q --no-deps --only-binary :all: -d "$tmp" "$PLOTNINE"
  wheel=$(ls "$tmp"/plotnine-*.whl)
  .venv/bin/python - "$wheel" "$OUT" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel, out = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in ("diamonds.csv", "txhousing.csv"):
        (out / name).write_bytes(z.read(f"plotnine/data/{name}"))
        print(f"{out / name}: from {Path(wheel).name}")
EOF
fi

# 2. SDV in a venv of its own, on the pinned CPU torch
stamp="$VENV/.bench-tables-setup"
want="$TORCH_SPEC $SDV_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  base=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
  [ -x "$VENV/bin/python" ] || "$base" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC  # unquoted: it may carry --index-url
  before=$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__)')
  echo "torch==${before%%+*}" > "$VENV/constraints.txt"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q -c "$VENV/constraints.txt" $SDV_SPEC
  after=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  if [ "$before" != "$after" ]; then
    echo "error: installing SDV replaced torch $before with $after in $VENV" >&2; exit 1
  fi
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c 'import importlib.metadata as m, torch, pandas
print("sdv-venv: torch", torch.__version__, "| sdv", m.version("sdv"), "| sdmetrics", m.version("sdmetrics"), "| pandas", pandas.__version__)'
.venv/bin/python -c 'import torch, pandas; print(".venv:    torch", torch.__version__, "| pandas", pandas.__version__, "(untouched)")'
