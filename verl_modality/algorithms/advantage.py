"""``mapo_stratified``: MAPLE's modality-stratified GRPO advantage (SPEC §2, steps 1-4).

For N responses with prompt group g(i) (verl's ``uid``), tag M(i) and score r_i:

1. group step, verl's GRPO: A_i = (r_i - mean_g) / (std_g + eps) (or without the division);
2. stratum balance: A_i *= N / (K * n_M), K distinct tags, n_M responses of tag M (Eq. 2);
3. adaptive weights: A_i *= w_M (Eq. 3-4, :mod:`.adaptive_weights`);
4. D_M, the tag's difficulty (:mod:`.difficulty`).

verl's synthetic padding rows (``valid`` False) get A = 0 and are left out of N, K, n_M and every statistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState
from verl_modality.algorithms.batch_context import current_batch_context
from verl_modality.algorithms.config import MapoConfig
from verl_modality.algorithms.difficulty import tag_difficulty

ESTIMATOR_NAME = "mapo_stratified"


def _group_ids(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) -> (group id per row (N,), count per group (G,)), ids in order of first appearance."""
    labels = np.asarray(index, dtype=object).reshape(-1)
    ids, uniques = pd.factorize(labels, sort=False)
    if (ids < 0).any():
        raise ValueError(f"group labels contain None/NaN at rows {np.flatnonzero(ids < 0)[:10].tolist()}")
    return ids.astype(np.int64), np.bincount(ids, minlength=len(uniques))


def group_advantage(scores: torch.Tensor, index: Any, epsilon: float = 1e-6, norm_by_std: bool = True) -> torch.Tensor:
    """GRPO's group-normalised scalar advantage, vectorised. Shapes: ``scores`` (N,), ``index`` (N,) -> (N,).

    Same conventions as verl's ``compute_grpo_outcome_advantage``: unbiased ``torch.std``, singleton groups use
    mean 0 and std 1, ``(r - mean) / (std + epsilon)``. Groups of equal size are reduced together with
    ``torch.mean``/``torch.std`` over rows, which gives verl's values bit for bit (tested).
    """
    scores = scores.reshape(-1)
    gid, counts = _group_ids(index)
    if gid.size != scores.numel():
        raise ValueError(f"{scores.numel()} scores but {gid.size} group labels")
    n_groups = counts.size
    mean_g = torch.zeros(n_groups, dtype=scores.dtype)
    std_g = torch.ones(n_groups, dtype=scores.dtype)
    order = torch.from_numpy(np.argsort(gid, kind="stable"))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for size in np.unique(counts):
        if size < 2:
            continue  # singleton groups keep mean 0, std 1
        groups = np.flatnonzero(counts == size)
        pos = torch.from_numpy(starts[groups][:, None] + np.arange(size)[None, :])
        values = scores[order[pos]]  # (groups, size), rows in their original order within each group
        g = torch.from_numpy(groups)
        mean_g[g] = torch.mean(values, dim=1)
        std_g[g] = torch.std(values, dim=1)
    g_all = torch.from_numpy(gid)
    if norm_by_std:
        return (scores - mean_g[g_all]) / (std_g[g_all] + epsilon)
    return scores - mean_g[g_all]


def stratum_balance(tags: Sequence[str], valid: np.ndarray | None = None) -> np.ndarray:
    """Eq. 2's 1/|B_M| factor as N / (K * n_M) per row (N,); 0 for invalid rows. Each tag's factors sum to N/K."""
    tags = np.asarray(tags, dtype=object)
    valid = np.ones(tags.size, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    out = np.zeros(tags.size, dtype=np.float64)
    present, counts = np.unique(tags[valid], return_counts=True)
    n, k = int(valid.sum()), present.size
    for tag, n_m in zip(present, counts, strict=True):
        out[valid & (tags == tag)] = n / (k * n_m)
    return out


@dataclass
class MapoResult:
    """``advantages``/``returns`` (N, T) and per-tag statistics ``{tag: {stat: value}}``."""

    advantages: torch.Tensor
    returns: torch.Tensor
    per_tag: dict[str, dict[str, float]] = field(default_factory=dict)


def _check_rows(scores: np.ndarray, tags: np.ndarray, index: np.ndarray, valid: np.ndarray, allowed) -> None:
    bad = np.flatnonzero(valid & ~np.isfinite(scores))
    if bad.size:
        detail = ", ".join(f"row {i} (uid {index[i]}): {scores[i]}" for i in bad[:10])
        raise ValueError(f"{ESTIMATOR_NAME}: {bad.size} response(s) have a non-finite reward: {detail}")
    unknown = sorted({str(t) for t in pd.unique(tags[valid])} - set(allowed))
    if unknown:
        rows = np.flatnonzero(valid & pd.Series(tags).astype(str).isin(unknown).to_numpy())
        raise ValueError(
            f"{ESTIMATOR_NAME}: unknown modality tag(s) {unknown} at rows {rows[:10].tolist()}; "
            f"allowed tags are {list(allowed)}"
        )


def compute_mapo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    modality_tags: Sequence[str],
    config: MapoConfig | None = None,
    state: AdaptiveWeightState | None = None,
    valid: np.ndarray | None = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    step: int | None = None,
) -> MapoResult:
    """SPEC §2 steps 1-4. Shapes: rewards and mask (N, T); ``index``, ``modality_tags``, ``valid`` (N,).

    Without ``state`` and with adaptive weights on, a fresh history is used (so it holds this step only).
    """
    cfg = config or MapoConfig()
    n = token_level_rewards.shape[0]
    tags = np.asarray(modality_tags, dtype=object).reshape(-1)
    index_arr = np.asarray(index, dtype=object).reshape(-1)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(-1)
    if response_mask.shape != token_level_rewards.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} != rewards {tuple(token_level_rewards.shape)}")
    for name, arr in (("modality_tags", tags), ("index", index_arr), ("valid", valid)):
        if arr.size != n:
            raise ValueError(f"{ESTIMATOR_NAME}: {name} has {arr.size} entries for {n} responses")
    if not valid.any():
        raise ValueError(f"{ESTIMATOR_NAME}: the batch has no real responses (all {n} rows are padding)")

    with torch.no_grad():
        scores_t = token_level_rewards.sum(dim=-1)
        scores = scores_t.detach().cpu().double().numpy()
        _check_rows(scores, tags, index_arr, valid, cfg.tags)
        gid, counts = _group_ids(index_arr)
        if not valid.all():  # padding rows: a group of their own each, so they never touch a real group
            pad = np.flatnonzero(~valid)
            gid = gid.copy()
            gid[pad] = counts.size + np.arange(pad.size)
            gid, counts = _group_ids(gid)
        adv = group_advantage(scores_t, gid, epsilon, norm_adv_by_std_in_grpo)

        # Tags as codes in canonical order; every per-tag reduction below is a bincount.
        tag_code_of = {t: i for i, t in enumerate(cfg.tags)}
        tag_ids, tag_uniques = pd.factorize(tags, sort=False)
        codes = np.array([tag_code_of.get(str(t), 0) for t in tag_uniques], dtype=np.int64)[tag_ids]
        n_tags = len(cfg.tags)
        w_valid = valid.astype(np.float64)
        n_m = np.bincount(codes, weights=w_valid, minlength=n_tags)
        present_codes = np.flatnonzero(n_m > 0)
        present = [cfg.tags[c] for c in present_codes]
        if cfg.balance:
            per_code = np.zeros(n_tags)
            per_code[present_codes] = valid.sum() / (present_codes.size * n_m[present_codes])
            balance = per_code[codes] * w_valid
        else:
            balance = w_valid
        difficulties = {
            cfg.tags[c]: tag_difficulty(
                scores[valid & (codes == c)],
                cfg.difficulty,
                cfg.target_accuracy,
                cfg.bins,
                cfg.beta_a,
                cfg.beta_b,
                cfg.eps,
            )
            for c in present_codes
        }
        if cfg.adaptive_weights:
            state = state if state is not None else AdaptiveWeightState(cfg)
            weights = state.weights(difficulties, step)
        else:
            weights = {tag: 1.0 for tag in present}
        code_weight = np.zeros(n_tags)
        for tag, w in weights.items():
            code_weight[tag_code_of[tag]] = w
        factor = torch.from_numpy(balance * code_weight[codes]).to(adv.dtype)
        scalar = adv * factor
        advantages = scalar.unsqueeze(-1) * response_mask

    # Statistics over real rows: per-group zero variance from sorted min/max, then per-tag bincounts.
    order = np.argsort(gid, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_scores = scores[order]
    zero_var = np.maximum.reduceat(sorted_scores, starts) == np.minimum.reduceat(sorted_scores, starts)
    group_code = codes[order[starts]]
    group_valid = valid[order[starts]].astype(np.float64)
    groups_per_tag = np.bincount(group_code, weights=group_valid, minlength=n_tags)
    zero_var_per_tag = np.bincount(group_code, weights=group_valid * zero_var, minlength=n_tags)
    sum_r = np.bincount(codes, weights=w_valid * scores, minlength=n_tags)
    mean_r = np.divide(sum_r, n_m, out=np.zeros(n_tags), where=n_m > 0)
    sq_dev = np.bincount(codes, weights=w_valid * (scores - mean_r[codes]) ** 2, minlength=n_tags)
    abs_sum = np.bincount(codes, weights=w_valid * scalar.abs().double().numpy(), minlength=n_tags)
    per_tag: dict[str, dict[str, float]] = {}
    for c in present_codes:
        tag = cfg.tags[c]
        per_tag[tag] = {
            "count": float(n_m[c]),
            "reward_mean": float(mean_r[c]),
            "reward_std": float(np.sqrt(sq_dev[c] / n_m[c])),
            "zero_var_frac": float(zero_var_per_tag[c] / groups_per_tag[c]),
            "difficulty": float(difficulties[tag]),
            "weight": float(weights[tag]),
            "balance": float(valid.sum() / (present_codes.size * n_m[c])) if cfg.balance else 1.0,
            "adv_abs_mean": float(abs_sum[c] / n_m[c]),
        }
    return MapoResult(advantages, advantages, per_tag)


def mapo_stratified_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    modality_tags: Sequence[str] | None = None,
    valid: np.ndarray | None = None,
    state: AdaptiveWeightState | None = None,
    epsilon: float = 1e-6,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The function verl calls for ``algorithm.adv_estimator=mapo_stratified``; returns (advantages, returns) (N, T).

    ``config`` is verl's ``algorithm`` section (``norm_adv_by_std_in_grpo`` and ``mapo.*`` are read from it).
    Explicit ``modality_tags``/``valid``/``state`` win; otherwise they come from the trainer's batch context.
    """
    ctx = current_batch_context()
    if modality_tags is None:
        if ctx is None:
            raise ValueError(
                f"{ESTIMATOR_NAME} needs one modality tag per response: pass modality_tags=..., or train with "
                "verl-modality installed (its trainer reads the 'modality_tag' data column)"
            )
        modality_tags = ctx.modality_tags
        valid = ctx.valid if valid is None else valid
        state = ctx.state if state is None else state
    if index is None:
        raise ValueError(f"{ESTIMATOR_NAME} needs the prompt-group index (verl's uid)")
    cfg = MapoConfig.from_algorithm_config(config)
    norm = bool(config.get("norm_adv_by_std_in_grpo", True)) if config is not None else True
    result = compute_mapo_advantage(
        token_level_rewards,
        response_mask,
        index,
        modality_tags,
        cfg,
        state,
        valid,
        epsilon,
        norm,
        step=ctx.step if ctx is not None else None,
    )
    if ctx is not None:
        ctx.stats = result.per_tag
    return result.advantages, result.returns
