"""MAPO-AT attention loss (docs/method.md §5): token weights, sequence gate, loss on the audio attention mass.

Pure tensor math: no model, no verl. ``B`` responses of ``T`` tokens; the audio attention mass ``a`` of each token
comes from :mod:`verl_modality.algorithms.audio_mass`, the content tokens from
:mod:`verl_modality.models.content_tokens`.

The loss (per response ``i`` with ``T_i`` tokens and ``N_i`` content tokens ``c_i``, ``B`` responses):

    S_i    = g_i sum_{t in c_i} (t / T_i)^kappa v_t (-log(a_t + eps))
    L_attn = (1 / B) sum_i S_i / N_i                 (``seq_mean``, the default: the release's default loss type)
    L_attn = sum_i S_i / sum_i N_i                   (``token_mean``: one division by the batch's content tokens)

with the complementary weights ``v_t`` (:func:`complementary_weights`) and the gate ``g_i`` (:func:`sequence_gate`,
which by default raises ``|A_i|`` of a failed response to at least 0.02). A response without content tokens counts
every one of its tokens as content by default (:func:`effective_content_mask`); with ``content_fallback="skip"`` it
adds nothing (``S_i = 0``; under ``seq_mean`` it still counts in ``B``).
"""

from __future__ import annotations

import math

import torch

from verl_modality.algorithms.audio_mass import accumulation_dtype
from verl_modality.algorithms.config import ATTN_REDUCTIONS, CONTENT_FALLBACKS

__all__ = [
    "attention_loss",
    "complementary_weights",
    "effective_content_mask",
    "sequence_gate",
    "sequence_tau",
    "task_failed",
    "temporal_weights",
]


# --------------------------------------------------------------------------------------------------------------------
# Token weights
# --------------------------------------------------------------------------------------------------------------------
def temporal_weights(response_mask: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """``(B, T)`` float: ``(t / T_i) ** kappa`` at the ``t``-th response token (``t = 1 .. T_i``), 0 elsewhere.

    ``response_mask`` ``(B, T)``: 1 on response tokens; ``t`` counts the masked tokens of the row, ``T_i`` their total.
    """
    m = response_mask.float()
    t = m.cumsum(dim=-1)
    n = m.sum(dim=-1, keepdim=True).clamp(min=1.0)
    return (t / n).pow(kappa) * m


def sequence_tau(response_mask: torch.Tensor, tau_base: float = 1.0) -> torch.Tensor:
    """``(B,)``: ``tau_i = tau_base * log(max(T_i, 2))`` (docs/method.md §5)."""
    n = response_mask.float().sum(dim=-1)
    return tau_base * torch.log(n.clamp(min=2.0))


def complementary_weights(
    dh: torch.Tensor, content_mask: torch.Tensor, tau: torch.Tensor | float, c_mask: float = 5.0
) -> torch.Tensor:
    """``(B, T)``: ``v_t = min(C, N_i * softmax_{content t}(-|dh_t| / tau_i))`` on content tokens, 0 elsewhere.

    Tokens whose entropy barely moves when the audio is removed (small ``|dh|``) get large weights: they are the
    content tokens whose attention to the audio the loss should raise. Before the cap the weights of a sequence have
    mean 1 over its ``N_i`` content tokens.

    Args:
        dh: ``(B, T)`` entropy differences (reference without audio minus policy); no gradient is taken.
        content_mask: bool ``(B, T)``.
        tau: temperature, scalar or ``(B,)``.
        c_mask: the cap ``C``.
    """
    m = content_mask.bool()
    tau_t = torch.as_tensor(tau, dtype=torch.float32, device=dh.device)
    tau_t = tau_t.reshape(-1, 1) if tau_t.dim() else tau_t
    logits = (-dh.detach().float().abs() / tau_t).masked_fill(~m, float("-inf"))
    n = m.sum(dim=-1, keepdim=True).float()
    w = torch.softmax(logits, dim=-1).nan_to_num(0.0) * n  # rows without content tokens: 0
    return w.clamp(max=c_mask) * m


def task_failed(task_reward: torch.Tensor) -> torch.Tensor:
    """Bool ``(B,)``: the response failed its task, i.e. its task reward ``(B,)`` is ``<= 0`` or not finite
    (docs/method.md §5, the release's rule)."""
    r = task_reward.detach().float()
    return ~torch.isfinite(r) | (r <= 0)


def sequence_gate(
    task_reward: torch.Tensor, advantage_abs: torch.Tensor, advantage_floor_eps: float = 0.02
) -> torch.Tensor:
    """``(B,)``: ``g_i = min(3, max(0.1, failed_i) * s_i)`` with ``failed_i`` from :func:`task_failed`.

    ``s_i = |A_i|`` for a successful response and ``max(|A_i|, advantage_floor_eps)`` for a failed one, so a group
    whose responses all fail (every ``A_i = 0``) still gets the attention loss; ``advantage_floor_eps=0`` turns the
    floor off. A non-finite ``|A_i|`` counts as 0 (then floored if failed). Failed responses get the full ``s_i``,
    successful ones a tenth of it.

    Args:
        task_reward: ``(B,)`` task reward of each response.
        advantage_abs: ``(B,)`` advantage of each response (its absolute value is taken); no gradient.
        advantage_floor_eps: the floor, ``>= 0``.
    """
    if not advantage_floor_eps >= 0:
        raise ValueError(f"advantage_floor_eps={advantage_floor_eps!r}: expected a number >= 0")
    failed = task_failed(task_reward)
    adv = advantage_abs.detach().float().abs().to(failed.device)
    adv = torch.where(torch.isfinite(adv), adv, torch.zeros_like(adv))
    scale = torch.where(failed, adv.clamp(min=float(advantage_floor_eps)), adv)
    return torch.clamp(failed.float().clamp(min=0.1) * scale, max=3.0)


def effective_content_mask(
    content_mask: torch.Tensor, response_mask: torch.Tensor, content_fallback: str = "all_tokens"
) -> torch.Tensor:
    """Bool ``(B, T)``: the content tokens L_attn runs over, inside the response.

    ``content_mask`` and ``response_mask`` are ``(B, T)``. A response with no content token takes every one of its
    tokens as content with ``content_fallback="all_tokens"`` (the default, as the release does) and stays empty with
    ``"skip"`` (it then adds nothing to the loss).
    """
    if content_fallback not in CONTENT_FALLBACKS:
        raise ValueError(f"content_fallback={content_fallback!r}: expected one of {CONTENT_FALLBACKS}")
    response = response_mask.bool()
    content = content_mask.bool() & response
    if content_fallback == "all_tokens":
        empty = ~content.any(dim=-1, keepdim=True)
        content = content | (empty & response)
    return content


# --------------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------------
def _third_means(a: torch.Tensor, response_mask: torch.Tensor) -> tuple[float, float]:
    """Mean audio mass over the first / last third of each response, averaged over responses that have one."""
    m = response_mask.float()
    t = m.cumsum(-1)
    n = m.sum(-1, keepdim=True)
    first = (t <= n / 3.0) & (m > 0)
    last = (t > 2.0 * n / 3.0) & (m > 0)

    def mean(sel: torch.Tensor) -> float:
        cnt = sel.sum(-1)
        rows = cnt > 0
        if not bool(rows.any()):
            return float("nan")
        per_row = (a.detach().float() * sel).sum(-1)[rows] / cnt[rows]
        return float(per_row.mean())

    return mean(first), mean(last)


def attention_loss(
    a: torch.Tensor,
    response_mask: torch.Tensor,
    content_mask: torch.Tensor,
    dh: torch.Tensor,
    task_reward: torch.Tensor,
    adv_abs: torch.Tensor,
    kappa: float = 1.0,
    tau_base: float = 1.0,
    c_mask: float = 5.0,
    eps: float = 1e-6,
    advantage_floor_eps: float = 0.02,
    reduction: str = "seq_mean",
    content_fallback: str = "all_tokens",
) -> tuple[torch.Tensor, dict[str, float]]:
    """MAPO-AT attention loss and its metrics (the formula is in the module docstring).

    Args:
        a: ``(B, T)`` audio attention mass of each response token (:func:`reduce_heads_layers`); carries the gradient.
        response_mask: ``(B, T)``, 1 on response tokens.
        content_mask: bool ``(B, T)`` content tokens (restricted to the response here).
        dh: ``(B, T)`` entropy difference (no-audio reference minus policy), no gradient.
        task_reward: ``(B,)`` task reward (failed: ``<= 0`` or not finite). adv_abs: ``(B,)`` advantage ``|A_i|``.
        kappa: temporal exponent. tau_base: ``tau_i = tau_base * log(max(T_i, 2))``. c_mask: weight cap.
        eps: inside ``-log(a + eps)``.
        advantage_floor_eps: ``|A_i|`` of a failed response is raised to at least this in the gate; 0 = no floor.
        reduction: ``"seq_mean"`` (each response's sum over its ``N_i`` content tokens divided by ``N_i``, then the
            mean over the ``B`` responses) or ``"token_mean"`` (the batch's sum divided by its content tokens).
        content_fallback: a response without content tokens counts all its tokens as content (``"all_tokens"``) or
            adds nothing (``"skip"``); see :func:`effective_content_mask`.

    Returns:
        ``(L_attn, metrics)``: ``L_attn`` a scalar (0 when no response has a content token, or ``B = 0``); metrics
        ``attn/loss``, ``attn/audio_mass_first_third``, ``attn/audio_mass_last_third``, ``attn/audio_mass_mean``,
        ``attn/content_tokens`` (the tokens the loss ran over, fallback included), ``attn/no_content_sequences``
        (responses without a content token of their own), ``attn/gate_mean``.
    """
    if reduction not in ATTN_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {ATTN_REDUCTIONS}")
    m = response_mask.float()
    own = content_mask.bool() & (m > 0)
    content = effective_content_mask(own, m, content_fallback)
    w = temporal_weights(m, kappa)
    v = complementary_weights(dh, content, sequence_tau(m, tau_base), c_mask)
    g = sequence_gate(task_reward, adv_abs, advantage_floor_eps)
    nll = -torch.log(a.to(accumulation_dtype(a)) + eps)
    per_token = (g[:, None] * w * v).to(nll.dtype) * nll  # 0 outside the content tokens (v = 0 there)
    n_seq = content.sum(dim=-1)
    if reduction == "seq_mean":
        per_seq = per_token.sum(dim=-1) / n_seq.clamp(min=1).to(nll.dtype)
        loss = per_seq.mean() if per_seq.numel() else per_token.sum()
    else:
        loss = per_token.sum() / n_seq.sum().clamp(min=1).to(nll.dtype)
    first, last = _third_means(a, m)
    n_resp = m.sum()
    metrics = {
        "attn/loss": float(loss.detach()),
        "attn/audio_mass_first_third": first,
        "attn/audio_mass_last_third": last,
        "attn/audio_mass_mean": float((a.detach().float() * m).sum() / n_resp) if n_resp > 0 else math.nan,
        "attn/content_tokens": float(n_seq.sum()),
        "attn/no_content_sequences": float(((m.sum(-1) > 0) & ~own.any(-1)).sum()),
        "attn/gate_mean": float(g.mean()) if g.numel() else math.nan,
    }
    return loss, metrics
