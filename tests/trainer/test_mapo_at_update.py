"""MAPO-AT's two losses reach verl's actor update: on one batch, from the same weights, one actor step each.

* relevance mask: loss mode ``mapo_relevance`` with non-uniform relevance weights moves the policy differently from
  verl's ``vanilla`` loss, and with uniform weights (the mask off) gives verl's update;
* attention loss: eta > 0 moves the policy differently from no attention loss, and eta = 0 gives verl's update.

Measured (lr 1e-2, one update of 8 responses): max |d log-prob| against verl's update 0.61 with the relevance mask,
0.12 with eta = 1; exactly 0 with uniform weights and with eta = 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import mapo_at_batch

pytestmark = pytest.mark.slow

SAME = 1e-6  # fp32 CPU, same computation in a different wrapper
MOVED = 1e-3  # lr 1e-2 on the tiny thinker: a loss that reaches the gradient moves log-probs by far more


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    from verl_modality.trainer.actor_check import grpo_advantages

    out = mapo_at_batch(tmp_path_factory.mktemp("mapo_at_update"), tiny_model_dir)
    uids = np.array([f"p{i // 2}" for i in range(len(out["scores"]))], dtype=object)
    out["adv"] = grpo_advantages(out["scores"], out["batch"]["response_mask"], uids)
    return out


def _step(
    setup: dict,
    loss_mode: str = "vanilla",
    weights=None,
    eta: float | None = None,
    loss_options: dict | None = None,
    adv: torch.Tensor | None = None,
    micro_batch_size: int = 8,
    overrides: tuple[str, ...] = (),
) -> torch.Tensor:
    """One actor update of a fresh actor on the batch; the response log-probs after it."""
    from verl.utils import tensordict_utils as tu

    from verl_modality.trainer.local_actor import LocalActor

    batch = setup["batch"]
    actor = LocalActor.create(
        setup["model"],
        mini_batch_size=8,
        micro_batch_size=micro_batch_size,
        lr=1e-2,
        overrides=[f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}", *overrides],
    )
    step = batch.clone()
    step["old_log_probs"] = actor.compute_log_prob(batch)["log_probs"]
    step["advantages"] = setup["adv"] if adv is None else adv
    if weights is not None:
        step["rollout_is_weights"] = weights
        tu.assign_non_tensor(step, mapo_relevance=True)  # as MapoATPass.update_settings flags the update
    if eta is not None:
        mask = batch["response_mask"].float()
        step["mapo_attn_adv"] = setup["adv"].abs().amax(-1, keepdim=True).expand_as(mask).clone()
        knob = {"layers": [-3, -2, -1], "eta": eta, "kappa": 1.0, "tau_base": 1.0, "c_mask": 5.0}
        if loss_options is not None:
            knob["loss_options"] = loss_options  # as MapoATPass.actor_settings writes them
        tu.assign_non_tensor(step, mapo_at={**knob, "audio_token_id": int(setup["processor"].audio_token_id)})
    metrics = actor.update(step, nested=True)  # the layout verl's trainer hands the actor
    if eta:
        assert metrics["mapo_at/loss"][0] > 0  # the attention loss was computed inside the update
    mask = batch["response_mask"].bool()
    return actor.compute_log_prob(batch)["log_probs"][mask]


@pytest.fixture(scope="module")
def vanilla(setup):
    return _step(setup)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_relevance_mask_changes_the_update(setup, vanilla):
    from verl_modality.algorithms.relevance import relevance_weights

    mask = setup["batch"]["response_mask"].float()
    weights = relevance_weights(setup["batch"]["mapo_dh"], mask)
    assert weights[mask.bool()].std() > 0.1  # really non-uniform
    masked = _step(setup, "mapo_relevance", weights=weights)
    flat = _step(setup, "mapo_relevance", weights=mask.clone())
    print(
        f"\n[mapo-at] relevance mask: max |d log-prob| vs vanilla {_max_diff(masked, vanilla):.2e}, flat {_max_diff(flat, vanilla):.2e}"
    )
    assert _max_diff(masked, vanilla) > MOVED
    assert _max_diff(flat, vanilla) < SAME  # uniform weights: verl's clipped loss exactly


def test_token_mean_relevance_is_the_weighted_mean_of_the_mini_batch(setup, vanilla):
    """Weights constant per sequence (s_i) make sum w l / sum w a plain token mean with advantages A_i s_i N / W,
    so the relevance update (4 micro-batches) equals verl's vanilla update (1 micro-batch) with those advantages.
    The earlier per-sequence rescaling would have erased s_i and given verl's update with A_i itself."""
    mask = setup["batch"]["response_mask"].float()
    s = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25, 1.5, 4.0, 1.0])[: mask.shape[0]]
    weights = mask * s[:, None]
    scale = float(mask.sum()) / float(weights.sum())
    sgd = ("actor_rollout_ref.actor.optim.optimizer=SGD",)  # linear in the gradient: no Adam noise amplification
    masked = _step(setup, "mapo_relevance", weights=weights, micro_batch_size=2, overrides=sgd)
    scaled = _step(setup, adv=setup["adv"] * s[:, None] * scale, overrides=sgd)
    plain = _step(setup, overrides=sgd)
    print(f"\n[mapo-at] token-mean weighted mean: {_max_diff(masked, scaled):.2e} vs {_max_diff(masked, plain):.2e}")
    assert _max_diff(masked, scaled) < 1e-5
    assert _max_diff(masked, plain) > 1e-4


def test_attention_loss_changes_the_update(setup, vanilla):
    with_loss = _step(setup, eta=1.0)
    without = _step(setup, eta=0.0)
    print(
        f"\n[mapo-at] eta 1: max |d log-prob| vs vanilla {_max_diff(with_loss, vanilla):.2e}, eta 0 {_max_diff(without, vanilla):.2e}"
    )
    assert _max_diff(with_loss, vanilla) > MOVED
    assert _max_diff(without, vanilla) < SAME  # eta = 0: the capture runs, the loss adds nothing


def test_attention_loss_options_reach_the_loss(setup, vanilla):
    other = {"advantage_floor_eps": 0.0, "reduction": "token_mean", "content_fallback": "skip"}
    assert _max_diff(_step(setup, eta=1.0, loss_options=other), vanilla) > MOVED
    with pytest.raises(ValueError, match="reduction='bogus'"):  # the actor's loss got the option
        _step(setup, eta=1.0, loss_options={"reduction": "bogus"})
