"""LoRA on the Omni thinkers end to end: verl's ``main_ppo`` with ``actor_rollout_ref.model.lora_rank=8``.

Five runs (one to three minutes each): Qwen2.5-Omni with the hf rollout (the server merges the adapters verl sends
into its base weights) for 3 steps with checkpoints at steps 2 and 3, the same run resumed from its step-2
checkpoint, Qwen2.5-Omni with verl's vLLM rollout (unmerged adapters, vLLM's LoRA) for 3 steps, Qwen3-Omni MAPO-AT
at world size 2 with the hf rollout, and Qwen3-Omni with the vLLM rollout, which gets merged weights (vLLM 0.24 serves
no adapters on that thinker). Every run checks that only the adapters changed and that the rollout scores as the
adapted actor after the updates (a rollout a sync behind, or one missing some adapters, does not: docs/lora.md).
"""

import subprocess
import sys
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
    e2e_inputs,
    initial_weights,
)

from verl_modality.models.lora import (
    ENCODERS,
    LANGUAGE_MODEL_LINEAR,
    adapter_pairs,
    base_name,
    is_adapter_name,
)
from verl_modality.trainer.launch import run_main_ppo

pytestmark = pytest.mark.slow

RANK, ALPHA = 8, 16
# lr 1e-2 (the demo's full fine-tuning uses 1e-3): from lora_B = 0, two or three steps at 1e-3 moved the tiny models'
# sampled-token probabilities (near-uniform, about 1e-3 each) by only 3e-5 to 6e-5, at 1e-2 by 2.4e-4 to 5e-4: the size
# of the error a rollout without the adapters would make, which the checks below must stand well above
LORA = [
    f"actor_rollout_ref.model.lora_rank={RANK}",
    f"actor_rollout_ref.model.lora_alpha={ALPHA}",
    "actor_rollout_ref.actor.optim.lr=1e-2",
]
STEPS = 3
MERGED_TOLERANCE = 2e-5  # rollout_probs_diff_max of a rollout serving merged weights (the Qwen3-Omni run)
TIMEOUT_S = 900  # a failed weight sync leaves the trainer waiting forever (normal run: 1 to 3 min)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("lora_data")
    make_demo_data(root / "data", seed=0, n_train=16, n_test=7)
    return root / "data"


def _run(work_dir: Path, model: Path, data: Path, extra: list[str]):
    overrides = [
        *e2e_inputs(model, data, work_dir),
        *SMALL_BATCH,
        *LORA,
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        # rewards with variance on every step, so that every update changes the adapters the next sync must carry
        f"reward.custom_reward_function.path={Path(__file__).with_name('coin_reward.py')}",
        *extra,
    ]
    result = run_main_ppo("mapo_cpu_demo", work_dir, overrides, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.log_tail(80)
    return result


def _assert_only_adapters_changed(step_dir: Path, model: Path) -> dict[str, torch.Tensor]:
    """The checkpoint holds the initial thinker weights bit for bit, plus an adapter pair on exactly the language
    model's linear layers, trained (lora_B starts at zero). Returns the checkpoint's state."""
    import re

    from verl_modality.models.family import require_family
    from verl_modality.models.omni import load_config

    state = actor_weights(step_dir)
    before = require_family(load_config(model), model).module_weights(initial_weights(model))  # experts fused
    base = {base_name(k): v for k, v in state.items() if not is_adapter_name(k)}
    assert set(base) == set(before)
    changed = [k for k in before if not torch.equal(base[k], before[k])]
    assert not changed, changed[:5]
    pairs = adapter_pairs({k: v for k, v in state.items() if is_adapter_name(k)})
    expected = {k.removesuffix(".weight") for k in before if re.fullmatch(LANGUAGE_MODEL_LINEAR, k[: -len(".weight")])}
    assert set(pairs) == expected and not any(re.fullmatch(ENCODERS, m) for m in pairs)
    assert all(a.shape[0] == RANK == b.shape[1] for a, b in pairs.values())
    assert any(b.abs().sum() > 0 for _, b in pairs.values())  # the adapters trained
    return state


def _adapted_actor(state: dict[str, torch.Tensor], model: Path) -> torch.nn.Module:
    """The actor as verl builds it under LoRA (PEFT on the thinker of ``model``), holding a checkpoint's ``state``."""
    from peft import LoraConfig, get_peft_model

    from verl_modality.models.omni import load_thinker

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=LANGUAGE_MODEL_LINEAR, exclude_modules=ENCODERS)
    actor = get_peft_model(load_thinker(model), config)
    missing, unexpected = actor.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    return actor.eval()


def _policy_change(state: dict[str, torch.Tensor], model: Path) -> float:
    """How far the trained adapters moved the policy: the largest change of a sampled token's probability, adapted
    thinker against the base, on random token ids (the scale a rollout without the adapters would be off by)."""
    from verl_modality.models.omni import load_thinker

    base = load_thinker(model).eval()
    adapted = _adapted_actor(state, model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (4, 64), generator=gen)
    with torch.no_grad():
        p0 = torch.softmax(base(input_ids=ids).logits, -1).flatten(0, 1)
        p1 = torch.softmax(adapted(input_ids=ids).logits, -1).flatten(0, 1)
    tokens = torch.multinomial(p1, 1, generator=gen).squeeze(-1)
    rows = torch.arange(tokens.numel())
    return float((p1[rows, tokens] - p0[rows, tokens]).abs().max())


# --------------------------------------------------------------------------------------- Qwen2.5-Omni, hf rollout
@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_model_dir, data):
    work = tmp_path_factory.mktemp("lora_hf")
    return _run(work, Path(tiny_model_dir), data, [f"trainer.total_training_steps={STEPS}", "trainer.save_freq=2"])


def test_hf_rollout_serves_the_adapters_in_step_with_the_actor(hf_run, tiny_model_dir):
    steps = hf_run.steps()
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        # the server merges every sync's adapters into its base weights: its log-probs are the adapted actor's to
        # float precision, which a server one update behind is not after step 1
        assert steps[step]["training/rollout_probs_diff_max"] < 1e-5, (step, steps[step])
        assert steps[step]["actor/grad_norm"] > 0
    state = _assert_only_adapters_changed(hf_run.work_dir / "ckpt" / f"global_step_{STEPS}", Path(tiny_model_dir))
    assert _policy_change(state, Path(tiny_model_dir)) > 1e-4  # what a rollout without the adapters would be off by


def test_resume_restores_adapters_and_optimizer_exactly(hf_run, tiny_model_dir, data, tmp_path):
    import shutil

    ckpt_a = hf_run.work_dir / "ckpt"
    ckpt_b = tmp_path / "ckpt"
    shutil.copytree(ckpt_a / "global_step_2", ckpt_b / "global_step_2")
    (ckpt_b / "latest_checkpointed_iteration.txt").write_text("2")
    extra = [f"trainer.total_training_steps={STEPS}", "trainer.save_freq=2", "trainer.resume_mode=auto"]
    resumed = _run(tmp_path, Path(tiny_model_dir), data, extra)
    assert sorted(resumed.steps()) == [STEPS]
    assert resumed.steps()[STEPS]["training/rollout_probs_diff_max"] < 1e-5
    # Restored adapters reach the rollout (the same responses), and the restored Adam moments give the same update
    # (a fresh optimizer's first step is another): equal up to float summation order, far below one step's change.
    wa = actor_weights(ckpt_a / f"global_step_{STEPS}")
    wb = actor_weights(ckpt_b / f"global_step_{STEPS}")
    w2 = actor_weights(ckpt_a / "global_step_2")
    assert set(wa) == set(wb)
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    moved = max((wa[k] - w2[k]).abs().max().item() for k in wa)
    assert moved > 1e-4 and diff <= 1e-6, (diff, moved)


def test_export_merges_the_adapters_into_a_model_that_eval_loads(hf_run, tiny_model_dir, data, tmp_path):
    from verl_modality.models.omni import load_thinker

    step = hf_run.work_dir / "ckpt" / f"global_step_{STEPS}"
    cli = [sys.executable, "-m", "verl_modality.cli"]
    out = tmp_path / "model"
    done = subprocess.run(
        [*cli, "export", "--checkpoint", str(step), "--base", str(tiny_model_dir), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    actor = _adapted_actor(actor_weights(step), Path(tiny_model_dir))
    merged = load_thinker(out)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.log_softmax(actor(input_ids=ids).logits, -1)
        got = torch.log_softmax(merged.eval()(input_ids=ids).logits, -1)
    assert (want - got).abs().max() < 1e-4
    results = tmp_path / "results.jsonl"
    done = subprocess.run(
        [*cli, "eval", "--model", str(out), "--data", str(data / "test.parquet"), "--out", str(results),
         "--k", "1", "--limit", "3", "--max-response-length", "8", "--backend", "hf", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(results.read_text().splitlines()) == 3


# ------------------------------------------------------------------------------------- Qwen2.5-Omni, vLLM rollout
def test_vllm_rollout_applies_the_adapters_after_every_sync(tmp_path, tiny_model_dir, data):
    """verl sends the base weights once, then only the adapters, which vLLM loads as a LoRA adapter of its thinker;
    two FSDP2 ranks, one vLLM server each. Without the plugin's names for them (and with adapters on the encoders),
    vLLM dropped some or all of them: the probability correlation fell to 0.998 and 0.996 at steps 2 and 3."""
    overrides = ["cpu_rollout=vllm", f"trainer.total_training_steps={STEPS}", *WS2]
    result = _run(tmp_path, Path(tiny_model_dir), data, overrides)
    steps = result.steps()
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert "timing_s/update_weights" in steps[step]
        assert_rollout_matches_actor(steps[step], step)
        assert steps[step]["actor/grad_norm"] > 0


# ------------------------------------------------------------------------------------------------------ Qwen3-Omni
def test_qwen3_omni_mapo_at_with_lora_on_two_ranks(tmp_path, tiny_qwen3_model_dir, data):
    """MAPO-AT (relevance pass through the adapted policy, attention loss through the adapted q/k projections) on the
    MoE thinker, two FSDP2 ranks, one hf rollout server per rank, merged weights (the family's setting)."""
    result = _run(tmp_path, Path(tiny_qwen3_model_dir), data, [*MAPO_AT_TWO_STEPS, *WS2, "trainer.save_freq=2"])
    steps = result.steps()
    assert_mapo_at_steps(steps)
    # Merged weights W + s * B @ A round differently from the adapted forward W x + s * B (A x), and a near-tie in the
    # MoE router can pick another expert: the rollout agrees to 5e-6 to 1.1e-5 (four runs), not to 1e-9 as the served
    # adapters above; the adapters move the policy several times more than the tolerance.
    assert all(steps[s]["training/rollout_probs_diff_max"] < MERGED_TOLERANCE for s in (1, 2)), steps
    state = _assert_only_adapters_changed(result.work_dir / "ckpt" / "global_step_2", Path(tiny_qwen3_model_dir))
    assert _policy_change(state, Path(tiny_qwen3_model_dir)) > 5 * MERGED_TOLERANCE
    # the router and the fused experts stay frozen: only attention projections carry adapters on MoE layers
    assert not any(".mlp.gate." in k or ".experts." in k for k in state if is_adapter_name(k))


def test_qwen3_omni_vllm_rollout_gets_merged_weights(tmp_path, tiny_qwen3_model_dir, data):
    result = _run(tmp_path, Path(tiny_qwen3_model_dir), data, ["cpu_rollout=vllm", "trainer.total_training_steps=2"])
    assert "the rollout gets the actor's merged weights" in result.log_path.read_text(errors="replace")
    steps = result.steps()
    for step in (1, 2):
        assert_rollout_matches_actor(steps[step], step, MOE_MIN_PROB_CORR, MOE_MAX_SHIFT_SPREAD)
        assert steps[step]["actor/grad_norm"] > 0
