"""``mapo_stratified``: MAPLE's modality-stratified GRPO advantage (docs/method.md §2, steps 1-4).

For N responses with prompt group g(i) (verl's ``uid``), tag M(i) and score r_i (the row sum of
``token_level_rewards``, as in verl):

1. group step, verl's GRPO: A_i = (r_i - mean_g) / (std_g + eps), or r_i - mean_g (:func:`group_advantage`);
2. stratum balance: A_i *= N / (K * n_M), K distinct tags, n_M responses of tag M (Eq. 2, :func:`stratum_balance`);
3. adaptive weights: A_i *= w_M (Eq. 3-4, :class:`~.adaptive_weights.AdaptiveWeightState`);
4. D_M, the tag's difficulty, feeds step 3 (:mod:`.difficulty`).

verl's synthetic padding rows (``valid`` False) get A = 0 and are left out of N, K, n_M, the difficulties and every
statistic. With one tag, balance and adaptive weights off, the result is verl's GRPO bit for bit.

This module imports torch, numpy and pandas only (no verl trainer code); verl calls :func:`mapo_stratified_advantage`
once it is registered under :data:`ESTIMATOR_NAME` (the plugin entry point does that).
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
from verl_modality.algorithms.difficulty import detect_reward_kind, tag_difficulty

ESTIMATOR_NAME = "mapo_stratified"


def _factorize(labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) -> (id per row (N,) int64, distinct labels (U,)), ids in order of first appearance.

    Labels are compared like dict keys (what verl's GRPO groups by); None/NaN labels are an error.
    """
    arr = labels if isinstance(labels, np.ndarray) else np.asarray(labels, dtype=object)
    ids, uniques = pd.factorize(arr.reshape(-1), sort=False)
    if (ids < 0).any():
        raise ValueError(f"{what} contain None/NaN at rows {np.flatnonzero(ids < 0)[:10].tolist()}")
    return ids.astype(np.int64, copy=False), np.asarray(uniques, dtype=object)


def _row_mean_std(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``torch.mean`` and unbiased ``torch.std`` of ``values`` (G, n), n >= 2, each row as verl computes it.

    verl's looped GRPO reduces each group as its own 1-D tensor. For that shape torch's CPU ``std`` (float32,
    float64) is a two-pass sum in double: m = mean in the tensor's dtype, sum_j (double(x_j) - m)^2 accumulated in
    order, divided by n - 1, correctly rounded sqrt, cast back. ``torch.std(values, dim=1)`` uses Welford instead and
    differs in the last bit (and on constant groups, where the rounded mean is not exactly the value), so that sum is
    replayed here with numpy (``cumsum`` is sequential; numpy's ``sqrt`` is correctly rounded, unlike torch's
    vectorised one). ``torch.mean(dim=1)`` performs the same reduction as the 1-D mean. bf16/fp16 use
    ``torch.std(dim=1)``, which is what the 1-D path does for them. Groups larger than torch's parallel grain
    (32768 rows) are reduced in thread-dependent chunks by torch and may differ in the last bit.
    """
    n = values.shape[1]
    mean = torch.mean(values, dim=1)
    if values.dtype in (torch.float32, torch.float64):
        dx = values.double().numpy() - mean.double().numpy()[:, None]
        sum_sq = np.cumsum(dx * dx, axis=1)[:, -1]
        std = torch.from_numpy(np.sqrt(sum_sq / (n - 1.0))).to(values.dtype)
    else:
        std = torch.std(values, dim=1)
    return mean, std


def group_advantage(scores: torch.Tensor, index: Any, epsilon: float = 1e-6, norm_by_std: bool = True) -> torch.Tensor:
    """GRPO's group-normalised scalar advantage, vectorised. Shapes: ``scores`` (N,), ``index`` (N,) -> (N,).

    ``index`` holds the group labels (verl's ``uid``: str or int). Same conventions as verl's
    ``compute_grpo_outcome_advantage``: unbiased std, singleton groups use mean 0 and std 1 (as float32 scalars),
    ``(r - mean) / (std + epsilon)``, or ``r - mean`` without ``norm_by_std``. The result equals verl's looped GRPO
    bit for bit (``torch.equal``; tested for float32, float64 and bf16 scores, singleton and unequal groups, see
    :func:`_row_mean_std`). It can differ from verl's ``grpo_vectorized`` in the last bit, which uses another
    reduction order. No Python loop over groups: one batched reduction per distinct group size.
    Computed on the CPU; the result is returned on ``scores``' device.
    """
    device = scores.device
    scores = scores.detach().reshape(-1).cpu()
    gid, uniques = _factorize(index, "group labels")
    if gid.size != scores.numel():
        raise ValueError(f"{scores.numel()} scores but {gid.size} group labels")
    counts = np.bincount(gid, minlength=uniques.size)
    dtype = scores.dtype
    mean_g = torch.zeros(uniques.size, dtype=dtype)
    # verl: singleton groups divide by torch.tensor(1.0) + epsilon, a float32 scalar, promoted to the score dtype.
    denom_g = torch.full((uniques.size,), float(torch.tensor(1.0) + epsilon), dtype=torch.float64).to(dtype)
    order = torch.from_numpy(np.argsort(gid, kind="stable"))  # rows grouped, original order within each group
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for size in np.unique(counts):
        if size < 2:
            continue
        groups = np.flatnonzero(counts == size)
        rows = order[torch.from_numpy(starts[groups][:, None] + np.arange(size)[None, :])]  # (groups, size)
        mean, std = _row_mean_std(scores[rows])
        g = torch.from_numpy(groups)
        mean_g[g] = mean
        denom_g[g] = std + epsilon
    g_all = torch.from_numpy(gid)
    out = scores - mean_g[g_all]
    if norm_by_std:
        out = out / denom_g[g_all]
    return out.to(device)


def stratum_balance(tags: Sequence[str], valid: np.ndarray | None = None) -> np.ndarray:
    """Eq. 2's 1/|B_M| as a per-row factor N / (K * n_M), shape (N,) float64; 0 for invalid rows.

    N, K (distinct tags) and n_M count valid rows only, so each present tag's factors sum to N / K.
    """
    ids, uniques = pd.factorize(np.asarray(tags, dtype=object).reshape(-1), sort=False)
    valid = np.ones(ids.size, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(-1)
    if valid.size != ids.size:
        raise ValueError(f"valid has {valid.size} entries for {ids.size} tags")
    missing = np.flatnonzero(valid & (ids < 0))
    if missing.size:
        raise ValueError(f"modality tags contain None/NaN at rows {missing[:10].tolist()}")
    n_m = np.bincount(ids[valid], minlength=len(uniques)).astype(np.float64)
    n, k = float(valid.sum()), int((n_m > 0).sum())
    per_tag = np.divide(n, k * n_m, out=np.zeros_like(n_m), where=n_m > 0)
    return np.where(valid, per_tag[ids], 0.0) if len(uniques) else np.zeros(ids.size)


@dataclass
class MapoResult:
    """Output of :func:`compute_mapo_advantage`.

    ``advantages``, ``returns`` (N, T): equal, masked by ``response_mask`` (as verl's GRPO returns them).
    ``per_tag``: for each tag present among the valid rows, in canonical tag order: ``count`` (responses),
    ``reward_mean``, ``reward_std`` (population std of the scores), ``zero_var_frac`` (fraction of the tag's prompt
    groups whose scores are all equal), ``difficulty`` (D_M; NaN when adaptive weights are off and the scores are
    neither 0/1 nor in [0, 1], since D is then undefined), ``weight`` (w_M; 1.0 with adaptive weights off),
    ``balance`` (N / (K n_M); 1.0 with balance off), ``adv_abs_mean`` (mean |A_i| of the final scalar advantages).
    """

    advantages: torch.Tensor
    returns: torch.Tensor
    per_tag: dict[str, dict[str, float]] = field(default_factory=dict)


def _check_rows(scores: np.ndarray, tags: np.ndarray, index: np.ndarray, valid: np.ndarray, allowed) -> None:
    bad = np.flatnonzero(valid & ~np.isfinite(scores))
    if bad.size:
        detail = ", ".join(f"row {i} (uid {index[i]}): {scores[i]}" for i in bad[:10])
        raise ValueError(
            f"{ESTIMATOR_NAME}: {bad.size} response(s) have a non-finite reward (sum of token_level_rewards): {detail}"
        )
    allowed_set = set(allowed)
    tag_ids, uniques = pd.factorize(tags, sort=False)  # None/NaN tags get id -1
    bad_codes = [c for c, t in enumerate(uniques) if not isinstance(t, str) or t not in allowed_set]
    rows = np.flatnonzero(valid & ((tag_ids < 0) | np.isin(tag_ids, bad_codes)))
    if rows.size:
        unknown = sorted({tags[i] if isinstance(tags[i], str) else repr(tags[i]) for i in rows})
        raise ValueError(
            f"{ESTIMATOR_NAME}: unknown modality tag(s) {unknown} at rows {rows[:10].tolist()}"
            f"{' ...' if rows.size > 10 else ''}; allowed tags are {list(allowed)}"
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
    """docs/method.md §2 steps 1-4 on one batch.

    Shapes: ``token_level_rewards``, ``response_mask`` (N, T); ``index`` (group labels), ``modality_tags`` and
    ``valid`` (bool, False = padding row) (N,). ``step`` is the training step for the history window.
    With ``difficulty="auto"`` the reward kind is detected once per batch over its valid scores (binary when all
    are 0 or 1), so every tag of a step is measured on the same scale. With adaptive weights on and ``state`` None,
    a fresh :class:`AdaptiveWeightState` is used, whose history then holds this step's difficulties only.

    Raises ``ValueError`` for mismatched lengths, a non-finite score (naming rows and uids), an unknown tag (naming
    it, its rows and the allowed tags), or a batch without valid rows.
    """
    cfg = config or MapoConfig()
    tags, index_arr, valid = _batch_arrays(token_level_rewards, response_mask, index, modality_tags, valid)
    with torch.no_grad():
        scores_t = token_level_rewards.sum(dim=-1).detach().cpu()
        scores = scores_t.double().numpy()
        _check_rows(scores, tags, index_arr, valid, cfg.tags)

        # Step 1. Padding rows become singleton groups of their own, so they never touch a real group's statistics.
        gid, uniques = _factorize(index_arr, "group labels (index)")
        if not valid.all():
            pad = np.flatnonzero(~valid)
            gid = gid.copy()
            gid[pad] = uniques.size + np.arange(pad.size)
        adv = group_advantage(scores_t, gid, epsilon, norm_adv_by_std_in_grpo)
        codes = _tag_codes(tags, valid, gid, index_arr, cfg.tags)

        # Step 2.
        balance = stratum_balance(tags, valid) if cfg.balance else valid.astype(np.float64)
        # Steps 4 and 3.
        difficulties, weights = _tag_weights(scores, valid, codes, cfg, state, step)
        code_weight = np.zeros(len(cfg.tags))
        for tag, w in weights.items():
            code_weight[cfg.tags.index(tag)] = w

        factor = balance * code_weight[codes]  # 0 on padding rows
        scalar = adv * torch.from_numpy(factor).to(adv.dtype)
        scalar = torch.where(torch.from_numpy(valid), scalar, torch.zeros((), dtype=scalar.dtype))
        advantages = scalar.to(response_mask.device).unsqueeze(-1) * response_mask

    per_tag = _tag_stats(scores, valid, gid, codes, balance, scalar.abs().double().numpy(), cfg.tags)
    for tag, stats in per_tag.items():
        stats["difficulty"] = float(difficulties[tag])
        stats["weight"] = float(weights[tag])
    return MapoResult(advantages, advantages, per_tag)


def _batch_arrays(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any, modality_tags: Any, valid: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tags, index, valid)`` as flat arrays of the batch's N rows, after the shape checks."""
    if token_level_rewards.dim() != 2 or response_mask.shape != token_level_rewards.shape:
        raise ValueError(
            f"{ESTIMATOR_NAME}: token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must both be (N, T)"
        )
    n = token_level_rewards.shape[0]
    tags = np.asarray(modality_tags, dtype=object).reshape(-1)
    index_arr = index if isinstance(index, np.ndarray) else np.asarray(index, dtype=object)
    index_arr = index_arr.reshape(-1)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(-1)
    for name, arr in (("modality_tags", tags), ("index", index_arr), ("valid", valid)):
        if arr.size != n:
            raise ValueError(f"{ESTIMATOR_NAME}: {name} has {arr.size} entries for {n} responses")
    if not valid.any():
        raise ValueError(f"{ESTIMATOR_NAME}: the batch has no real responses (all {n} rows are padding)")
    return tags, index_arr, valid


def _tag_codes(
    tags: np.ndarray, valid: np.ndarray, gid: np.ndarray, index: np.ndarray, allowed: Sequence[str]
) -> np.ndarray:
    """Each row's tag as its position in ``allowed`` (N,); per-tag reductions are then bincounts. Padding rows with
    a missing tag get 0 (they carry weight 0). Raises ``ValueError`` for a prompt group with more than one tag: its
    responses share the prompt, so a mix means tags and rows are misaligned."""
    tag_ids, tag_uniques = pd.factorize(tags, sort=False)
    code_of = {t: i for i, t in enumerate(allowed)}
    codes = np.array([code_of.get(t, 0) if isinstance(t, str) else 0 for t in tag_uniques] + [0], np.int64)
    codes = codes[tag_ids]  # a missing tag (-1) maps to the appended 0
    group_code = np.zeros(gid.max() + 1, dtype=np.int64)
    group_code[gid[valid][::-1]] = codes[valid][::-1]  # the code of each group's first valid row
    mixed = np.unique(gid[valid & (codes != group_code[gid])])[:5]
    if mixed.size:
        detail = "; ".join(
            f"uid {index[valid & (gid == g)][0]}: tags {sorted(set(tags[valid & (gid == g)]))}" for g in mixed
        )
        raise ValueError(f"{ESTIMATOR_NAME}: prompt groups with more than one modality tag: {detail}")
    return codes


def _tag_weights(
    scores: np.ndarray,
    valid: np.ndarray,
    codes: np.ndarray,
    cfg: MapoConfig,
    state: AdaptiveWeightState | None,
    step: int | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """docs/method.md §2 steps 4 and 3: ``({tag: difficulty}, {tag: weight})`` for the tags present among the valid rows."""
    kind = detect_reward_kind(scores[valid]) if cfg.difficulty == "auto" else cfg.difficulty
    difficulties = {}
    for c in np.unique(codes[valid]):
        tag = cfg.tags[c]
        try:
            difficulties[tag] = tag_difficulty(scores[valid & (codes == c)], kind, cfg)
        except ValueError as err:
            if cfg.adaptive_weights:
                raise ValueError(
                    f"{ESTIMATOR_NAME}: difficulty of tag {tag!r} ({kind} rewards): {err}. Adaptive "
                    "weights need rewards in [0, 1] (MAPLE's KL to Beta(100, 1)); rescale the reward or turn "
                    "algorithm.mapo.adaptive_weights off"
                ) from err
            difficulties[tag] = float("nan")  # only a statistic here; GRPO itself takes any scale
    if not cfg.adaptive_weights:
        return difficulties, dict.fromkeys(difficulties, 1.0)
    state = state if state is not None else AdaptiveWeightState(cfg)
    return difficulties, state.weights(difficulties, step)


def _tag_stats(
    scores: np.ndarray,
    valid: np.ndarray,
    gid: np.ndarray,
    codes: np.ndarray,
    balance: np.ndarray,
    adv_abs: np.ndarray,
    allowed: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per-tag statistics over the valid rows (all shapes (N,)): count, reward mean / std, the fraction of
    zero-variance groups (per-group min == max), the balance factor and the mean |advantage|."""
    n_tags = len(allowed)
    w_valid = valid.astype(np.float64)
    n_m = np.bincount(codes, weights=w_valid, minlength=n_tags)
    counts = np.bincount(gid)
    order = np.argsort(gid, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_scores = scores[order]
    zero_var = np.maximum.reduceat(sorted_scores, starts) == np.minimum.reduceat(sorted_scores, starts)
    first_rows = order[starts]
    group_valid = w_valid[first_rows]
    groups_per_tag = np.bincount(codes[first_rows], weights=group_valid, minlength=n_tags)
    zero_var_per_tag = np.bincount(codes[first_rows], weights=group_valid * zero_var, minlength=n_tags)
    sum_r = np.bincount(codes, weights=w_valid * np.where(valid, scores, 0.0), minlength=n_tags)
    mean_r = np.divide(sum_r, n_m, out=np.zeros(n_tags), where=n_m > 0)
    dev = np.where(valid, scores - mean_r[codes], 0.0)
    sq_dev = np.bincount(codes, weights=dev * dev, minlength=n_tags)
    abs_sum = np.bincount(codes, weights=adv_abs, minlength=n_tags)
    per_tag: dict[str, dict[str, float]] = {}
    for c in np.flatnonzero(n_m > 0):
        per_tag[allowed[c]] = {
            "count": float(n_m[c]),
            "reward_mean": float(mean_r[c]),
            "reward_std": float(np.sqrt(sq_dev[c] / n_m[c])),
            "zero_var_frac": float(zero_var_per_tag[c] / groups_per_tag[c]),
            "balance": float(balance[np.flatnonzero(valid & (codes == c))[0]]),
            "adv_abs_mean": float(abs_sum[c] / n_m[c]),
        }
    return per_tag


def mapo_stratified_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    modality_tags: Sequence[str] | None = None,
    valid: np.ndarray | None = None,
    state: AdaptiveWeightState | None = None,
    epsilon: float = 1e-6,
    step: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The function verl calls for ``algorithm.adv_estimator=mapo_stratified``; returns (advantages, returns) (N, T).

    ``config`` is verl's ``algorithm`` section (DictConfig, dict or None): ``norm_adv_by_std_in_grpo`` (default
    True) and ``mapo.*`` (:meth:`MapoConfig.from_algorithm_config`) are read from it. ``index`` is verl's ``uid``
    array. Each of ``modality_tags``, ``valid``, ``state`` and ``step`` given here wins; a missing one comes from
    the active :func:`~.batch_context.batch_context` (the trainer opens one). Without tags from either, this raises
    ``ValueError``. Other keyword arguments verl passes (``non_tensor_batch``, ...) are ignored. When a context is
    active its ``stats`` dict is updated in place with the per-tag statistics (:class:`MapoResult`).
    """
    ctx = current_batch_context()
    if modality_tags is None:
        if ctx is None:
            raise ValueError(
                f"{ESTIMATOR_NAME} needs one modality tag per response: call it with modality_tags=[...] (N,), or "
                "inside verl_modality.algorithms.batch_context.batch_context(BatchContext(modality_tags=...)); in "
                "training, verl-modality's trainer does that from the data's 'modality_tag' column"
            )
        modality_tags = ctx.modality_tags
    if ctx is not None:
        valid = ctx.valid if valid is None else valid
        state = ctx.state if state is None else state
        step = ctx.step if step is None else step
    if index is None:
        raise ValueError(f"{ESTIMATOR_NAME} needs the prompt-group index (verl's uid): pass index=...")
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
        step=step,
    )
    if ctx is not None:
        ctx.stats.clear()
        ctx.stats.update(result.per_tag)
    return result.advantages, result.returns
