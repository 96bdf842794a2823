"""verl's packed layout (``actor_rollout_ref.model.use_remove_padding=true``, what every paper recipe sets) on the CPU.

verl's FSDP engine packs a micro-batch into one row: ``input_ids`` ``(1, nnz)``, ``position_ids`` ``(4, 1, nnz)``,
``attention_mask=None`` (``FSDPEngineWithLMHead.prepare_model_inputs``). verl applies no Omni-specific patch for it
(its ``apply_monkey_patch`` only swaps ``_flash_attention_forward``, unused under sdpa); the thinker's own text model
keeps the sequences apart: with 4-row position ids it hands the text row to ``create_causal_mask``, which finds the
packed sequences where that row restarts (``masking_utils.find_packed_sequence_indices``) and builds a
block-diagonal causal mask for sdpa (only without a KV cache: verl calls the model with ``use_cache=False``). These
tests check that the actor's log-probs, two updates, and the MAPO-AT attention loss give the padded layout's numbers on
prompts with audio and video and responses of different lengths (fp32, measured: log-probs within 5e-7 before and
2.4e-6 after two updates at lr 1e-2, L_attn / audio mass / pg_loss / grad_norm bitwise equal; asserted at 1e-5), and
run verl's ``main_ppo`` with MAPO-AT in the packed layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import MAPO_AT_TWO_STEPS, SMALL_BATCH, assert_mapo_at_steps, e2e_inputs, mapo_at_batch

pytestmark = pytest.mark.slow

TOL = 1e-5  # fp32 CPU: packed and padded differ by float summation order only (measured ~5e-7)
# After the second update (two Adam steps at lr 1e-2, which turn summation-order noise in tiny gradients into full
# steps) the log-probs differ more: measured 5e-6 with L_attn's token_mean reduction, 7e-5 with the per-sequence
# default (a response with few content tokens weighs more); still four orders of magnitude below the policy's move.
TOL_AFTER_TWO_UPDATES = 3e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    return mapo_at_batch(tmp_path_factory.mktemp("packed"), tiny_model_dir)


def _grpo(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    import numpy as np

    from verl_modality.trainer.actor_check import grpo_advantages

    uids = np.array([f"p{i // 2}" for i in range(len(scores))], dtype=object)
    return grpo_advantages(scores, response_mask, uids)


def to_lengths(batch) -> list[int]:
    return batch["attention_mask"].sum(-1).tolist()


def _run_actor(setup: dict, remove_padding: bool) -> dict:
    """log-probs, an L_attn-only update, log-probs, a PPO + L_attn update, log-probs; with what the model saw."""
    from verl.utils import tensordict_utils as tu

    from verl_modality.trainer.local_actor import LocalActor

    batch, processor = setup["batch"], setup["processor"]
    actor = LocalActor.create(
        setup["model"],
        mini_batch_size=8,
        micro_batch_size=4,  # two micro-batches of four sequences
        lr=1e-2,
        overrides=[f"actor_rollout_ref.model.use_remove_padding={remove_padding}"],
    )
    seen: dict = {"inputs": [], "masks": []}

    def model_hook(module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        seen["inputs"].append((tuple(ids.shape), None if mask is None else tuple(mask.shape)))
        seen["inputs"][-1] += (tuple(kwargs["position_ids"].shape),)

    def attn_hook(module, args, kwargs):
        seen["masks"].append(kwargs.get("attention_mask"))

    handles = [
        actor.module.register_forward_pre_hook(model_hook, with_kwargs=True),
        actor.module.model.layers[0].self_attn.register_forward_pre_hook(attn_hook, with_kwargs=True),
    ]
    knob = {
        "layers": [-3, -2, -1],
        "eta": 1.0,
        "kappa": 1.0,
        "tau_base": 1.0,
        "c_mask": 5.0,
        "audio_token_id": int(processor.audio_token_id),
    }
    mask = batch["response_mask"].float()
    adv = _grpo(setup["scores"], batch["response_mask"])
    out: dict = {"log_probs": [], "metrics": []}
    try:
        lp = actor.compute_log_prob(batch)["log_probs"]
        out["log_probs"].append(lp)
        for advantages in (torch.zeros_like(adv), adv):  # first L_attn alone (no policy gradient), then both
            step = batch.clone()
            step["old_log_probs"] = lp
            step["advantages"] = advantages
            step["mapo_attn_adv"] = adv.abs().amax(-1, keepdim=True).expand_as(mask).clone()
            tu.assign_non_tensor(step, mapo_at=knob)
            out["metrics"].append(actor.update(step, nested=True))
            lp = actor.compute_log_prob(batch)["log_probs"]
            out["log_probs"].append(lp)
    finally:
        for h in handles:
            h.remove()
    out["seen"] = seen
    return out


@pytest.fixture(scope="module")
def runs(setup):
    return {rm: _run_actor(setup, rm) for rm in (False, True)}


def test_batch_is_multimodal_and_ragged(setup):
    batch, processor = setup["batch"], setup["processor"]
    ids = batch["input_ids"]
    assert (ids == processor.audio_token_id).any(-1).sum() >= 2
    assert (ids == processor.video_token_id).any(-1).sum() >= 2
    assert len(set(batch["response_mask"].sum(-1).tolist())) == 3
    assert len(set(batch["attention_mask"][:, : batch["prompts"].shape[1]].sum(-1).tolist())) > 1


def test_actor_really_packs_and_masks_block_diagonally(runs, setup):
    packed, padded = runs[True]["seen"], runs[False]["seen"]
    # verl's packed path: one row, no attention mask, multimodal RoPE ids (4, 1, nnz)
    ids_shape, mask_shape, pos_shape = packed["inputs"][0]
    assert ids_shape[0] == 1 and mask_shape is None and pos_shape == (4, 1, ids_shape[1])
    assert padded["inputs"][0][0][0] == 4 and padded["inputs"][0][1] is not None
    # ...and the first decoder layer's sdpa mask, built by transformers from the text row, is block-diagonal
    mask = packed["masks"][0]
    assert mask is not None and mask.dtype == torch.bool and mask.shape[-2:] == (ids_shape[1], ids_shape[1])
    seq = to_lengths(setup["batch"])[:4]  # the first micro-batch
    assert sum(seq) == ids_shape[1]
    bounds = [sum(seq[:i]) for i in range(len(seq) + 1)]
    m = mask[0, 0]
    for i in range(len(seq)):
        a, b = bounds[i], bounds[i + 1]
        block = m[a:b, a:b]
        assert torch.equal(block, torch.ones_like(block).tril())  # causal inside each sequence
        assert not m[a:b, :a].any() and not m[a:b, b:].any()  # nothing across sequences


def test_log_probs_packed_equal_padded(runs, setup):
    mask = setup["batch"]["response_mask"].bool()
    for before_or_after in range(3):  # initial weights, after the L_attn update, after the PPO + L_attn update
        packed = runs[True]["log_probs"][before_or_after][mask]
        padded = runs[False]["log_probs"][before_or_after][mask]
        torch.testing.assert_close(packed, padded, atol=TOL if before_or_after < 2 else TOL_AFTER_TWO_UPDATES, rtol=0)
    # the updates moved the policy far more than the layouts differ
    moved = (runs[True]["log_probs"][2] - runs[True]["log_probs"][0])[mask].abs().max()
    assert moved > 1e-2


def test_attention_loss_and_update_packed_equal_padded(runs):
    for step, (packed, padded) in enumerate(zip(runs[True]["metrics"], runs[False]["metrics"], strict=True)):
        assert len(packed["mapo_at/loss"]) == 2  # one value per micro-batch
        for key in ("mapo_at/loss", "mapo_at/audio_mass_mean", "mapo_at/audio_mass_first_third", "grad_norm"):
            a, b = torch.tensor(packed[key], dtype=torch.float64), torch.tensor(padded[key], dtype=torch.float64)
            assert torch.isfinite(a).all() and (a > 0).all(), (step, key, a)
            torch.testing.assert_close(a, b, rtol=TOL, atol=1e-7, msg=f"step {step} {key}")
        assert packed["mapo_at/content_tokens"] == padded["mapo_at/content_tokens"]
        if step == 0:  # no policy gradient: the whole gradient is eta * L_attn's
            assert packed["actor/pg_loss"] == [0.0] and packed["grad_norm"][0] > 0
        else:
            torch.testing.assert_close(
                torch.tensor(packed["actor/pg_loss"]), torch.tensor(padded["actor/pg_loss"]), rtol=TOL, atol=1e-7
            )


def test_without_the_text_row_packed_sequences_leak(setup):
    """What makes the packed layout correct: the 4th (text) position row, and no KV cache. With only the 3 mRoPE rows,
    or with ``use_cache`` on (transformers only looks for packed sequences without ``past_key_values``), the thinker
    builds a plain causal mask and the second sequence attends to the first."""
    from verl.utils.model import extract_multi_modal_inputs

    from verl_modality.models.omni import load_thinker

    batch = setup["batch"]
    model = load_thinker(str(setup["model"])).eval()
    rows = [0, 2]
    keep = [batch["attention_mask"][i].bool() for i in rows]
    ids = torch.cat([batch["input_ids"][i][k] for i, k in zip(rows, keep, strict=True)])[None]
    pos = torch.cat([batch["position_ids"][i][:, k] for i, k in zip(rows, keep, strict=True)], -1)[:, None]
    mm = extract_multi_modal_inputs([batch["multi_modal_inputs"][i] for i in rows])
    n0 = int(keep[0].sum())
    alone_mm = extract_multi_modal_inputs([batch["multi_modal_inputs"][rows[1]]])
    with torch.no_grad():  # use_cache=False as verl's engine calls it: with a cache transformers never packs
        alone = model(input_ids=ids[:, n0:], position_ids=pos[:, :, n0:], use_cache=False, **alone_mm).logits
        packed = model(input_ids=ids, position_ids=pos, use_cache=False, **mm).logits
        leaky = model(input_ids=ids, position_ids=pos[1:], use_cache=False, **mm).logits
        cached = model(input_ids=ids, position_ids=pos, **mm).logits
    torch.testing.assert_close(packed[:, n0:], alone, atol=TOL, rtol=0)
    assert (leaky[:, n0:] - alone).abs().max() > 1e-3
    assert (cached[:, n0:] - alone).abs().max() > 1e-3


def test_main_ppo_mapo_at_with_remove_padding(tmp_path, tiny_model_dir):
    """verl's main_ppo, MAPO-AT (relevance mask + attention loss) with the packed layout, two steps."""
    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.trainer.launch import run_main_ppo

    data = tmp_path / "data"
    make_demo_data(data, seed=0, n_train=16, n_test=7, progress=False)
    overrides = [
        *e2e_inputs(Path(tiny_model_dir), data, tmp_path),
        *SMALL_BATCH,
        *MAPO_AT_TWO_STEPS,
        "actor_rollout_ref.model.use_remove_padding=true",
    ]
    result = run_main_ppo("mapo_cpu_demo", tmp_path, overrides, timeout=600)
    assert result.returncode == 0, result.log_tail(80)
    # the actor's engine took the packed path: verl prints this only with use_remove_padding (or Ulysses SP)
    assert "Monkey patch _flash_attention_forward" in result.log_path.read_text()
    steps = result.steps()
    for step in (1, 2):
        # the hf rollout's probabilities (transformers generate, one sequence, KV cache) equal the packed actor's
        # recomputation (measured ~1e-9)
        assert steps[step]["training/rollout_probs_diff_max"] < 1e-6, steps[step]["training/rollout_probs_diff_max"]
    assert_mapo_at_steps(steps)
    assert any(steps[s]["mapo_at/audio_fraction"] > 0 and steps[s]["actor/mapo_at/loss"] > 0 for s in (1, 2))
    assert any(steps[s]["actor/grad_norm"] > 0 for s in (1, 2))
