#!/usr/bin/env bash
# The test suite (fast unit tests and the slower end-to-end CPU tests, marked `slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/env.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=10 "$@" tests  # and the ten slowest
