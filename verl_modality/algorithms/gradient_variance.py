"""Policy-gradient variance of modality-unaware (pooled) and modality-aware (stratified) normalisation (MAPLE §4.1).

On the same rollouts (N responses j with scalar score r_j, modality tag M(j) and score function
g_j = grad log pi(y_j | x_j), shape (P,)), the two estimators of MAPLE §4.1 are sums of per-sample contributions
X_j = c_j A_j g_j:

- MU (modality-unaware): A_j normalised over the whole batch (:func:`pooled_advantages`), c_j = 1/N;
- MA (modality-aware): A_j normalised within its tag (:func:`stratified_advantages`), c_j = 1/(K n_M(j))
  (:func:`stratified_weights`). The paper's weight is sum_M 1/|B_M|; it is divided here by K, the number of
  distinct tags, so that both estimators carry a total weight of 1 and a one-tag batch gives exactly MU.

:func:`estimator_variance` estimates Var(g) from the X_j of one batch (it needs per-sample gradients: a bench tool).
:func:`reward_variance_split` is the cheap in-training proxy that needs only the rewards, and
:func:`pg_variance_metrics` what the trainer logs with tag metrics on (``pg_var/*``).

These estimators normalise over the batch or over a tag; verl's GRPO (and ``mapo_stratified``) normalise within a
prompt group, which is nested in a tag, so the proxy measures how much of the pooled reward variance lies between
tags, not the difference between GRPO and MAPO.

Pure numpy (torch tensors are accepted as input); no verl imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from verl_modality.algorithms.advantage import _factorize

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def _as_array(x: ArrayLike, what: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"empty batch: no {what}")
    bad = np.flatnonzero(~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1))
    if bad.size:
        raise ValueError(f"{what} are not finite (NaN or inf) at rows {bad[:10].tolist()}")
    return arr


def _scores_and_tags(scores: ArrayLike, tags: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """-> scores (N,) float64, tag id per row (N,) int64, number of distinct tags K."""
    r = _as_array(scores, "scores", 1)
    ids, uniques = _factorize(tags, "modality tags")
    if ids.size != r.size:
        raise ValueError(f"length mismatch: {r.size} scores but {ids.size} tags")
    return r, ids, len(uniques)


def _normalise(values: np.ndarray, eps: float, norm_by_std: bool) -> np.ndarray:
    # one value or a constant set carries no signal: exactly 0 (a computed mean can miss a constant by one ulp)
    if values.size < 2 or np.all(values == values[0]):
        return np.zeros_like(values)
    centred = values - values.mean()
    return centred / (values.std(ddof=1) + eps) if norm_by_std else centred


def pooled_advantages(scores: ArrayLike, eps: float = 1e-6, norm_by_std: bool = True) -> np.ndarray:
    """MU advantages, ``scores`` (N,) -> (N,) float64: A_j = (r_j - mean_B) / (std_B + eps) over the whole batch.

    ``norm_by_std=False`` gives r_j - mean_B. std is the unbiased (N - 1) one, torch.std's default, as in verl's
    ``compute_grpo_outcome_advantage``; a batch of one response or of equal scores gets A = 0 (verl would give a
    singleton r / (1 + eps)).
    """
    return _normalise(_as_array(scores, "scores", 1), eps, norm_by_std)


def stratified_advantages(
    scores: ArrayLike, tags: Sequence[Any], eps: float = 1e-6, norm_by_std: bool = True
) -> np.ndarray:
    """MA advantages, ``scores`` (N,), ``tags`` (N,) -> (N,) float64: A_j = (r_j - mean_M) / (std_M + eps) within tag M.

    Same conventions as :func:`pooled_advantages` per tag (unbiased std; a tag with one response or equal scores
    gets 0). When every tag holds one prompt group of two or more responses this is verl's GRPO advantage.
    """
    r, ids, k = _scores_and_tags(scores, tags)
    out = np.zeros_like(r)
    for m in range(k):
        rows = np.flatnonzero(ids == m)
        out[rows] = _normalise(r[rows], eps, norm_by_std)
    return out


def pooled_weights(n: int) -> np.ndarray:
    """MU weights c_j = 1/N, shape (N,)."""
    if n < 1:
        raise ValueError(f"empty batch: n = {n}")
    return np.full(n, 1.0 / n)


def stratified_weights(tags: Sequence[Any]) -> np.ndarray:
    """MA weights c_j = 1/(K n_M(j)), shape (N,): each of the K tags weighs 1/K, split evenly over its n_M rows.

    MAPLE's sum_M 1/|B_M| divided by K, so that the weights sum to 1 and a one-tag batch gives MU's 1/N.
    """
    ids, uniques = _factorize(tags, "modality tags")
    if ids.size == 0:
        raise ValueError("empty batch: no tags")
    n_m = np.bincount(ids, minlength=len(uniques)).astype(np.float64)
    return 1.0 / (len(uniques) * n_m[ids])


def contributions(grads: ArrayLike, advantages: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """X_j = c_j A_j g_j: ``grads`` (N, P), ``advantages`` (N,), ``weights`` (N,) -> (N, P) float64."""
    g = _as_array(grads, "grads", 2)
    coef = _as_array(advantages, "advantages", 1) * _as_array(weights, "weights", 1)
    if coef.size != g.shape[0]:
        raise ValueError(f"length mismatch: {g.shape[0]} gradients but {coef.size} advantages/weights")
    return coef[:, None] * g


def estimator_variance(contributions: ArrayLike) -> float:
    """Var(g) of the sum-estimator g = sum_j X_j, from ``contributions`` X (N, P), N >= 2; trace of the covariance.

    N/(N-1) * sum_j ||X_j - g/N||^2: N times the unbiased sample covariance of one X_j. Assumes the N contributions are
    independent draws from one distribution (with replacement); advantages that share a batch mean are not
    independent, which this ignores (an O(1/N) effect).
    """
    x = _as_array(contributions, "contributions", 2)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 contributions for a variance, got {n}")
    dev = x - x.mean(axis=0)
    return float(n / (n - 1) * np.sum(dev * dev))


def estimator_variance_from_gram(gram: ArrayLike, coef: ArrayLike) -> float:
    """:func:`estimator_variance` of X_j = coef_j g_j from the Gram matrix ``gram`` (N, N) = [g_j . g_k], ``coef`` (N,).

    N/(N-1) * (sum_j coef_j^2 G_jj - coef' G coef / N); lets many weightings of the same gradients be compared
    without holding the (N, P) contributions.
    """
    gm = _as_array(gram, "gram", 2)
    c = _as_array(coef, "coef", 1)
    n = c.size
    if gm.shape != (n, n):
        raise ValueError(f"length mismatch: gram of shape {gm.shape} for {n} coefficients")
    if n < 2:
        raise ValueError(f"need at least 2 contributions for a variance, got {n}")
    return float(n / (n - 1) * (np.sum(c * c * np.diag(gm)) - c @ gm @ c / n))


def reward_variance_split(scores: ArrayLike, tags: Sequence[Any]) -> dict[str, float]:
    """Within- and between-tag parts of the pooled reward variance, ``scores`` (N,), ``tags`` (N,).

    Population (1/N) variances: ``total`` = mean_j (r_j - mean_B)^2 = ``within`` + ``between``, with
    ``within`` = sum_M (n_M/N) var_M and ``between`` = sum_M (n_M/N) (mean_M - mean_B)^2;
    ``ma_over_mu`` = within / total (1.0 when total is 0: both estimators vanish).

    This is Var(g_MA) / Var(g_MU) (MAPLE's decomposition) under these assumptions: centred, not std-normalised,
    advantages; independent samples whose score functions have zero mean and a squared norm independent of the
    reward; equal tag sizes n_M = N/K (for unequal sizes it is the ratio for MA with weights 1/N instead of
    1/(K n_M)). Then Var(g_MU) = s^2 total / N and Var(g_MA) = s^2 within / N, s^2 = E||g_j||^2.
    A batch with one tag (a curriculum step) gives exactly 1.
    """
    r, ids, k = _scores_and_tags(scores, tags)
    n, mean = r.size, r.mean()
    within = between = 0.0
    for m in range(k):
        rm = r[ids == m]
        # the same reduction as the pooled mean, so that one tag gives between == 0 exactly
        mean_m = rm.mean()
        within += rm.size / n * float(np.mean((rm - mean_m) ** 2))
        between += rm.size / n * float((mean_m - mean) ** 2)
    total = within + between
    return {"within": within, "between": between, "total": total, "ma_over_mu": within / total if total > 0 else 1.0}


def pg_variance_metrics(scores: ArrayLike, tags: Sequence[Any], valid: ArrayLike | None = None) -> dict[str, float]:
    """The trainer's metrics from :func:`reward_variance_split`: ``pg_var/{within,between,ma_over_mu}``.

    ``scores`` (N,) sequence scores, ``tags`` (N,), ``valid`` (N,) bool (verl's padding rows False, left out).
    """
    r = scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, float)
    r, tag_arr = r.reshape(-1), np.asarray(tags, dtype=object).reshape(-1)
    if valid is not None:  # masked first: padding rows may hold anything
        keep = np.asarray(valid, dtype=bool).reshape(-1)
        if not (keep.size == r.size == tag_arr.size):
            raise ValueError(f"length mismatch: {r.size} scores, {tag_arr.size} tags, {keep.size} valid flags")
        r, tag_arr = r[keep], tag_arr[keep]
    split = reward_variance_split(r, tag_arr)
    return {f"pg_var/{k}": split[k] for k in ("within", "between", "ma_over_mu")}
