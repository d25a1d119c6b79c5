#!/usr/bin/env bash
# Create .venv and install genforge into it. torch is installed first and pinned, so no
# dependency can pull a multi-GB CUDA build; a GPU user sets TORCH_SPEC (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${1:-}
stamp=".venv/.genforge-setup"
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "$TORCH_SPEC"
before=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
.venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
after=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
if [ "$before" != "$after" ]; then
  echo "error: installing genforge replaced torch $before with $after" >&2; exit 1
fi
echo "$want" > "$stamp"
