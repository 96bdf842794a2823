"""Small helpers shared by tests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: MMAU test-mini metadata vendored with its licence (tests/fixtures/mmau/README.md); tests that need it fail without it
MMAU_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mmau" / "mmau-test-mini.json"


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (own verl import, own platform choice); raises with its stderr on failure."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    for key, value in list(full_env.items()):
        if value is None:
            full_env.pop(key)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_json(code: str, env: dict[str, str] | None = None, timeout: int = 300):
    """Run ``code`` that prints one JSON document on its last stdout line; return it parsed."""
    out = run_python(code, env=env, timeout=timeout).stdout.strip().splitlines()
    return json.loads(out[-1])


def actor_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    """The actor's weights in a verl checkpoint folder ``global_step_N`` (one rank), as full tensors."""
    from verl_modality.models.checkpoint import load_sharded_state

    return load_sharded_state(step_dir / "actor")


def initial_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The thinker's weights of a full Omni checkpoint, under the actor's (unprefixed) names."""
    from safetensors.torch import load_file

    out = {}
    for f in model_dir.glob("*.safetensors"):
        for k, v in load_file(f).items():
            if k.startswith("thinker."):
                out[k[len("thinker.") :]] = v
    return out


def assert_streams_shown(m: dict, tags: set[str], exact: bool) -> None:
    """The rollout's prompt ids held audio / video tokens exactly for the tags that require them (``exact``), or for
    every tag (``full``, every demo record has all streams)."""
    for tag in tags:
        assert m[f"streams/{tag}/prompt_tokens"] > 0
        assert (m[f"streams/{tag}/audio_tokens"] > 0) == ("A" in tag or not exact), (tag, m)
        assert (m[f"streams/{tag}/video_tokens"] > 0) == ("V" in tag or not exact), (tag, m)


#: verl's main_ppo at the e2e tests' size: 4 prompts x 4 responses per step, one mini-batch, one micro-batch.
SMALL_BATCH = [
    "data.train_batch_size=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.rollout.n=4",
]
#: verl's main_ppo at data-parallel world size 2 on the CPU: two FSDP2 ranks (Ray's logical GPUs, one per rank).
WS2 = ["trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_gpus=2"]
#: Two steps of MAPO-AT: the relevance-masked loss from the audio-ablated pass, and the attention loss.
MAPO_AT_TWO_STEPS = [
    "trainer.total_training_steps=2",
    "trainer.val_before_train=False",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
    "algorithm.mapo_at.relevance_mask=true",
    "algorithm.mapo_at.attention_loss=true",
    "actor_rollout_ref.actor.policy_loss.loss_mode=mapo_relevance",
]


# verl's vLLM server masks the vocabulary's out-of-tokenizer tail and the placeholder tokens before sampling, so its
# log-probs are normalised over fewer tokens than the actor's: on the random tiny model (8 tail rows + 5 placeholders
# of 1,024, nearly uniform) every rollout log-prob sits about log(1024 / 1011) = 0.0128 above the actor's. The checks
# are therefore on agreement up to that shift. Measured with synced weights: probability correlation 0.999995, spread
# of the per-sequence log-ppl shift 5e-4. With the server's weights frozen after the first sync (one and two updates
# behind at steps 2 and 3), in two runs: correlation 0.75 to 0.93, spread 0.043 to 0.059.
MIN_PROB_CORR = 0.9999
MAX_SHIFT_SPREAD = 5e-3
MAX_SHIFT = 0.02
# Qwen3-Omni's MoE thinker (6 masked placeholders: shift log(1024 / 1018) = 0.0059) agrees less tightly: expert outputs
# are summed in another order and a near-tie in the router can pick another expert. Measured with synced weights
# (2 steps): correlation 0.99970 and 0.99980, spread 0.0045 and 0.0019, largest probability difference 3.7e-5. The
# server starts from random weights, so a sync that loaded nothing would leave the correlation near 0.
MOE_MIN_PROB_CORR = 0.999
MOE_MAX_SHIFT_SPREAD = 1e-2


def assert_rollout_matches_actor(
    m: dict, step: int, min_corr: float = MIN_PROB_CORR, max_spread: float = MAX_SHIFT_SPREAD
) -> None:
    """verl's vLLM rollout scored as the actor on this step (metrics ``m``), up to the masked-vocabulary shift."""
    corr = m["training/rollout_actor_probs_pearson_corr"]
    spread = m["rollout_corr/log_ppl_diff_max"] - m["rollout_corr/log_ppl_diff_min"]
    assert corr > min_corr, (step, corr)
    assert spread < max_spread, (step, spread)
    assert 0 <= m["rollout_corr/log_ppl_diff"] < MAX_SHIFT, (step, m["rollout_corr/log_ppl_diff"])


def e2e_inputs(model: Path, data: Path, work_dir: Path) -> list[str]:
    """Overrides pointing the demo recipe at a model, a demo-data folder and a checkpoint folder."""
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"trainer.default_local_dir={work_dir / 'ckpt'}",
    ]


def assert_mapo_at_steps(steps: dict, n: int = 2) -> None:
    """MAPO-AT's metrics on steps 1..n: the audio-ablated pass ran, and the attention loss inside the actor's update."""
    for step in range(1, n + 1):
        m = steps[step]
        for key in ("dh_mean", "dh_p10", "dh_p50", "dh_p90", "audio_fraction"):
            assert f"mapo_at/{key}" in m, (step, key)
        assert math.isfinite(m["actor/pg_loss"]), step
        assert 0 <= m["mapo_at/audio_fraction"] <= 1
        if m["mapo_at/audio_fraction"] > 0:  # removing the audio changes the entropies of those responses
            assert m["mapo_at/dh_abs_mean"] > 0 and m["mapo_at/mask_entropy"] > 0
            # the attention loss ran inside the actor's update, on the captured q/k of the last layers
            assert math.isfinite(m["actor/mapo_at/loss"]) and m["actor/mapo_at/loss"] >= 0
            assert 0 < m["actor/mapo_at/audio_mass_mean"] <= 1
    assert any(steps[s]["mapo_at/audio_fraction"] > 0 for s in range(1, n + 1))


def mapo_at_batch(root: Path, model_dir: Path) -> dict:
    """An actor batch of 4 demo prompts (audio and video) x 2 responses of different lengths (right and wrong
    answer), with MAPO-AT's per-token fields as ModalityTrainerSync writes them (entropy differences random)."""
    import torch

    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.models.omni_inputs import build_actor_batch
    from verl_modality.trainer.actor_check import answer_response, encode_row, load_rows

    make_demo_data(root / "data", seed=0, n_train=14, n_test=0, progress=False)
    rows, processor, tokenizer = load_rows(root / "data" / "train.parquet", model_dir, 4)
    filler = tokenizer.encode(" Let me listen and look again.", add_special_tokens=False)
    prompts, responses, scores = [], [], []
    for i, row in enumerate(rows):
        encoded = encode_row(row, processor)
        wrong = next(c for c in "ABCD" if c != row["answer"])
        for j, letter in enumerate((row["answer"], wrong)):
            prompts.append(encoded)
            # responses of different lengths, so the padded layout really pads (left prompts, right responses)
            responses.append(filler * ((i + j) % 3) + answer_response(tokenizer, letter))
            scores.append(float(j == 0))
    batch = build_actor_batch(processor, prompts, responses, pad_token_id=int(tokenizer.pad_token_id))
    mask = batch["response_mask"].float()
    g = torch.Generator().manual_seed(0)
    score = torch.tensor(scores)
    # MAPO-AT's per-token fields, as ModalityTrainerSync writes them (entropy differences here random)
    batch["mapo_dh"] = torch.randn(mask.shape, generator=g) * mask
    batch["mapo_attn_content"] = mask.clone()
    batch["mapo_attn_reward"] = score[:, None].expand_as(mask).clone()
    return {"model": model_dir, "batch": batch, "scores": score, "processor": processor, "tokenizer": tokenizer}
