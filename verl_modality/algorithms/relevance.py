"""MAPO-AT relevance mask: the policy gradient concentrated on the tokens whose entropy the audio changes most
(docs/method.md §5).

Per response i with T_i tokens and dh_t = H_t(audio removed) - H_t(full input):

* tau_i = tau_base * log(max(T_i, 2));
* w_t = min(C_mask, T_i * softmax_t(|dh_t| / tau_i)), mean 1 over the response before the cap;
* the clipped PPO loss is the weighted mean sum_t w_t l_t / sum_t w_t per sequence.

The loss mode ``mapo_relevance`` (``actor_rollout_ref.actor.policy_loss.loss_mode``) receives w through verl's only
per-token passthrough to registered losses, the ``rollout_is_weights`` field, which the trainer writes, and hands
them to verl's own clipped loss, so every ``loss_agg_mode`` and both clip ratios behave as in verl:

* the sequence-mean modes (``seq-mean-*``): each sequence's weights are rescaled to sum to T_i
  (:func:`normalize_per_sequence`), which gives exactly sum_t w_t l_t / sum_t w_t per sequence;
* ``token-mean``: one weighted mean over the whole global mini-batch, sum w_t l_t / sum w_t over every token of every
  sequence on every rank, as the MAPO release computes its token-level losses. verl's ``token-mean`` divides by the
  mini-batch's token count N; the actor multiplies the weights by N / W first (:func:`global_token_weights`, with W
  the mini-batch's weight sum over all ranks, :mod:`verl_modality.integrations.verl_workers`), which turns verl's
  token mean into that weighted mean, invariant to micro-batching and to the data-parallel size.
"""

from __future__ import annotations

import math
from typing import Any

import torch

LOSS_MODE = "mapo_relevance"


def sequence_temperature(response_mask: torch.Tensor, tau_base: float = 1.0) -> torch.Tensor:
    """tau_i = tau_base * log(max(T_i, 2)). Shapes: ``response_mask`` ``(B, T)`` -> ``(B,)``."""
    lengths = response_mask.to(torch.float64).sum(-1).clamp(min=2.0)
    return (tau_base * torch.log(lengths)).to(torch.float32)


def relevance_weights(
    dh: torch.Tensor, response_mask: torch.Tensor, tau_base: float = 1.0, c_mask: float = 5.0
) -> torch.Tensor:
    """w_t = min(C, T_i softmax_t(|dh_t| / tau_i)) on response tokens, 0 elsewhere.

    Shapes: ``dh``, ``response_mask`` ``(B, T)`` -> ``(B, T)``. Rows without response tokens get 0.
    """
    if dh.shape != response_mask.shape:
        raise ValueError(f"dh {tuple(dh.shape)} and response_mask {tuple(response_mask.shape)} differ")
    if not torch.isfinite(dh[response_mask.bool()]).all():
        raise ValueError("dh has non-finite values on response tokens")
    mask = response_mask.bool()
    tau = sequence_temperature(mask, tau_base)
    logits = (dh.abs().float() / tau[:, None]).masked_fill(~mask, float("-inf"))
    has_tokens = mask.any(-1, keepdim=True)
    probs = torch.softmax(torch.where(has_tokens, logits, torch.zeros_like(logits)), dim=-1)
    lengths = mask.sum(-1, keepdim=True).float()
    w = torch.minimum(lengths * probs, torch.tensor(float(c_mask)))
    return torch.where(mask, w, torch.zeros_like(w))


def normalize_per_sequence(weights: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Rescale each row so its weights sum to T_i (its token count). Shapes ``(B, T)`` -> ``(B, T)``."""
    mask = response_mask.bool()
    w = torch.where(mask, weights.float(), torch.zeros_like(weights, dtype=torch.float32))
    total = w.sum(-1, keepdim=True)
    lengths = mask.sum(-1, keepdim=True).float()
    return torch.where(total > 0, w * lengths / total.clamp(min=1e-12), torch.zeros_like(w))


def weight_sum(weights: torch.Tensor) -> float:
    """Sum of the weights of a batch: a plain ``(B, T)`` tensor (zeros off the response) or a jagged nested one."""
    values = weights.values() if weights.is_nested else weights
    return float(values.double().sum())


def global_token_weights(weights: torch.Tensor, batch_num_tokens: float, total_weight: float) -> torch.Tensor:
    """w * N / W: the weights that make verl's ``token-mean`` (sum w l / N) the weighted mean sum w l / W of the
    global mini-batch (N tokens, weight sum W, both over all ranks). Shapes: any (plain or nested) -> the same."""
    if not (total_weight > 0 and math.isfinite(total_weight)):
        raise ValueError(f"relevance weights of the mini-batch sum to {total_weight}; expected a positive number")
    return weights * (float(batch_num_tokens) / float(total_weight))


def compute_policy_loss_mapo_relevance(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """verl's clipped PPO loss with per-token relevance weights (given as ``rollout_is_weights``); see the module."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    if rollout_is_weights is None:
        raise ValueError(
            f"policy loss mode {LOSS_MODE!r} needs the per-token relevance weights: set "
            "algorithm.mapo_at.relevance_mask=true so the trainer computes them"
        )
    if loss_agg_mode == "token-mean":
        weights = rollout_is_weights.to(log_prob.dtype)  # already w * N / W (global_token_weights, in the actor)
    else:
        weights = normalize_per_sequence(rollout_is_weights, response_mask).to(log_prob.dtype)
    return compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=weights,
    )


def relevance_metrics(dh: torch.Tensor, weights: torch.Tensor, response_mask: torch.Tensor) -> dict[str, float]:
    """dh mean / quantiles, mean |dh|, mask entropy and the weight share of each sequence's top 10 % tokens.

    Shapes: all ``(B, T)``. The entropy is that of w / sum(w) per sequence, averaged (log T_i for a flat mask).
    """
    mask = response_mask.bool()
    values = dh[mask].float()
    if values.numel() == 0:
        return {}
    q = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9]))
    entropies, top_shares = [], []
    for row in range(weights.shape[0]):
        w = weights[row][mask[row]].float()
        if w.numel() == 0 or float(w.sum()) <= 0:
            continue
        p = w / w.sum()
        entropies.append(float(-(p * torch.log(p.clamp(min=1e-12))).sum()))
        k = max(1, math.ceil(0.1 * w.numel()))
        top_shares.append(float(torch.topk(p, k).values.sum()))
    out = {
        "mapo_at/dh_mean": float(values.mean()),
        "mapo_at/dh_abs_mean": float(values.abs().mean()),
        "mapo_at/dh_p10": float(q[0]),
        "mapo_at/dh_p50": float(q[1]),
        "mapo_at/dh_p90": float(q[2]),
    }
    if entropies:
        out["mapo_at/mask_entropy"] = sum(entropies) / len(entropies)
        out["mapo_at/top10_weight_share"] = sum(top_shares) / len(top_shares)
    return out
