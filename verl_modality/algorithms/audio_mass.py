"""Audio attention mass (docs/method.md §5): the softmax attention probability a query puts on the audio keys.

Pure tensor math: no model, no verl. Notation: ``B`` sequences, ``H`` query heads, ``Hk`` key/value heads (GQA,
``Hk`` divides ``H``), ``Tq`` query positions, ``Tk`` key positions, ``D`` head size.

The audio attention mass of a query is the softmax attention probability it puts on the audio-placeholder keys:

    a = sum_{j audio, allowed} softmax(q k_j * scale)
      = exp(logsumexp_{j audio, allowed} s_j - logsumexp_{j allowed} s_j)

:func:`audio_attention_mass` computes it from two logsumexps per query, chunked over queries, with a hand-written
backward that recomputes the scores of one chunk at a time; nothing of size ``Tq x Tk`` is ever kept, so memory is
``O(chunk * Tk)`` per head in the forward *and* the backward. :func:`naive_audio_attention_mass` materialises the
probabilities (reference for tests and the benchmark). The loss on the mass is in
:mod:`verl_modality.algorithms.attention_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "accumulation_dtype",
    "audio_attention_mass",
    "naive_audio_attention_mass",
    "reduce_heads_layers",
]


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


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _chunk_scores(q: torch.Tensor, k: torch.Tensor, hk: int, scale: float) -> torch.Tensor:
    """Scores ``(B, Hk, G, c, Tk)`` of a query chunk ``(B, H, c, D)`` against ``k`` ``(B, Hk, Tk, D)``."""
    b, h, c, d = q.shape
    acc = accumulation_dtype(q)
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
        acc = accumulation_dtype(q)
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
    acc = accumulation_dtype(q)
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
