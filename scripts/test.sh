#!/usr/bin/env bash
# Test suite: set up .venv if needed, lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports
# Two workers: most tests run one torch thread, so a 2-core machine runs two at once;
# worksteal keeps both busy when a few end-to-end tests take minutes.
exec .venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=20 "$@"
