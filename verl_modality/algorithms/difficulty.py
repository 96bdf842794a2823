"""Per-tag difficulty: KL of the tag's empirical reward distribution from a near-perfect target (docs/method.md §2.4)."""

from __future__ import annotations

import math

import numpy as np

from verl_modality.algorithms.config import MapoConfig


def bernoulli_kl(p: float, q: float, eps: float = 1e-6) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)) (MAPLE Eq. 9), p clipped to [eps, 1 - eps]; p = the tag's mean 0/1 reward.

    ``q`` must lie in (0, 1) (MAPLE: 100/101, the mean of Beta(100, 1)).
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"Bernoulli target q={q!r} must lie in (0, 1)")
    p = min(max(float(p), eps), 1.0 - eps)
    return p * math.log(p / q) + (1.0 - p) * math.log((1.0 - p) / (1.0 - q))


def beta_pdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Beta(a, b) density at ``x`` (shape (K,)), from log-gamma so that Beta(100, 1) stays finite."""
    x = np.asarray(x, dtype=np.float64)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    with np.errstate(divide="ignore"):
        return np.exp(log_norm + (a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x))


def histogram_beta_kl(
    rewards: np.ndarray, bins: int = 50, a: float = 100.0, b: float = 1.0, eps: float = 1e-6
) -> float:
    """sum_k p_k log((p_k + eps) / (q_k + eps)) dx over ``bins`` uniform bins on [0, 1].

    MAPLE Eq. 6. ``rewards`` (n,), n >= 1, each in [0, 1] (else ``ValueError``); p_k is numpy's density histogram
    (``density=True``; a reward of exactly 1.0 falls in the last bin), q_k the Beta(a, b) density at the bin centres,
    dx = 1 / bins the bin width.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("histogram_beta_kl needs at least one reward")
    bad = np.flatnonzero((r < 0.0) | (r > 1.0) | ~np.isfinite(r))
    if bad.size:
        raise ValueError(f"continuous rewards must lie in [0, 1]; positions {bad[:10].tolist()} hold {r[bad[:10]]}")
    p, edges = np.histogram(r, bins=bins, range=(0.0, 1.0), density=True)
    centres = (edges[:-1] + edges[1:]) / 2.0
    dx = edges[1] - edges[0]
    q = beta_pdf(centres, a, b)
    return float(np.sum(p * np.log((p + eps) / (q + eps))) * dx)


def detect_reward_kind(rewards: np.ndarray) -> str:
    """``"binary"`` when every reward of ``rewards`` (n,) is exactly 0 or 1, else ``"continuous"``.

    A tag whose responses happen to score only 0 and 1 under a continuous judge is treated as binary for that step;
    set ``algorithm.mapo.difficulty`` explicitly when that matters.
    """
    r = np.asarray(rewards, dtype=np.float64)
    return "binary" if np.all((r == 0.0) | (r == 1.0)) else "continuous"


def tag_difficulty(rewards: np.ndarray, kind: str = "auto", cfg: MapoConfig | None = None) -> float:
    """D_M for one tag's scores ``(n,)``, n >= 1: Bernoulli KL (``binary``) or histogram-Beta KL (``continuous``).

    ``kind="auto"`` picks ``binary`` when every score is 0 or 1 (:func:`detect_reward_kind`). Target and bins come
    from ``cfg`` (default :class:`MapoConfig`): q = ``target_accuracy``, Beta(``beta_a``, ``beta_b``), ``bins``, ``eps``.
    """
    cfg = cfg or MapoConfig()
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("a tag needs at least one reward to have a difficulty")
    if kind == "auto":
        kind = detect_reward_kind(r)
    if kind == "binary":
        bad = np.flatnonzero((r != 0.0) & (r != 1.0))
        if bad.size:
            raise ValueError(
                f"difficulty=binary, but rewards at positions {bad[:10].tolist()} are {r[bad[:10]].tolist()}, "
                "not 0 or 1 (use difficulty=continuous or auto)"
            )
        return bernoulli_kl(float(r.mean()), cfg.target_accuracy, cfg.eps)
    if kind == "continuous":
        return histogram_beta_kl(r, cfg.bins, cfg.beta_a, cfg.beta_b, cfg.eps)
    raise ValueError(f"unknown difficulty kind {kind!r}: expected auto, binary or continuous")
