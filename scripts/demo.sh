#!/usr/bin/env bash
# Main job on the embedded default: set up .venv if needed, then `rrm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rrm demo --out "${1:-rrm_demo}"
