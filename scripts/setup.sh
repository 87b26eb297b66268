#!/usr/bin/env bash
# Create .venv at the repo root if missing and install rrm-plugin with its test extras.
# torch/torchvision are pinned to the pair that pip serves from this machine's disk
# (vit-prisma -> timm -> torchvision; other pairs fail or download gigabytes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.rrm-plugin-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e ".[test]"
  # circuit-tracer's graph-file models validate our export in the tests; its own requirements
  # (nnsight, transformers<=4.57.3) clash with our pins, and the models need only pydantic.
  .venv/bin/python -m pip install -q --no-deps circuit-tracer==0.5.0
  echo "$want" > "$stamp"
fi
