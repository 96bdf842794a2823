"""The YAML recipes compose on top of verl's ppo_trainer config, set only keys verl knows, and valid MAPO options."""

import os
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from verl_modality.algorithms.config import MapoATConfig, MapoConfig, ZeroVarianceConfig
from verl_modality.data.curriculum import CurriculumConfig
from verl_modality.data.modality_view import ModalityView
from verl_modality.trainer.local_actor import compose_verl_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [
    ROOT / "examples" / "mapo_cpu_demo.yaml",
    ROOT / "examples" / "mupo_cpu_demo.yaml",
    ROOT / "examples" / "mapo_full_cpu_demo.yaml",
    ROOT / "recipes" / "maple" / "mapo_qwen2_5_omni_3b.yaml",
    ROOT / "recipes" / "maple" / "mupo_qwen2_5_omni_3b.yaml",
    ROOT / "recipes" / "maple" / "mapo_adaptive_qwen2_5_omni_3b.yaml",
    ROOT / "recipes" / "maple" / "mapo_at_qwen2_5_omni_3b.yaml",
    ROOT / "recipes" / "mapo_at" / "qwen3_omni_30b_a3b.yaml",
    ROOT / "recipes" / "lora" / "qwen2_5_omni_7b_mapo_lora.yaml",
    ROOT / "recipes" / "lora" / "qwen3_omni_30b_a3b_mapo_at_lora.yaml",
]
#: each LoRA recipe and the full fine-tuning recipe whose method settings it keeps
LORA_PEERS = {
    "qwen2_5_omni_7b_mapo_lora": ROOT / "recipes" / "maple" / "mapo_qwen2_5_omni_3b.yaml",
    "qwen3_omni_30b_a3b_mapo_at_lora": ROOT / "recipes" / "mapo_at" / "qwen3_omni_30b_a3b.yaml",
}
# Keys verl's base config does not have but accepts: ours, and free-form dicts verl passes through.
OPEN_PREFIXES = (
    "algorithm.mapo.",
    "algorithm.mapo_at.",
    "algorithm.zero_variance.",
    "data.curriculum.",
    "data.modality.",
    "trainer.v1.sampler.poll_interval",
    "ray_kwargs.ray_init.",
    "actor_rollout_ref.model.override_config.",
    "reward.custom_reward_function.reward_kwargs.",
)


def _leaf_keys(node, prefix=""):
    for key, value in node.items():
        if key in ("hydra", "defaults"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaf_keys(value, path + ".")
        else:
            yield path


def _compose(path: Path):
    with initialize_config_dir(config_dir=str(path.parent), version_base=None):
        return compose(config_name=path.stem)


@pytest.mark.parametrize(
    "path",
    RECIPES
    + [ROOT / "recipes" / "maple" / "common.yaml", ROOT / "examples" / "cpu_demo_common.yaml"]
    # the SFT recipe composes on verl's sft_trainer_engine: checked in tests/data/test_weak_to_strong.py
    + [ROOT / "recipes" / "audio_contribution" / "grpo_strong_qwen2_5_omni_3b.yaml"],
    ids=lambda p: p.stem,
)
def test_every_key_exists_in_verl(path):
    base = compose_verl_config()
    unknown = []
    for key in _leaf_keys(yaml.safe_load(path.read_text())):
        if key.startswith(OPEN_PREFIXES):
            continue
        if ".mixed_precision." in key or ".wrap_policy." in key:
            continue  # typed dataclass fields verl leaves unset in the YAML
        parent, _, last = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if node is None or last not in node.keys():  # keys() also lists mandatory '???' values
            unknown.append(key)
    assert not unknown, f"{path.name} sets keys verl 0.9.1 does not have (typos?): {unknown}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_composes_with_valid_mapo_options(path, monkeypatch):
    monkeypatch.setenv("VERL_MODALITY_DEMO_DIR", "/demo")
    cfg = _compose(path)
    mapo = MapoConfig.from_algorithm_config(cfg.algorithm)
    view = ModalityView.from_config(cfg.data)
    assert cfg.data.custom_cls.name == "OmniRLDataset"
    assert cfg.reward.custom_reward_function.path == "pkg://verl_modality.rewards.choice"
    if (
        path.stem.startswith("mapo_at") or path.parent.name == "mapo_at" or "_mapo_at" in path.stem
    ):  # docs/method.md §5: GRPO + both losses, beta 0.02
        at = MapoATConfig.from_algorithm_config(cfg.algorithm)
        assert cfg.algorithm.adv_estimator == "grpo" and at.relevance_mask and at.attention_loss
        assert (at.eta, at.kappa, at.c_mask, at.tau_base, at.layers) == (0.05, 1.0, 5.0, 1.0, (-3, -2, -1))
        # the release's L_attn details (docs/method.md §5)
        assert (at.advantage_floor_eps, at.attn_loss_reduction, at.content_fallback) == (0.02, "seq_mean", "all_tokens")
        assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "mapo_relevance"
        assert cfg.actor_rollout_ref.actor.use_kl_loss and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.02
    elif path.stem.startswith("mupo"):
        assert cfg.algorithm.adv_estimator == "grpo"  # the baseline is vanilla verl GRPO (docs/method.md §2.6)
        assert cfg.actor_rollout_ref.actor.loss_agg_mode == "token-mean"
        assert cfg.actor_rollout_ref.actor.clip_ratio_high == cfg.actor_rollout_ref.actor.clip_ratio_low == 0.2
        assert (view.policy, view.ablation) == ("full", "remove")  # every stream for every sample
        assert mapo.tag_metrics
    else:
        assert cfg.algorithm.adv_estimator == "mapo_stratified"
        assert mapo.balance
        assert cfg.actor_rollout_ref.actor.loss_agg_mode == "seq-mean-token-mean"
        assert (cfg.actor_rollout_ref.actor.clip_ratio_low, cfg.actor_rollout_ref.actor.clip_ratio_high) == (0.2, 0.3)
        assert (view.policy, view.ablation) == ("exact", "remove")  # the tag's streams only (MAPLE §4)
    curriculum = CurriculumConfig.from_config(cfg.data)
    expected_order = {
        "mapo_qwen2_5_omni_3b": "static",  # the full recipe (docs/method.md §2.6)
        "mapo_adaptive_qwen2_5_omni_3b": "adaptive",  # adp_w + adp_cur
        "mapo_full_cpu_demo": "static",  # the demo's full recipe
        "qwen2_5_omni_7b_mapo_lora": "static",  # the full recipe with a LoRA adapter
    }.get(path.stem, "none")
    assert curriculum.order == expected_order
    if curriculum.order == "adaptive":
        assert mapo.adaptive_weights and cfg.trainer.val_before_train and curriculum.window == 5
    if path.stem.startswith("mapo_qwen") or path.stem in ("mapo_full_cpu_demo", "qwen2_5_omni_7b_mapo_lora"):
        assert not mapo.adaptive_weights and not cfg.algorithm.use_kl_in_reward
        zv = ZeroVarianceConfig.from_algorithm_config(cfg.algorithm)
        assert zv.drop and not zv.retire and zv.metric == "acc" and not cfg.algorithm.filter_groups.enable
    if "maple" in str(path):  # the paper's settings (docs/method.md §2.6)
        a, r = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
        assert (cfg.data.train_batch_size, a.ppo_mini_batch_size, r.n) == (256, 32, 8)
        assert (cfg.data.max_prompt_length, cfg.data.max_response_length, a.optim.lr) == (8192, 2048, 2e-6)
    elif path.parent.name == "lora":  # checked with its full fine-tuning peer below
        pass
    elif path.parent.name == "mapo_at":  # MAPO-AT's paper model on H100 nodes (not run at that size)
        a, r, t = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.trainer
        assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-Omni-30B-A3B-Instruct"
        assert a.strategy == "fsdp2" and a.fsdp_config.param_offload and a.fsdp_config.optimizer_offload
        assert cfg.actor_rollout_ref.ref.fsdp_config.param_offload and not cfg.algorithm.filter_groups.enable
        assert (r.name, r.n, r.tensor_model_parallel_size) == ("vllm", 8, 4)
        assert (t.n_gpus_per_node * t.nnodes) % r.tensor_model_parallel_size == 0
        assert (cfg.data.train_batch_size * r.n) % (t.n_gpus_per_node * t.nnodes) == 0
        assert (a.ppo_mini_batch_size * r.n) % (t.n_gpus_per_node * t.nnodes * a.ppo_micro_batch_size_per_gpu) == 0
        assert "NOT RUN AT THIS SIZE" in path.read_text()
    else:
        assert cfg.actor_rollout_ref.model.path == "/demo/model"
        assert os.path.basename(cfg.data.train_files) == "train.parquet"


@pytest.mark.parametrize("stem", sorted(LORA_PEERS))
def test_lora_recipe_keeps_its_peer_and_adds_lora(stem, monkeypatch):
    """A LoRA recipe is its full fine-tuning peer's method (algorithm, data, reward, losses, sampling) with verl's LoRA
    options, on one 8-GPU node with vLLM; verl's default target_modules means the thinker's language model."""
    from verl_modality.models.lora import LANGUAGE_MODEL_LINEAR, thinker_target_modules

    monkeypatch.setenv("VERL_MODALITY_DEMO_DIR", "/demo")
    path = ROOT / "recipes" / "lora" / f"{stem}.yaml"
    cfg, peer = _compose(path), _compose(LORA_PEERS[stem])
    for key in ("algorithm", "data", "reward"):
        mine, theirs = (OmegaConf.to_container(c[key], resolve=False) for c in (cfg, peer))
        if key == "data":  # the batch is sized for the hardware; the MAPLE peer has the paper's
            for d in (mine, theirs):
                d.pop("train_batch_size")
        assert mine == theirs, f"{stem}: {key} differs from {LORA_PEERS[stem].name}"
    a, pa = cfg.actor_rollout_ref.actor, peer.actor_rollout_ref.actor
    for key in ("loss_agg_mode", "clip_ratio_low", "clip_ratio_high", "use_kl_loss", "kl_loss_coef", "kl_loss_type"):
        assert a[key] == pa[key], f"{stem}: actor.{key}"
    assert a.policy_loss.loss_mode == pa.policy_loss.loss_mode
    r, pr = cfg.actor_rollout_ref.rollout, peer.actor_rollout_ref.rollout
    for key in ("n", "temperature", "top_p", "top_k"):
        assert r[key] == pr[key], f"{stem}: rollout.{key}"

    model = cfg.actor_rollout_ref.model
    assert model.lora_rank > 0 and model.lora_alpha > 0
    assert thinker_target_modules(model.target_modules) == LANGUAGE_MODEL_LINEAR and model.exclude_modules is None
    assert 1e-6 <= a.optim.lr <= 1e-4
    t = cfg.trainer
    assert (t.nnodes, t.n_gpus_per_node, r.name) == (1, 8, "vllm")
    assert t.n_gpus_per_node % r.tensor_model_parallel_size == 0
    assert (cfg.data.train_batch_size * r.n) % t.n_gpus_per_node == 0
    assert (a.ppo_mini_batch_size * r.n) % (t.n_gpus_per_node * a.ppo_micro_batch_size_per_gpu) == 0
    assert cfg.data.train_batch_size % a.ppo_mini_batch_size == 0
    text = path.read_text()
    assert "NOT RUN AT THIS SIZE" in text and "tests/trainer/test_main_ppo_lora.py" in text
    if stem.startswith("qwen2_5_omni_7b"):
        assert model.path == "Qwen/Qwen2.5-Omni-7B"
        # MAPLE's batch, lengths and group size (docs/method.md §2.6)
        assert (cfg.data.train_batch_size, a.ppo_mini_batch_size, r.n) == (256, 32, 8)
        assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (8192, 2048)
    else:
        assert model.path == "Qwen/Qwen3-Omni-30B-A3B-Instruct"
        assert model.lora.merge  # vLLM serves no adapters on this thinker: it gets merged weights
        assert cfg.data.train_batch_size == peer.data.train_batch_size


@pytest.mark.parametrize("rollout", ["hf", "vllm"])
def test_cpu_rollout_choice(rollout, monkeypatch):
    """``cpu_rollout=...`` picks the demos' rollout; every key of its file exists in verl's rollout config."""
    monkeypatch.setenv("VERL_MODALITY_DEMO_DIR", "/demo")
    path = ROOT / "examples" / "cpu_rollout" / f"{rollout}.yaml"
    import dataclasses

    from verl.workers.config import RolloutConfig

    known = set(compose_verl_config().actor_rollout_ref.rollout.keys())  # keys() lists '???' values too
    known |= {f.name for f in dataclasses.fields(RolloutConfig)}  # fields verl's YAML leaves out (enable_sleep_mode)
    unknown = [
        key
        for key in _leaf_keys(yaml.safe_load(path.read_text()))
        if not key.startswith("engine_kwargs.vllm.")  # passed to the engine as they are
        and key.split(".")[0] not in known
    ]
    assert not unknown, f"{path.name} sets rollout keys verl 0.9.1 does not have: {unknown}"
    examples = ROOT / "examples"
    with initialize_config_dir(config_dir=str(examples), version_base=None):
        cfg = compose(config_name="mapo_cpu_demo", overrides=[f"cpu_rollout={rollout}"])
    r = cfg.actor_rollout_ref.rollout
    assert r.name == rollout and r.n == 8  # the common settings survive the choice
    if rollout == "vllm":  # what vLLM needs on a CPU
        assert (r.enable_sleep_mode, r.free_cache_engine, r.enforce_eager, r.dtype) == (False, False, True, "float32")
        assert r.engine_kwargs.vllm.kv_cache_memory_bytes > 0
