# Environment for running verl-modality on this kind of machine; sourced by the other scripts.
# Offline: models and data are built locally, nothing is fetched from a hub at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
# Ray: no usage stats, loopback only, no dashboard.
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export TORCH_COMPILE_DISABLE=1 TORCHINDUCTOR_DISABLE=1
# Select verl-modality's CPU platform unless the caller chose one (a GPU run sets nothing here).
if [ -z "${VERL_PLATFORM:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  export VERL_PLATFORM=cpu
fi
