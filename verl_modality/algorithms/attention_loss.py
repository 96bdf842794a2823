"""MAPO-AT attention loss (docs/method.md §5): audio attention mass, token weights, sequence gate, loss.

Pure tensor math: no model, no verl. Notation: ``B`` sequences, ``H`` query heads, ``Hk`` key/value heads (GQA,
``Hk`` divides ``H``), ``Tq`` query positions, ``Tk`` key positions, ``D`` head size, ``T`` response length.

The audio attention mass of a query is the softmax attention probability it puts on the audio-placeholder keys:

    a = sum_{j audio, allowed} softmax(q k_j * scale) = exp(logsumexp_{j audio, allowed} s_j - logsumexp_{j allowed} s_j)

:func:`audio_attention_mass` computes it from two logsumexps per query, chunked over queries, with a hand-written
backward that recomputes the scores of one chunk at a time; nothing of size ``Tq x Tk`` is ever kept, so memory is
``O(chunk * Tk)`` per head in the forward *and* the backward. :func:`naive_audio_attention_mass` materialises the
probabilities (reference for tests and the benchmark).

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
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from verl_modality.algorithms.config import ATTN_REDUCTIONS, CONTENT_FALLBACKS

__all__ = [
    "STOPWORDS",
    "attention_loss",
    "audio_attention_mass",
    "complementary_weights",
    "content_mask_from_strings",
    "content_token_mask",
    "effective_content_mask",
    "naive_audio_attention_mass",
    "reduce_heads_layers",
    "sequence_gate",
    "sequence_tau",
    "task_failed",
    "temporal_weights",
]


# --------------------------------------------------------------------------------------------------------------------
# Audio attention mass
# --------------------------------------------------------------------------------------------------------------------
def _check_shapes(q: torch.Tensor, k: torch.Tensor, audio_key_mask: torch.Tensor) -> tuple[int, int, int, int, int]:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be (B, H, T, D); got {tuple(q.shape)} and {tuple(k.shape)}")
    b, h, tq, d = q.shape
    bk, hk, tk, dk = k.shape
    if bk != b or dk != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head size")
    if hk == 0 or h % hk:
        raise ValueError(f"{h} query heads are not a multiple of {hk} key heads")
    if tq > tk:
        raise ValueError(f"{tq} queries but only {tk} keys: queries are aligned to the last Tq key positions")
    if tuple(audio_key_mask.shape) != (b, tk):
        raise ValueError(f"audio_key_mask must be (B, Tk) = {(b, tk)}; got {tuple(audio_key_mask.shape)}")
    return b, h, hk, tq, tk


def _allowed_keys(
    b: int,
    tq: int,
    n_keys: int,
    q0: int,
    q1: int,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    device,
    tk: int | None = None,
) -> torch.Tensor:
    """Bool ``(B or 1, 1, 1, q1 - q0, n_keys)``: which of the first ``n_keys`` keys the queries ``q0:q1`` may see.

    ``tk`` (default ``n_keys``) is the full key count, which places the queries (the last ``Tq`` of ``tk``).
    """
    tk = n_keys if tk is None else tk
    allowed = torch.ones((1, q1 - q0, n_keys), dtype=torch.bool, device=device)
    if causal:
        qpos = torch.arange(q0, q1, device=device) + (tk - tq)  # key position of each query
        allowed = (torch.arange(n_keys, device=device)[None, :] <= qpos[:, None])[None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, :]
    return allowed[:, None, None]  # (B|1, 1(Hk), 1(group), c, n_keys)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _chunk_scores(q: torch.Tensor, k: torch.Tensor, hk: int, scale: float) -> torch.Tensor:
    """Scores ``(B, Hk, G, c, Tk)`` of a query chunk ``(B, H, c, D)`` against ``k`` ``(B, Hk, Tk, D)``."""
    b, h, c, d = q.shape
    acc = _acc_dtype(q)
    qg = q.to(acc).reshape(b, hk, h // hk, c, d)
    return torch.matmul(qg, k.to(acc)[:, :, None].transpose(-1, -2)) * scale


def _audio_index(audio_key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx (B, Na), valid (B, Na))``: the audio key positions of each row, padded to the longest row."""
    counts = audio_key_mask.sum(-1)
    na = int(counts.max()) if counts.numel() else 0
    order = torch.argsort((~audio_key_mask).to(torch.int8), dim=-1, stable=True)  # audio positions first, in order
    idx = order[:, :na]
    valid = torch.arange(na, device=idx.device)[None, :] < counts[:, None]
    return idx, valid


def _chunk_keys(tq: int, tk: int, q1: int, causal: bool) -> int:
    """Keys a causal chunk ending at query ``q1`` can see: ``0 .. Tk - Tq + q1 - 1``."""
    return tk - tq + q1 if causal else tk


class _AudioMass(torch.autograd.Function):
    """Chunked forward (two logsumexps per query) and chunked, recomputing backward.

    The all-keys logsumexp runs over the keys the chunk can see (causal: up to its last query); the audio logsumexp
    runs over the gathered audio keys only (``Na`` of them), so the audio term costs ``O(chunk * Na)``.
    """

    @staticmethod
    def forward(ctx, q, k, audio_key_mask, key_padding_mask, causal, query_chunk, scale):
        b, h, tq, d = q.shape
        hk, tk = k.shape[1], k.shape[2]
        acc = _acc_dtype(q)
        neg = torch.finfo(acc).min
        idx, idx_valid = _audio_index(audio_key_mask)
        na = idx.shape[1]
        if key_padding_mask is not None:
            idx_valid = idx_valid & key_padding_mask.gather(1, idx)
        k_aud = k.gather(2, idx[:, None, :, None].expand(b, hk, na, d))  # (B, Hk, Na, D)
        lse_all = q.new_empty((b, h, tq), dtype=acc)
        lse_aud = q.new_empty((b, h, tq), dtype=acc)
        with torch.no_grad():
            for q0 in range(0, tq, query_chunk):
                q1 = min(tq, q0 + query_chunk)
                kend = _chunk_keys(tq, tk, q1, causal)
                qc = q[:, :, q0:q1]
                s = _chunk_scores(qc, k[:, :, :kend], hk, scale)  # (B, Hk, G, c, kend)
                allowed = _allowed_keys(b, tq, kend, q0, q1, causal, _cut(key_padding_mask, kend), q.device, tk)
                lse_all[:, :, q0:q1] = torch.logsumexp(torch.where(allowed, s, neg), dim=-1).reshape(b, h, q1 - q0)
                del s, allowed
                s_a = _chunk_scores(qc, k_aud, hk, scale)  # (B, Hk, G, c, Na)
                allowed_a = _allowed_audio(idx, idx_valid, tq, tk, q0, q1, causal)
                lse_aud[:, :, q0:q1] = torch.logsumexp(torch.where(allowed_a, s_a, neg), dim=-1).reshape(b, h, q1 - q0)
                del s_a
            # A row without an allowed (audio) key has only `neg` entries: its logsumexp stays near `neg`.
            allowed_any, audio_any = _row_has_keys(b, tq, tk, causal, key_padding_mask, audio_key_mask, q.device)
            valid = audio_any[:, None, :] & allowed_any[:, None, :]
            mass = torch.where(valid, torch.exp(lse_aud - lse_all), torch.zeros((), dtype=acc, device=q.device))
        ctx.save_for_backward(q, k, k_aud, idx, idx_valid, key_padding_mask, lse_all, lse_aud, mass, valid)
        ctx.causal, ctx.query_chunk, ctx.scale = causal, query_chunk, scale
        return mass

    @staticmethod
    def backward(ctx, grad_mass):
        q, k, k_aud, idx, idx_valid, key_padding_mask, lse_all, lse_aud, mass, valid = ctx.saved_tensors
        causal, query_chunk, scale = ctx.causal, ctx.query_chunk, ctx.scale
        b, h, tq, d = q.shape
        hk, tk = k.shape[1], k.shape[2]
        na = idx.shape[1]
        g = h // hk
        acc = mass.dtype
        zero = torch.zeros((), dtype=acc, device=q.device)
        # d mass / d s_j = mass * (p_aud_j - p_all_j), p_* the softmax over the allowed (audio) keys.
        coef = torch.where(valid, grad_mass.to(acc) * mass, zero)
        lse_all = torch.where(valid, lse_all, zero)
        lse_aud = torch.where(valid, lse_aud, zero)
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q = torch.zeros_like(q, dtype=acc) if need_q else None
        grad_k = torch.zeros((b, hk, tk, d), dtype=acc, device=k.device) if need_k else None
        grad_k_aud = torch.zeros((b, hk, na, d), dtype=acc, device=k.device) if need_k else None
        kf, kf_aud = k.to(acc), k_aud.to(acc)
        for q0 in range(0, tq, query_chunk):
            q1 = min(tq, q0 + query_chunk)
            c = q1 - q0
            kend = _chunk_keys(tq, tk, q1, causal)
            qc = q[:, :, q0:q1]
            shape = (b, hk, g, c, 1)
            coef_c = coef[:, :, q0:q1].reshape(shape)
            qg = qc.to(acc).reshape(b, hk, g, c, d)
            # all keys: ds = -coef * p_all
            s = _chunk_scores(qc, k[:, :, :kend], hk, scale)
            allowed = _allowed_keys(b, tq, kend, q0, q1, causal, _cut(key_padding_mask, kend), q.device, tk)
            ds = torch.where(allowed, torch.exp(s - lse_all[:, :, q0:q1].reshape(shape)), zero).mul_(-coef_c)
            del s, allowed
            if need_q:
                grad_q[:, :, q0:q1] += (torch.matmul(ds, kf[:, :, None, :kend]) * scale).reshape(b, h, c, d)
            if need_k:
                grad_k[:, :, :kend] += (torch.matmul(ds.transpose(-1, -2), qg) * scale).sum(dim=2)
            del ds
            # audio keys: ds = coef * p_aud
            s_a = _chunk_scores(qc, k_aud, hk, scale)
            allowed_a = _allowed_audio(idx, idx_valid, tq, tk, q0, q1, causal)
            ds_a = torch.where(allowed_a, torch.exp(s_a - lse_aud[:, :, q0:q1].reshape(shape)), zero).mul_(coef_c)
            del s_a
            if need_q:
                grad_q[:, :, q0:q1] += (torch.matmul(ds_a, kf_aud[:, :, None]) * scale).reshape(b, h, c, d)
            if need_k:
                grad_k_aud += (torch.matmul(ds_a.transpose(-1, -2), qg) * scale).sum(dim=2)
            del ds_a
        if need_k:
            grad_k.scatter_add_(2, idx[:, None, :, None].expand(b, hk, na, d), grad_k_aud)
        return (
            grad_q.to(q.dtype) if need_q else None,
            grad_k.to(k.dtype) if need_k else None,
            None,
            None,
            None,
            None,
            None,
        )


def _cut(key_padding_mask: torch.Tensor | None, kend: int) -> torch.Tensor | None:
    return None if key_padding_mask is None else key_padding_mask[:, :kend]


def _allowed_audio(
    idx: torch.Tensor, idx_valid: torch.Tensor, tq: int, tk: int, q0: int, q1: int, causal: bool
) -> torch.Tensor:
    """Bool ``(B, 1, 1, c, Na)``: gathered audio key ``n`` is a real (unpadded) audio key visible to the query."""
    allowed = idx_valid[:, None, :]  # (B, 1, Na)
    if causal:
        qpos = torch.arange(q0, q1, device=idx.device) + (tk - tq)
        allowed = allowed & (idx[:, None, :] <= qpos[None, :, None])
    return allowed[:, None, None]


def _row_has_keys(b, tq, tk, causal, key_padding_mask, audio_key_mask, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool ``(B, Tq)`` pairs: the query has some allowed key / some allowed audio key (cumulative counts, O(Tk))."""
    pad = (
        key_padding_mask.bool()
        if key_padding_mask is not None
        else torch.ones((b, tk), dtype=torch.bool, device=device)
    )
    aud = audio_key_mask.bool() & pad
    if causal:
        last = torch.arange(tk - tq, tk, device=device)  # key position of each query
        n_all = pad.long().cumsum(-1)[:, last]
        n_aud = aud.long().cumsum(-1)[:, last]
    else:
        n_all = pad.long().sum(-1, keepdim=True).expand(b, tq)
        n_aud = aud.long().sum(-1, keepdim=True).expand(b, tq)
    return n_all > 0, n_aud > 0


def audio_attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    audio_key_mask: torch.Tensor,
    causal: bool = True,
    query_chunk: int = 256,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention mass on the audio keys, ``(B, H, Tq)``, without an attention matrix.

    Args:
        q: post-RoPE queries ``(B, H, Tq, D)``.
        k: post-RoPE keys ``(B, Hk, Tk, D)``; ``Hk`` divides ``H`` (query head ``h`` uses key head ``h // (H/Hk)``,
            as ``repeat_kv`` does).
        audio_key_mask: bool ``(B, Tk)``, True at audio-placeholder key positions.
        causal: queries are the last ``Tq`` of the ``Tk`` positions; query ``i`` sees keys ``0 .. Tk - Tq + i``.
        query_chunk: queries per chunk; scores of one chunk, ``(B, H, query_chunk, Tk)`` float32, are the largest
            temporary, in the forward and in the backward (which recomputes them). Besides ``q``/``k`` (kept for the
            backward) only ``O(B * H * Tq)`` statistics and the gathered audio keys are stored. Causal chunks only
            score the keys they can see, and the audio logsumexp runs over the gathered audio keys alone.
        scale: score scale; ``D ** -0.5`` when None.
        key_padding_mask: optional bool ``(B, Tk)``, False at padding keys (never attended).

    Returns:
        ``exp(logsumexp over allowed audio keys - logsumexp over allowed keys)``, float32 (float64 for float64
        inputs; scores are accumulated in that dtype whatever the input dtype); 0 for a query with no allowed audio
        key (or no allowed key at all). Differentiable in ``q`` and ``k``.
    """
    b, h, hk, tq, tk = _check_shapes(q, k, audio_key_mask)
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (b, tk):
        raise ValueError(f"key_padding_mask must be (B, Tk) = {(b, tk)}; got {tuple(key_padding_mask.shape)}")
    if query_chunk < 1:
        raise ValueError("query_chunk must be >= 1")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    audio_key_mask = audio_key_mask.bool()
    key_padding_mask = key_padding_mask.bool() if key_padding_mask is not None else None
    return _AudioMass.apply(q, k, audio_key_mask, key_padding_mask, bool(causal), int(query_chunk), scale)


def naive_audio_attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    audio_key_mask: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference for :func:`audio_attention_mass`: materialises the ``(B, H, Tq, Tk)`` softmax probabilities."""
    b, h, hk, tq, tk = _check_shapes(q, k, audio_key_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    kr = k.repeat_interleave(h // hk, dim=1)
    acc = _acc_dtype(q)
    s = torch.matmul(q.to(acc), kr.to(acc).transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
    allowed = _allowed_keys(b, tq, tk, 0, tq, causal, key_padding_mask, q.device)[:, 0]  # (B|1, 1, Tq, Tk)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no allowed key: 0
    return (p * audio_key_mask.bool()[:, None, None, :]).sum(-1)


def reduce_heads_layers(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(B, T)``: max over heads of each ``(B, H, T)`` layer mass, then mean over the layers."""
    if not per_layer:
        raise ValueError("no layers to reduce")
    return torch.stack([m.amax(dim=1) for m in per_layer]).mean(dim=0)


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
    """Bool ``(B,)``: the response failed its task, i.e. its task reward ``(B,)`` is ``<= 0`` or not finite (docs/method.md §5,
    the release's rule)."""
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
# Content tokens
# --------------------------------------------------------------------------------------------------------------------
# English function words: articles, pronouns, determiners, prepositions, conjunctions, auxiliaries and modal verbs,
# and a few frequent discourse words. Everything else of three or more letters counts as a content word.
STOPWORDS: frozenset[str] = frozenset(
    """
    a an the this that these those there here
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves one ones someone something anyone anything everyone
    everything nobody nothing what which who whom whose whatever whichever whoever
    and but nor yet for because although though while whereas unless until since than whether either neither both
    also too very just only even still then thus hence therefore however moreover furthermore otherwise instead
    of in on at to from by with without within into onto upon about above below under over after before between
    among through throughout during against toward towards across along around behind beside besides beyond near off
    out per via like unlike
    am is are was were be been being have has had having do does did doing done
    can could may might must shall should will would ought
    not no yes all any each every few more most other some such own same so than
    how when where why
    let lets get gets got okay well
    """.split()
)
_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits


def _is_content_word(word: str) -> bool:
    if any(ch.isdigit() for ch in word):
        return True
    return word.isalpha() and len(word) >= 3 and word.lower() not in STOPWORDS


def content_mask_from_strings(rows: Iterable[Sequence[str]], special: Iterable[str] = ()) -> torch.Tensor:
    """Bool ``(B, T)`` content mask from decoded token strings (rows of equal length ``T``).

    The rule (no POS tagger): the token strings of a row are concatenated and split into words, a word being a
    maximal run of letters and digits (so sub-word pieces without a space between them form one word, and
    punctuation, spaces and ``_`` separate words). A word is a *content word* (roughly: noun, verb, adjective,
    adverb or number) when it contains a digit, or when it is alphabetic, has at least 3 letters and is not in
    :data:`STOPWORDS` (English function words). Every token overlapping a content word is a content token; the
    strings in ``special`` (special tokens) act as word breaks and are never content.
    """
    special_set = set(special)
    out = []
    for row in rows:
        texts = [" " if s in special_set else s for s in row]
        owner: list[int] = []  # token index of every character of the joined row
        for j, s in enumerate(texts):
            owner.extend([j] * len(s))
        flags = [False] * len(texts)
        for match in _WORD_RE.finditer("".join(texts)):
            if _is_content_word(match.group()):
                for pos in range(match.start(), match.end()):
                    flags[owner[pos]] = True
        for j, s in enumerate(row):
            if s in special_set:
                flags[j] = False
        out.append(flags)
    return torch.tensor(out, dtype=torch.bool) if out else torch.zeros((0, 0), dtype=torch.bool)


def content_token_mask(token_ids: torch.Tensor, tokenizer: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``(B, T)`` content mask of ``token_ids`` ``(B, T)`` (rule: :func:`content_mask_from_strings`).

    Each id is decoded on its own (``tokenizer.decode([id])``); the tokenizer's special and added tokens never count.
    ``mask`` (e.g. the response mask) is applied last.
    """
    ids = torch.as_tensor(token_ids)
    special = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    special.update(str(t) for t in getattr(tokenizer, "get_added_vocab", dict)().keys())
    cache: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        return cache[i]

    rows = [[text(int(i)) for i in row] for row in ids.tolist()] if ids.numel() else [[] for _ in range(ids.shape[0])]
    out = content_mask_from_strings(rows, special=special).to(ids.device).reshape(ids.shape)
    return out & mask.bool() if mask is not None else out


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
    nll = -torch.log(a.to(_acc_dtype(a)) + eps)
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
