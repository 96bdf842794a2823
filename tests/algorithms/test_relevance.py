"""MAPO-AT relevance mask (docs/method.md §5): weights by hand, and the loss against verl's own clipped PPO loss."""

from __future__ import annotations

import math

import pytest
import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn
from verl.workers.config import ActorConfig, PolicyLossConfig

from verl_modality.algorithms.relevance import (
    LOSS_MODE,
    compute_policy_loss_mapo_relevance,
    global_token_weights,
    normalize_per_sequence,
    relevance_metrics,
    relevance_weights,
    sequence_temperature,
)


def _actor_config(low=0.2, high=0.3):
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=low,
        clip_ratio_high=high,
        policy_loss=PolicyLossConfig(loss_mode=LOSS_MODE),
    )


def test_temperature_scales_with_log_length():
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert sequence_temperature(mask, 2.0).tolist() == pytest.approx(
        [2 * math.log(2), 2 * math.log(2), 2 * math.log(4)]
    )


def test_weights_by_hand_mean_one_and_padding_zero():
    dh = torch.tensor([[0.5, -1.0, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = relevance_weights(dh, mask)
    tau = math.log(3)
    e = [math.exp(abs(x) / tau) for x in (0.5, -1.0, 0.0)]
    expected = [3 * v / sum(e) for v in e] + [0.0]
    assert w[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert float(w[0, :3].mean()) == pytest.approx(1.0)  # mean 1 before the cap (nothing capped here)


def test_cap_respected_and_empty_rows():
    dh = torch.zeros(2, 50)
    dh[0, 7] = 100.0  # one token takes almost all the softmax mass
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1] = 0
    w = relevance_weights(dh, mask, c_mask=5.0)
    assert float(w[0, 7]) == 5.0 and float(w[0].max()) == 5.0
    assert torch.all(w[1] == 0)
    with pytest.raises(ValueError, match="non-finite"):
        relevance_weights(torch.full((1, 3), float("nan")), torch.ones(1, 3))


def _batch(seed=0, b=3, t=6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g)
    new = old + 0.3 * (torch.rand(b, t, generator=g) - 0.5)  # ratios within ~[0.86, 1.16]: both clips active
    adv = torch.randn(b, 1, generator=g).expand(b, t).contiguous()
    mask = torch.ones(b, t)
    mask[1, 4:] = 0
    return old, new, adv, mask


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_all_ones_equals_verls_clipped_loss(mode):
    old, new, adv, mask = _batch()
    cfg = _actor_config()
    ours, _ = compute_policy_loss_mapo_relevance(old, new, adv, mask, mode, cfg, rollout_is_weights=mask.clone())
    verl, _ = compute_policy_loss_vanilla(old, new, adv, mask, mode, cfg)
    assert torch.allclose(ours, verl, atol=1e-7)
    assert get_policy_loss_fn(LOSS_MODE) is compute_policy_loss_mapo_relevance  # registered by the plugin


def test_weighted_sequence_mean_by_hand_with_asymmetric_clip():
    old, new, adv, mask = _batch(seed=1)
    w = relevance_weights(torch.randn(3, 6, generator=torch.Generator().manual_seed(2)), mask)
    low, high = 0.1, 0.4
    loss, _ = compute_policy_loss_mapo_relevance(
        old, new, adv, mask, "seq-mean-token-mean", _actor_config(low, high), w
    )
    ratio = torch.exp(new - old)
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - low, 1 + high))
    per_seq = [(w[i] * per_token[i] * mask[i]).sum() / w[i].sum() for i in range(3)]
    assert float(loss) == pytest.approx(float(torch.stack(per_seq).mean()), rel=1e-5)
    # normalisation: each row sums to its token count
    assert normalize_per_sequence(w, mask).sum(-1).tolist() == pytest.approx(mask.sum(-1).tolist())


def _per_token(old, new, adv, low=0.2, high=0.3):
    ratio = torch.exp(new - old)
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - low, 1 + high))


def test_token_mean_is_one_weighted_mean_over_ranks_and_micro_batches():
    """sum w l / sum w over the global mini-batch (the MAPO release's token-level loss), by hand: 2 ranks x 2
    micro-batches, each through verl's agg_loss with the global token count, summed per rank, averaged over ranks (as
    FSDP averages gradients)."""
    b, t = 8, 12
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(b, t, generator=g)
    new = old + 0.3 * (torch.rand(b, t, generator=g) - 0.5)
    adv = torch.randn(b, 1, generator=g).expand(b, t).contiguous()
    mask = (torch.arange(t)[None, :] < torch.tensor([12, 3, 7, 12, 5, 9, 2, 11])[:, None]).float()
    w = relevance_weights(4.0 * torch.randn(b, t, generator=g), mask, c_mask=2.0)
    assert (w == 2.0).any()  # the cap clips: where the earlier reading differs
    n_tokens, total = float(mask.sum()), float(w.sum())
    want = float((w * _per_token(old, new, adv) * mask).sum() / w.sum())
    cfg = _actor_config()
    cfg.global_batch_info.update(dp_size=2, batch_num_tokens=n_tokens)
    ranks = []
    for rank in (range(0, 4), range(4, 8)):
        rows = list(rank)
        micro = [rows[:1], rows[1:]]  # uneven micro-batches
        loss = 0.0
        for m in micro:
            scaled = global_token_weights(w[m], n_tokens, total)
            part, _ = compute_policy_loss_mapo_relevance(old[m], new[m], adv[m], mask[m], "token-mean", cfg, scaled)
            loss += float(part)
        ranks.append(loss)
    assert sum(ranks) / 2 == pytest.approx(want, rel=1e-5)
    # the earlier reading (each sequence rescaled to sum T_i, then verl's token mean) is another number here
    earlier = float((normalize_per_sequence(w, mask) * _per_token(old, new, adv) * mask).sum() / n_tokens)
    assert abs(earlier - want) > 1e-3


def test_global_token_weights_refuses_a_zero_sum():
    with pytest.raises(ValueError, match="sum to 0.0"):
        global_token_weights(torch.zeros(2, 3), 6, 0.0)


def test_missing_weights_is_an_error():
    old, new, adv, mask = _batch()
    with pytest.raises(ValueError, match="relevance_mask=true"):
        compute_policy_loss_mapo_relevance(old, new, adv, mask, "token-mean", _actor_config())


def test_metrics_flat_and_peaked():
    mask = torch.ones(2, 20)
    flat = relevance_metrics(torch.zeros(2, 20), torch.ones(2, 20), mask)
    assert flat["mapo_at/mask_entropy"] == pytest.approx(math.log(20))
    assert flat["mapo_at/top10_weight_share"] == pytest.approx(2 / 20)
    dh = torch.zeros(2, 20)
    dh[:, 3] = 50.0
    peaked = relevance_metrics(dh, relevance_weights(dh, mask), mask)
    assert peaked["mapo_at/mask_entropy"] < flat["mapo_at/mask_entropy"]
    assert peaked["mapo_at/top10_weight_share"] > 0.2
    assert peaked["mapo_at/dh_p90"] == 0.0 and peaked["mapo_at/dh_mean"] == pytest.approx(2 * 50 / 40)
