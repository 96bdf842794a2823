#!/usr/bin/env bash
# The main job on a CPU: build the tiny Qwen2.5-Omni model and the demo data, then train with MAPO through verl's main_ppo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/env.sh
exec .venv/bin/verl-modality demo --work-dir "${WORK_DIR:-demo_run}" "$@"
