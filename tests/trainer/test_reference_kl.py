"""verl's reference policy and KL loss on the CPU, against a hand computation on one batch.

The reference is built as verl builds it (a forward-only FSDP2 engine, which verl shards with CPU offload; pinned
memory would need CUDA, the ``cpu`` platform's registry entry unpins it). The actor takes one update away from the
reference, then verl's KL loss on the same batch must equal k3 = exp(r - l) - (r - l) - 1 of the actor's and the
reference's log-probs, averaged over the response tokens (verl's ``token-mean``), computed here by hand. End to end
(``main_ppo`` with ``use_kl_loss`` at world size 1 and 2) in tests/trainer/test_data_parallel.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import mapo_at_batch

pytestmark = pytest.mark.slow

KL = ["actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.1"]


def test_kl_loss_equals_the_hand_computed_k3_against_the_reference(tmp_path, tiny_model_dir):
    from verl_modality.trainer.actor_check import grpo_advantages
    from verl_modality.trainer.local_actor import LocalActor

    setup = mapo_at_batch(tmp_path, tiny_model_dir)
    batch = setup["batch"]
    mask = batch["response_mask"].bool()
    uids = np.array([f"p{i // 2}" for i in range(len(setup["scores"]))], dtype=object)
    advantages = grpo_advantages(setup["scores"], batch["response_mask"], uids)

    ref = LocalActor.create(tiny_model_dir, mini_batch_size=8, micro_batch_size=8, overrides=[
        "actor_rollout_ref.actor.fsdp_config.forward_only=True",  # how verl builds its reference engine
    ])  # fmt: skip
    assert ref.worker.engine.engine_config.forward_only
    ref_log_prob = ref.compute_log_prob(batch)["log_probs"]

    actor = LocalActor.create(tiny_model_dir, mini_batch_size=8, micro_batch_size=8, lr=1e-2, overrides=KL)
    assert actor.actor_config.kl_loss_type == "low_var_kl" and actor.actor_config.loss_agg_mode == "token-mean"

    def update() -> tuple[dict, torch.Tensor]:
        step = batch.clone()
        log_prob = actor.compute_log_prob(batch)["log_probs"]
        step["old_log_probs"], step["advantages"], step["ref_log_prob"] = log_prob, advantages, ref_log_prob
        return actor.update(step), log_prob

    first, log_prob = update()
    assert torch.equal(log_prob[mask], ref_log_prob[mask])  # same weights, same computation
    assert first["kl_loss"][0] == 0.0
    second, log_prob = update()  # one update away from the reference
    diff = (ref_log_prob - log_prob)[mask].double()
    hand = float((diff.exp() - diff - 1).mean())
    assert hand > 1e-6 and math.isclose(second["kl_loss"][0], hand, rel_tol=1e-4), (second["kl_loss"], hand)
