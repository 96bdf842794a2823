#!/usr/bin/env bash
# Create .venv and install verl-modality with its CPU stack, once. Re-run after pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
STAMP="$VENV/.verl-modality-installed"
PY="${PYTHON:-python3}"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
echo ">> creating $VENV and installing verl-modality (a few minutes the first time)"
"$PY" -m venv "$VENV"
# torch first, alone: on this machine pip takes these exact releases from local disk. Installing verl first
# would let the resolver choose a torch by itself.
"$VENV/bin/pip" install --disable-pip-version-check -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/pip" install --disable-pip-version-check -q -e ".[test]"
"$VENV/bin/python" - <<'PY'
import torch, verl, transformers
assert torch.__version__.startswith("2.14.1"), f"unexpected torch {torch.__version__}"
print(f">> installed: torch {torch.__version__}, verl {verl.__version__}, transformers {transformers.__version__}")
PY
touch "$STAMP"
