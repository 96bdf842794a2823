#!/usr/bin/env bash
# Submit a MAPLE recipe as a Ray job to a running cluster of H100 nodes (4 GPUs each).
#
# On every node first (docs/install.md; same code and data paths everywhere):
#   pip install torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 && pip install -e ".[vllm]" \
#     && pip install flash-attn==2.8.3.post2 --no-build-isolation
# Head node:            ray start --head --port=6379 --dashboard-host=0.0.0.0
# Each other node:      ray start --address=<head-ip>:6379
# Then, from any machine that reaches the head's dashboard port:
#
#   RAY_ADDRESS=http://<head-ip>:8265 NNODES=2 TRAIN=/data/maple_qa/train.parquet VAL=/data/maple_qa/test.parquet \
#       bash recipes/maple/launch_ray_cluster.sh mapo_qwen2_5_omni_3b [extra hydra overrides...]
#
# RECIPE is mapo_qwen2_5_omni_3b, mapo_adaptive_qwen2_5_omni_3b, mupo_qwen2_5_omni_3b or mapo_at_qwen2_5_omni_3b. Checkpoints go to CKPT_DIR (a path shared by all nodes).
set -euo pipefail
RECIPE="${1:?usage: launch_ray_cluster.sh RECIPE [hydra overrides...]}"
shift
: "${RAY_ADDRESS:?set RAY_ADDRESS=http://<head-ip>:8265}"
: "${TRAIN:?set TRAIN to the training parquet}"
: "${VAL:?set VAL to the validation parquet}"
NNODES="${NNODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
CKPT_DIR="${CKPT_DIR:-$PWD/checkpoints/$RECIPE}"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ ! -f "$HERE/$RECIPE.yaml" ]]; then
    echo "no recipe $HERE/$RECIPE.yaml" >&2
    exit 2
fi

# verl loads plugins through the `verl.plugins` entry point in every worker; the package must be installed on each
# node (pip install -e), so the runtime env only carries environment variables.
exec ray job submit --address "$RAY_ADDRESS" --no-wait \
    --runtime-env-json '{"env_vars": {"TOKENIZERS_PARALLELISM": "false", "VLLM_USE_V1": "1"}}' \
    -- python -m verl.trainer.main_ppo --config-path "$HERE" --config-name "$RECIPE" \
    data.train_files="$TRAIN" data.val_files="$VAL" \
    trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.default_local_dir="$CKPT_DIR" "$@"
