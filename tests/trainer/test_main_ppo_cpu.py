"""End to end: verl's real ``python -m verl.trainer.main_ppo`` on the CPU with the tiny Omni model and demo data.

Eight runs (about a minute each): MAPO (``exact`` streams, adaptive curriculum) for 4 steps with checkpoints at steps 2
and 4, the same run resumed from its step-2 checkpoint, MAPO with the static curriculum and verl's regenerating group
filter, MAPO with the static curriculum and the dropping one (MAPLE's early and mid-training filtering), the MUPO
baseline (``full`` streams, mixed batches) for 2 steps, plain GRPO for 2 steps through the plugin's trainer (shared
by two tests) and through verl's own ``PPOTrainerSync``, and MAPO-AT on the Qwen3-Omni thinker at world size 2.
MAPO-AT on Qwen2.5-Omni runs in tests/trainer/test_data_parallel.py, at world size 1 and 2.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    MAPO_AT_TWO_STEPS,
    SMALL_BATCH,
    WS2,
    actor_weights,
    assert_mapo_at_steps,
    assert_streams_shown,
    e2e_inputs,
    initial_weights,
)

from verl_modality.trainer.launch import run_main_ppo
from verl_modality.vocabulary import TAGS

pytestmark = pytest.mark.slow

STEPS = 4
BASE = [*SMALL_BATCH, "trainer.val_before_train=False", "trainer.save_freq=2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("e2e_inputs")
    make_demo_data(root / "data", seed=0, n_train=16, n_test=7)
    return {"model": Path(tiny_model_dir), "data": root / "data"}


def _run(work_dir: Path, inputs: dict, extra: list[str], config: str = "mapo_cpu_demo", env: dict | None = None):
    overrides = [*e2e_inputs(inputs["model"], inputs["data"], work_dir), *BASE, *extra]
    result = run_main_ppo(config, work_dir, overrides, env=env, timeout=900)
    assert result.returncode == 0, result.log_tail(80)
    return result


@pytest.fixture(scope="module")
def full_batches(tmp_path_factory, tiny_model_dir):
    """4 training rows per tag: every curriculum batch of 4 holds distinct prompts, none repeated as padding.

    A prompt repeated in one batch sends twice n identical requests to the hf rollout, which tells them apart only
    by arrival order; which of the two groups gets which responses then varies run to run, and so do the weights.
    """
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("e2e_full_batches")
    make_demo_data(root / "data", seed=0, n_train=28, n_test=7)
    return {"model": Path(tiny_model_dir), "data": root / "data"}


@pytest.fixture(scope="module")
def mapo_run(tmp_path_factory, full_batches):
    inputs = full_batches
    work = tmp_path_factory.mktemp("mapo")
    extra = [f"trainer.total_training_steps={STEPS}", f"trainer.test_freq={STEPS}", "trainer.val_before_train=True"]
    return _run(work, inputs, [*extra, "data.curriculum.order=adaptive"])


def _step_tags(steps: dict, n: int) -> list[str]:
    """The one tag of each training step 1..n, read from the per-tag metrics (asserting there is exactly one)."""
    out = []
    for step in range(1, n + 1):
        tags = {k.split("/")[1] for k in steps[step] if k.startswith(("mapo/", "streams/"))}
        assert len(tags) == 1, (step, tags)
        (tag,) = tags
        assert steps[step]["curriculum/tag_index"] == TAGS.index(tag)
        out.append(tag)
    return out


def test_mapo_logs_per_tag_metrics_and_trains(mapo_run, full_batches):
    inputs = full_batches
    import pandas as pd

    steps = mapo_run.steps()
    assert sorted(s for s in steps if s > 0) == list(range(1, STEPS + 1))
    train_tags = set(pd.read_parquet(inputs["data"] / "train.parquet")["modality_tag"])
    for step in range(1, STEPS + 1):
        m = steps[step]
        logged = {k.split("/")[1] for k in m if k.startswith("mapo/")}
        assert logged and logged <= train_tags, (step, logged)
        for tag in logged:
            for stat in ("count", "reward_mean", "reward_std", "zero_var_frac", "difficulty", "weight", "adv_abs_mean"):
                assert f"mapo/{tag}/{stat}" in m, (step, tag, stat)
        assert sum(m[f"mapo/{t}/count"] for t in logged) == 16  # 4 prompts x 4 responses, no padding rows
        assert_streams_shown(m, logged, exact=True)
        assert all(0.0 < m[f"mapo/{t}/weight"] < 1.0 for t in logged)  # adaptive weights are on in the demo recipe
    # adaptive curriculum, first epoch: one tag per batch, lowest zero-shot (step-0 validation) accuracy first
    zero_shot = {t: steps[0][f"val-core/tag/{t}/acc"] for t in train_tags}
    expected = sorted(train_tags, key=lambda t: (zero_shot[t], TAGS.index(t)))[:STEPS]  # one batch per tag here
    assert _step_tags(steps, STEPS) == expected
    val = steps[STEPS]
    val_tags = set(pd.read_parquet(inputs["data"] / "test.parquet")["modality_tag"])
    assert {k.split("/")[2] for k in val if k.startswith("val-core/tag/")} == val_tags | {"pooled", "tag_mean"}
    # The policy moved: compare the step-4 actor checkpoint with the initial thinker weights.
    before = initial_weights(inputs["model"])
    after = actor_weights(mapo_run.work_dir / "ckpt" / f"global_step_{STEPS}")
    assert set(after) == set(before)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("model.layers.") for k in changed), "no language-model weight changed"
    # weight decay is off in the recipe, so the change comes from policy gradients
    assert any(steps[s]["actor/grad_norm"] > 0 for s in range(1, STEPS + 1))
    # The hf rollout samples with the actor's current weights (synced after every update): its log-probs match the
    # actor's recomputation to float precision on every step, which an unsynced server would not after step 1.
    assert all(steps[s]["training/rollout_probs_diff_max"] < 1e-5 for s in range(1, STEPS + 1))


def test_resume_restores_state_and_weights_exactly(mapo_run, full_batches, tmp_path):
    inputs = full_batches
    ckpt_a = mapo_run.work_dir / "ckpt"
    state_2 = json.loads((ckpt_a / "global_step_2" / "verl_modality_state.json").read_text())
    assert state_2["global_steps"] == 2 and state_2["adaptive_weights"]
    # Interrupted run: the first half is the uninterrupted run's step-2 checkpoint, then a restart from it.
    ckpt_b = tmp_path / "ckpt"
    shutil.copytree(ckpt_a / "global_step_2", ckpt_b / "global_step_2")
    (ckpt_b / "latest_checkpointed_iteration.txt").write_text("2")
    resumed = _run(
        tmp_path,
        inputs,
        [
            f"trainer.total_training_steps={STEPS}",
            "trainer.test_freq=-1",
            "trainer.resume_mode=auto",
            "data.curriculum.order=adaptive",  # its zero-shot accuracies come from the checkpoint
        ],
    )
    assert sorted(resumed.steps()) == [3, 4]
    for step in (3, 4):  # the same per-tag statistics, step by step
        a = {k: v for k, v in mapo_run.steps()[step].items() if k.startswith(("mapo/", "curriculum/"))}
        b = {k: v for k, v in resumed.steps()[step].items() if k.startswith(("mapo/", "curriculum/"))}
        assert any(k.startswith("curriculum/") for k in a)
        assert a == b, step
    state_a = json.loads((ckpt_a / f"global_step_{STEPS}" / "verl_modality_state.json").read_text())
    state_b = json.loads((ckpt_b / f"global_step_{STEPS}" / "verl_modality_state.json").read_text())
    assert state_a == state_b and state_a["curriculum"]["steps"] == STEPS
    # Weights: equal up to float summation order. verl orders a batch's rows by when their rollouts finish (async),
    # so micro-batch sums may round differently in the last bit; the difference must stay far below a step's change.
    wa = actor_weights(ckpt_a / f"global_step_{STEPS}")
    wb = actor_weights(ckpt_b / f"global_step_{STEPS}")
    w2 = actor_weights(ckpt_a / "global_step_2")
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    moved = max((wa[k] - w2[k]).abs().max().item() for k in wa)
    assert moved > 1e-4 and diff <= 1e-6, (diff, moved)


def test_static_curriculum_with_group_filtering(tmp_path, inputs):
    reward = Path(__file__).with_name("biased_reward.py")
    extra = [
        "trainer.total_training_steps=3",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "data.curriculum.order=static",
        "algorithm.filter_groups.enable=True",
        "algorithm.filter_groups.metric=acc",
        f"reward.custom_reward_function.path={reward}",
    ]
    steps = _run(tmp_path, inputs, extra).steps()
    tags = _step_tags(steps, 3)
    assert all(len(t) == 1 for t in tags)  # 8 uni-tag prompts = 3 batches of 4 (one padded): uni first
    for step in (1, 2, 3):  # full batches of kept groups, all of the step's tag
        assert steps[step][f"mapo/{tags[step - 1]}/count"] == 16
        assert steps[step][f"mapo/{tags[step - 1]}/zero_var_frac"] == 0.0  # filtering kept only groups with variance
    evicted = sum(steps[s].get("training/filter_groups/evicted_samples", 0) for s in (1, 2, 3))
    assert evicted > 0  # ~40 % of groups of 4 have no variance under this reward


def test_static_curriculum_drops_zero_variance_groups_and_retires_prompts(tmp_path, inputs):
    """MAPLE's early filtering (drop, never regenerate) and mid-training filtering in verl's loop: V rows always score
    1 (zero variance), the others a coin. The V step of the first epoch is skipped; every other step trains on
    exactly its kept groups; nothing is generated beyond 4 x 4 per step; from the second epoch the V prompts are out."""
    import pandas as pd

    reward_log = tmp_path / "rewards.jsonl"
    steps_total = 9  # 7 tags in 16 rows: 7 batches of 4 in the first epoch, then 2 of the second
    extra = [
        f"trainer.total_training_steps={steps_total}",
        f"trainer.total_epochs={steps_total}",  # verl counts 16 // 4 steps an epoch; the step budget must decide
        "trainer.test_freq=-1",
        f"trainer.save_freq={steps_total}",
        "data.curriculum.order=static",
        "+algorithm.zero_variance.drop=true",
        "+algorithm.zero_variance.retire=true",
        "+algorithm.zero_variance.metric=acc",
        f"reward.custom_reward_function.path={Path(__file__).with_name('tag_reward.py')}",
    ]
    result = _run(tmp_path, inputs, extra, env={"TAG_REWARD_LOG": str(reward_log)})
    steps = result.steps()
    calls = [json.loads(line) for line in reward_log.read_text().splitlines()]
    assert len(calls) == steps_total * 4 * 4  # 4 prompts x 4 responses a step: no group was regenerated
    v_step = TAGS.index("V")
    for step in range(1, steps_total + 1):
        m = steps[step]
        assert (
            m["zero_variance/kept_groups"] + m["zero_variance/dropped_groups"] + m["zero_variance/rounded_off_groups"]
            == 4
        )
        # one rank, one mini-batch, log-prob micro-batches of 8 samples (cpu_demo_common): an even count of groups
        assert m["zero_variance/kept_groups"] % 2 == 0 and m["zero_variance/rounded_off_groups"] <= 1
        trained = sum(v for k, v in m.items() if k.startswith("mapo/") and k.endswith("/count"))
        if m["curriculum/tag_index"] == v_step:  # the V batch: nothing varies, the step is skipped
            assert step <= 7 and m["zero_variance/skipped_step"] == 1 and m["zero_variance/dropped/V"] == 4
            assert trained == 0 and "actor/pg_loss" not in m
        elif m["zero_variance/skipped_step"] == 0:
            assert trained == m["zero_variance/samples_per_update"] == 4 * m["zero_variance/kept_groups"]
            assert "actor/pg_loss" in m
    assert [steps[s]["curriculum/tag_index"] for s in range(1, 8)].count(v_step) == 1
    assert all(steps[s]["curriculum/tag_index"] != v_step for s in (8, 9))  # V prompts retired after epoch 1
    state = json.loads((tmp_path / "ckpt" / f"global_step_{steps_total}" / "verl_modality_state.json").read_text())
    tags = pd.read_parquet(inputs["data"] / "train.parquet")["modality_tag"].tolist()
    retired = state["curriculum"]["retired"]
    assert {i for i, t in enumerate(tags) if t == "V"} <= set(retired)
    assert steps[8]["curriculum/retired_prompts"] == len(retired)


def test_mupo_baseline_shows_every_stream(tmp_path, inputs):
    extra = ["trainer.total_training_steps=2", "trainer.test_freq=2", "data.curriculum.order=mixed"]
    result = _run(tmp_path, inputs, extra, config="mupo_cpu_demo")
    steps = result.steps()
    assert not [k for m in steps.values() for k in m if k.startswith("mapo/")]  # vanilla GRPO advantages
    for step in (1, 2):
        tags = {k.split("/")[1] for k in steps[step] if k.startswith("streams/")}
        assert tags, step
        assert_streams_shown(steps[step], tags, exact=False)
    assert "val-core/tag/pooled/acc" in steps[2] and "actor/pg_loss" in steps[2]
    assert all(steps[s]["curriculum/tag_index"] == -1 for s in (1, 2))  # mixed: batches of any tags
    assert all(steps[s]["training/rollout_probs_diff_max"] < 1e-5 for s in (1, 2))


PLAIN_GRPO = ["algorithm.adv_estimator=grpo", "trainer.total_training_steps=2", "trainer.test_freq=2"]


@pytest.fixture(scope="module")
def plain_grpo_run(tmp_path_factory, inputs):
    """Plain GRPO (none of the plugin's options) through the plugin's trainer: one run for the two tests below."""
    work = tmp_path_factory.mktemp("plain_grpo")
    return work, _run(work, inputs, PLAIN_GRPO)


def test_plain_grpo_is_vanilla(plain_grpo_run, inputs):
    work, result = plain_grpo_run
    steps = result.steps()
    assert not [k for m in steps.values() for k in m if k.startswith(("mapo/", "val-core/tag/", "streams/"))]
    assert "actor/pg_loss" in steps[2]
    assert not (work / "ckpt" / "global_step_2" / "verl_modality_state.json").exists()
    before = initial_weights(inputs["model"])
    after = actor_weights(work / "ckpt" / "global_step_2")
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("model.layers."))


def _comparable(steps: dict) -> dict:
    """Per-step metrics without wall-clock times, throughput and memory."""

    def kept(key: str) -> bool:
        parts = key.split("/")
        return not (parts[0].startswith(("timing", "time")) or "perf" in parts or "memory" in key)

    return {s: {k: v for k, v in m.items() if kept(k)} for s, m in steps.items()}


def test_plugin_trainer_gives_verls_own_metrics(plain_grpo_run, tmp_path, inputs):
    """Plain GRPO through the plugin's trainer and through verl's own PPOTrainerSync (the trainer entry switched off
    with VERL_MODALITY_DISABLE; the CPU platform and the hf rollout stay): the same per-step metrics."""
    from verl_modality.trainer.modality_trainer import TRAINER_BANNER

    plugin_work, ours = plain_grpo_run
    verls = _run(tmp_path / "verl", inputs, PLAIN_GRPO, env={"VERL_MODALITY_DISABLE": "trainers"})
    assert f"{TRAINER_BANNER}; nothing selected" in ours.log_path.read_text()
    assert TRAINER_BANNER not in verls.log_path.read_text()
    a, b = _comparable(ours.steps()), _comparable(verls.steps())
    assert sorted(a) == sorted(b) and 2 in a
    assert "actor/pg_loss" in a[2] and "critic/score/mean" in a[2]
    for step in a:
        assert sorted(a[step]) == sorted(b[step]), step
        # float sums may run in another order (which request of a group gets which response); rollout_corr/* are
        # fp32 differences of equal log-probs, ~1e-7 either side of 0
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-5), step  # abs: fp32 noise around 0
    # the same weights after two updates, up to float summation order (measured: at most 4.5e-6 apart, while the two
    # updates moved them by up to 1.7e-3)
    mine = actor_weights(plugin_work / "ckpt" / "global_step_2")
    theirs = actor_weights(tmp_path / "verl" / "ckpt" / "global_step_2")
    before = initial_weights(inputs["model"])
    moved = max(float((mine[k] - before[k]).abs().max()) for k in mine)
    apart = max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
    assert apart < 2e-5 and moved > 50 * apart, (apart, moved)


def test_qwen3_omni_trains_with_mapo_at_on_two_ranks(tmp_path, inputs, tiny_qwen3_model_dir):
    """The Qwen3-Omni (MoE) thinker through the same loop at world size 2: two FSDP2 ranks sharding its experts, one
    hf rollout server per rank, MAPO with MAPO-AT's relevance pass and attention loss; the rollout's log-probs equal
    the actor's before each update, so the weights synced from the actor (experts split by verl, fused again by the
    rollout) reach both servers. Zero-variance groups are dropped (rows of even index always score 1): the MAPO-AT
    pass and the update run on the kept groups, split over the two ranks."""
    qwen3 = {**inputs, "model": Path(tiny_qwen3_model_dir)}
    drop = [
        "+algorithm.zero_variance.drop=true",
        f"reward.custom_reward_function.path={Path(__file__).with_name('parity_reward.py')}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",  # any kept count splits into whole micro-batches
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    ]
    steps = _run(tmp_path, qwen3, [*MAPO_AT_TWO_STEPS, *WS2, *drop]).steps()
    assert_mapo_at_steps(steps)
    assert all(steps[s]["training/rollout_probs_diff_max"] < 1e-5 for s in (1, 2))
    for s in (1, 2):
        m = steps[s]
        trained = sum(v for k, v in m.items() if k.startswith("mapo/") and k.endswith("/count"))
        assert m["zero_variance/kept_groups"] + m["zero_variance/dropped_groups"] == 4
        assert trained == m["zero_variance/samples_per_update"] == 4 * m["zero_variance/kept_groups"]
    assert sum(steps[s]["zero_variance/dropped_groups"] for s in (1, 2)) >= 1  # the even rows' groups
