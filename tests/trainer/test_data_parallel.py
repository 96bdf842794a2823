"""World size 2 (two FSDP2 ranks over gloo) end to end through verl's ``main_ppo`` on the CPU, against world size 1.

One recipe holds everything whose reduction could depend on the world size: MAPO (exact streams, stratified
advantages, per-tag metrics, the static curriculum's one-tag batches), MAPO-AT's audio-ablated pass, relevance-masked
loss and attention loss, and verl's reference policy with a KL loss. Its training rows all require audio, so every
step exercises MAPO-AT (a step without audio has no attention loss to reduce), and each batch is split over the two
ranks, so rank shards differ. At world size 2 the ``hf`` rollout runs one server for both ranks
(``tensor_model_parallel_size=2``), which gives the requests the seeds of world size 1: the two runs roll out the
same responses, and every difference comes from the ranks. The update is plain SGD, so weights differ only by float
rounding of the gradients (AdamW divides a near-zero gradient by its own magnitude, which turns rounding noise into
a full step).

Runs (about a minute each): the recipe at world size 1 and 2, the world-size-2 run resumed from its step-1 checkpoint,
and a resume at world size 1 from that checkpoint (stopped). The Qwen3-Omni MoE thinker trains at world size 2 in
tests/trainer/test_main_ppo_cpu.py, verl's vLLM rollout in tests/trainer/test_main_ppo_vllm.py.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import SMALL_BATCH, WS2, actor_weights, assert_mapo_at_steps, e2e_inputs, initial_weights

from verl_modality.trainer.launch import run_main_ppo

pytestmark = pytest.mark.slow

COIN = Path(__file__).with_name("coin_reward.py")
ONE_REPLICA = ["actor_rollout_ref.rollout.tensor_model_parallel_size=2"]  # one hf server for both ranks
RECIPE = [
    *SMALL_BATCH,
    "trainer.total_training_steps=2",
    "trainer.save_freq=1",
    "trainer.test_freq=2",
    "trainer.val_before_train=False",
    "data.curriculum.order=static",
    "algorithm.mapo_at.relevance_mask=true",
    "algorithm.mapo_at.attention_loss=true",
    "+algorithm.mapo_at.eta=1.0",  # a large attention-loss term: a mis-scaled one would show in the weights
    "actor_rollout_ref.actor.policy_loss.loss_mode=mapo_relevance",
    "actor_rollout_ref.actor.use_kl_loss=true",
    "actor_rollout_ref.actor.kl_loss_coef=0.02",
    "actor_rollout_ref.actor.optim.optimizer=SGD",
    "actor_rollout_ref.actor.optim.lr=1.0",
    f"reward.custom_reward_function.path={COIN}",
]
#: verl's statistics of each rank's share of the batch (tokens per rank), and the attention loss's audio-mass
#: diagnostics (a mean over each micro-batch's response tokens, averaged over ranks whose token counts differ):
#: different at another world size by design (measured: audio_mass_mean 1.35e-5 relative apart at step 1)
PER_RANK = ("global_seqlen/", "actor/mapo_at/audio_mass_")
#: computed by the trainer from the rollouts and rewards alone: equal to the last bit when the rollouts are
DRIVER_SIDE = ("mapo/", "curriculum/", "streams/", "pg_var/", "val-core/tag/", "val-aux/")
#: measured: 7.5e-9 apart after two SGD steps that moved the weights by 2.1e-2 (ratio 3.6e-7); with the attention
#: loss scaled by the rank's share of the batch alone (no data-parallel size: a per-rank mean), 9.1e-4 apart after
#: one step that moved them by 1.0e-2 (ratio 0.09)
WEIGHT_TOLERANCE = 1e-5


def _comparable(m: dict) -> dict:
    return {
        k: v
        for k, v in m.items()
        if not (k.startswith(("timing", "time", "perf/")) or "memory" in k or "throughput" in k)
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("dp_inputs")
    make_demo_data(root / "data", seed=0, n_train=28, n_test=7)
    rows = pd.read_parquet(root / "data" / "train.parquet")
    rows[rows["modality_tag"].str.contains("A")].to_parquet(root / "data" / "train_audio.parquet")
    return {"model": Path(tiny_model_dir), "data": root / "data"}


def _run(work: Path, inputs: dict, extra: list[str], config: str = "mapo_cpu_demo", ok: bool = True):
    overrides = [
        *e2e_inputs(inputs["model"], inputs["data"], work),
        *RECIPE,
        f"trainer.rollout_data_dir={work / 'rollouts'}",
        *extra,
    ]
    overrides = [o for o in overrides if not o.startswith("data.train_files=")]
    overrides.append(f"data.train_files={inputs['data'] / 'train_audio.parquet'}")
    result = run_main_ppo(config, work, overrides, timeout=900)
    if ok:
        assert result.returncode == 0, result.log_tail(80)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inputs):
    root = tmp_path_factory.mktemp("dp_runs")
    return {1: _run(root / "ws1", inputs, []), 2: _run(root / "ws2", inputs, [*WS2, *ONE_REPLICA])}


def _assert_same_step(a: dict, b: dict, step: int) -> None:
    """One step's metrics of two runs that rolled out the same responses: the trainer's own values equal to the last
    bit, actor-side values (rank shards, micro-batches and rows summed in another order) up to float rounding, verl's
    per-rank statistics skipped."""
    assert sorted(a) == sorted(b), step
    for key in a:
        if key.startswith(PER_RANK):
            continue
        if key.startswith(DRIVER_SIDE):  # tags, counts, advantages' statistics, weights, curriculum, validation
            assert a[key] == b[key], (step, key)
        else:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=2e-6), (step, key)


def _rollouts(work: Path, step: int) -> list[tuple]:
    """verl's dump of a step's trajectories (input, output, score), in a fixed order (uids are random)."""
    rows = [json.loads(line) for line in (work / "rollouts" / f"{step}.jsonl").read_text().splitlines()]
    return sorted((r["input"], r["output"], r["score"]) for r in rows)


def _weights_apart(a: Path, b: Path, base: dict) -> tuple[float, float]:
    wa, wb = actor_weights(a), actor_weights(b)
    assert set(wa) == set(wb) == set(base)
    apart = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    moved = max(float((wa[k] - base[k]).abs().max()) for k in wa)
    return apart, moved


def test_world_size_2_gives_world_size_1s_rollouts_metrics_state_and_weights(runs, inputs):
    one, two = runs[1], runs[2]
    assert sorted((two.work_dir / "ckpt" / "global_step_2" / "actor").glob("model_world_size_2_rank_*.pt"))
    s1, s2 = one.steps(), two.steps()
    assert sorted(s1) == sorted(s2) == [1, 2]
    assert_mapo_at_steps(s1)
    assert_mapo_at_steps(s2)
    for step in (1, 2):
        assert _rollouts(one.work_dir, step) == _rollouts(two.work_dir, step)  # same prompts, responses, rewards
        a = _comparable(s1[step])
        _assert_same_step(a, _comparable(s2[step]), step)
        assert a["mapo_at/audio_fraction"] == 1.0 and a["actor/mapo_at/loss"] > 0  # MAPO-AT acted on every sample
        assert a["actor/kl_loss"] >= 0 and (step == 1) == (a["actor/kl_loss"] == 0)  # the reference ran
        tags = {k.split("/")[1] for k in a if k.startswith("mapo/")}
        assert len(tags) == 1 and "A" in next(iter(tags))  # one tag per batch, each with audio
    states = [
        json.loads((r.work_dir / "ckpt" / "global_step_2" / "verl_modality_state.json").read_text())
        for r in runs.values()
    ]
    assert states[0] == states[1] and states[0]["curriculum"]["steps"] == 2
    base = initial_weights(inputs["model"])
    for step in (1, 2):
        apart, moved = _weights_apart(
            one.work_dir / "ckpt" / f"global_step_{step}", two.work_dir / "ckpt" / f"global_step_{step}", base
        )
        assert moved > 1e-3 and apart <= WEIGHT_TOLERANCE * moved, (step, apart, moved)


def test_world_size_2_resumes_exactly(runs, inputs, tmp_path):
    """Weights, optimizer, curriculum, adaptive weights and verl's sampler position all come back at world size 2."""
    two = runs[2]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two.work_dir / "ckpt" / "global_step_1", ckpt / "global_step_1")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("1")
    resumed = _run(tmp_path, inputs, [*WS2, *ONE_REPLICA, "trainer.resume_mode=auto"])
    assert sorted(resumed.steps()) == [2]
    assert _rollouts(resumed.work_dir, 2) == _rollouts(two.work_dir, 2)
    _assert_same_step(_comparable(two.steps()[2]), _comparable(resumed.steps()[2]), 2)
    state = "global_step_2/verl_modality_state.json"
    assert json.loads((ckpt / state).read_text()) == json.loads((two.work_dir / "ckpt" / state).read_text())
    wa, wb = actor_weights(two.work_dir / "ckpt" / "global_step_2"), actor_weights(ckpt / "global_step_2")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6  # rows summed in another order


def test_resume_at_another_world_size_stops_at_once_naming_both(runs, inputs, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(runs[2].work_dir / "ckpt" / "global_step_1", ckpt / "global_step_1")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("1")
    result = _run(tmp_path, inputs, ["trainer.resume_mode=auto"], ok=False)
    assert result.returncode != 0
    log = result.log_path.read_text()
    assert "saved at world size 2, but this run has world size 1" in log, result.log_tail(40)
    assert not result.steps()  # no step ran


def test_a_world_size_2_checkpoint_exports_to_a_model_folder_that_eval_loads(runs, inputs, tmp_path):
    from verl_modality.models.omni import load_thinker

    step = runs[2].work_dir / "ckpt" / "global_step_2"
    cli = [sys.executable, "-m", "verl_modality.cli"]
    out = tmp_path / "model"
    done = subprocess.run(
        [*cli, "export", "--checkpoint", str(step), "--base", str(inputs["model"]), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "world size 2" in done.stdout
    trained = actor_weights(step)
    exported = dict(load_thinker(out).state_dict())
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    results = tmp_path / "results.jsonl"
    done = subprocess.run(
        [*cli, "eval", "--model", str(out), "--data", str(inputs["data"] / "test.parquet"), "--out", str(results),
         "--k", "1", "--limit", "3", "--max-response-length", "8", "--backend", "hf", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(results.read_text().splitlines()) == 3
