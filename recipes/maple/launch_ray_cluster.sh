#!/usr/bin/env bash
# Submit a recipe as a Ray job to a running Ray cluster (docs/multi_node.md).
#
# On every node first (docs/install.md; the same install, code and data paths everywhere, checkpoints on storage
# that every node sees):
#   pip install torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 && pip install -e ".[vllm]" \
#     && pip install flash-attn==2.8.3.post2 --no-build-isolation
# Head node:            ray start --head --port=6379 --dashboard-host=0.0.0.0
# Each other node:      ray start --address=<head-ip>:6379
# Then, from any machine that reaches the head's dashboard port:
#
#   RAY_ADDRESS=http://<head-ip>:8265 NNODES=2 TRAIN=/data/maple_qa/train.parquet VAL=/data/maple_qa/test.parquet \
#       bash recipes/maple/launch_ray_cluster.sh mapo_qwen2_5_omni_3b [extra hydra overrides...]
#
# RECIPE is a recipe of this folder (mapo_qwen2_5_omni_3b, mapo_adaptive_qwen2_5_omni_3b, mupo_qwen2_5_omni_3b,
# mapo_at_qwen2_5_omni_3b) or the path of any recipe YAML (e.g. examples/mapo_cpu_demo.yaml).
# Settings (environment):
#   NNODES, GPUS_PER_NODE  trainer.nnodes / trainer.n_gpus_per_node (default 1 / 4)
#   CKPT_DIR               trainer.default_local_dir, on storage shared by all nodes (default ./checkpoints/RECIPE)
#   METRICS                a JSON-lines file for verl's file logger (adds trainer.logger=[console,file]); optional
#   WAIT=1                 follow the job's log and exit with its status (default: submit and return the job id)
#   SUBMISSION_ID          the job's id (default: Ray's)
#   CPU=1                  the cpu platform (VERL_PLATFORM=cpu on every node; CPU-only clusters, tests)
# Job environment: VERL_PLATFORM, VERL_MODALITY_DEMO_DIR and the HF_*_OFFLINE flags are passed on when set here.
set -euo pipefail
RECIPE="${1:?usage: launch_ray_cluster.sh RECIPE [hydra overrides...]}"
shift
: "${RAY_ADDRESS:?set RAY_ADDRESS=http://<head-ip>:8265}"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ "$RECIPE" == *.yaml ]]; then
    CONFIG_DIR="$(cd "$(dirname "$RECIPE")" && pwd)"
    NAME="$(basename "$RECIPE" .yaml)"
else
    CONFIG_DIR="$HERE"
    NAME="$RECIPE"
fi
if [[ ! -f "$CONFIG_DIR/$NAME.yaml" ]]; then
    echo "launch_ray_cluster.sh: no recipe $CONFIG_DIR/$NAME.yaml" >&2
    exit 2
fi
NNODES="${NNODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
CKPT_DIR="${CKPT_DIR:-$PWD/checkpoints/$NAME}"
ARGS=(data.train_files="${TRAIN:?set TRAIN to the training parquet}" data.val_files="${VAL:?set VAL to the validation parquet}")
if [[ "${CPU:-0}" == 1 ]]; then
    export VERL_PLATFORM=cpu
    # joining a running cluster: Ray refuses num_cpus / num_gpus there (the nodes declared theirs at `ray start`)
    ARGS+=(ray_kwargs.ray_init.num_cpus=null ray_kwargs.ray_init.num_gpus=null)
fi
ENV_VARS='"TOKENIZERS_PARALLELISM": "false", "VLLM_USE_V1": "1", "RAY_USAGE_STATS_ENABLED": "0"'
for var in VERL_PLATFORM VERL_MODALITY_DEMO_DIR HF_HUB_OFFLINE TRANSFORMERS_OFFLINE HF_DATASETS_OFFLINE; do
    if [[ -n "${!var:-}" ]]; then
        ENV_VARS+=", \"$var\": \"${!var}\""
    fi
done
if [[ -n "${METRICS:-}" ]]; then
    ENV_VARS+=", \"VERL_FILE_LOGGER_PATH\": \"$METRICS\""
    ARGS+=("trainer.logger=[console,file]")
fi
SUBMIT=(ray job submit --address "$RAY_ADDRESS" --runtime-env-json "{\"env_vars\": {$ENV_VARS}}")
if [[ "${WAIT:-0}" != 1 ]]; then
    SUBMIT+=(--no-wait)
fi
if [[ -n "${SUBMISSION_ID:-}" ]]; then
    SUBMIT+=(--submission-id "$SUBMISSION_ID")
fi

# verl loads plugins through the `verl.plugins` entry point in every worker; the package must be installed on each
# node (pip install -e), so the runtime env only carries environment variables.
exec "${SUBMIT[@]}" -- python -m verl.trainer.main_ppo --config-path "$CONFIG_DIR" --config-name "$NAME" \
    "${ARGS[@]}" trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.default_local_dir="$CKPT_DIR" "$@"
