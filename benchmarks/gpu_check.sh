#!/usr/bin/env bash
# The first-GPU check (benchmarks/gpu_check.py): on a CUDA machine, from the repository root,
#   bash benchmarks/gpu_check.sh                 # -> gpu_check/gpu_check.json + summary.txt
# Sets up .venv from this repository with scripts/setup.sh (pip installs the pinned torch pair
# and the package; on a machine without network pip must find them in its local cache or a
# wheelhouse given with PIP_FIND_LINKS + PIP_NO_INDEX=1), or uses RRM_PYTHON, an interpreter
# that already has the dependencies. Extra arguments go to gpu_check.py (e.g. --steps trace).
# Exit status: gpu_check.py's (1 when a CUDA result differs from the CPU's beyond tolerance).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${RRM_PYTHON:-}" ]; then
  py="$RRM_PYTHON"
else
  bash scripts/setup.sh
  py=.venv/bin/python
fi
"$py" -c "import torch; assert torch.cuda.is_available() or '${DEVICE:-cuda}' == 'cpu', \
  'no CUDA device: run with DEVICE=cpu for the CPU mode'"
exec "$py" benchmarks/gpu_check.py --device "${DEVICE:-cuda}" --out "${OUT:-gpu_check}" "$@"
