"""Samples whose reward failed (``judge_failed``, the caption judge's ``on_failure: mark``) get zero advantage.

A marked sample's score becomes its group's mean valid score (``neutralize_failed`` of
:mod:`verl_modality.rewards.failed_scores`) in the step's stored ``rm_scores``, so its group-relative advantage is
exactly zero. This happens at the first point where the trainer reads the scores:

* with ``algorithm.filter_groups`` (verl's zero-variance group filter), when verl's replay buffer classifies the
  finished groups (:meth:`FailedRewards.before_group_filter`, wired in by :mod:`.group_filter`): the filter then
  sees the neutral value instead of a NaN, in ``rm_scores`` and in the ``reward_extra_info`` value it compares, so a
  group is removed exactly when its valid members agree (or none is valid), never because of the failure;
* otherwise (and for any sample the filter did not see), just before the advantages (:meth:`FailedRewards.apply`).

``reward/failed`` counts the failed samples of the step's batch, ``reward/failed_groups`` its groups without any valid
score, and with the filter on, ``reward/failed_filtered`` the failed samples in groups the filter removed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from verl_modality import protocol

logger = logging.getLogger(__name__)

#: reward functions that can mark a sample's reward as failed (``judge_failed``)
FAILING_REWARD_MODULES = ("verl_modality.rewards.score", "verl_modality.rewards.caption_judge")
#: verl's group-filter metric that reads ``rm_scores`` (any other name is a ``reward_extra_info`` key)
REWARD_METRIC = "reward"
#: the ``reward_extra_info`` key of the sample's score (NaN when marked failed)
SCORE_KEY = "score"


def reward_module(config: Any) -> str:
    """The dotted module of ``reward.custom_reward_function.path`` (``pkg://`` or a file path); ``""`` if unset."""
    path = str(OmegaConf.select(config, "reward.custom_reward_function.path", default="") or "")
    return path.removeprefix("pkg://").removesuffix(".py").replace("/", ".")


def extra_info_of(extra: Any) -> dict:
    """A trajectory's ``extra_fields`` as a dict (TransferQueue may hand it back wrapped in ``NonTensorData``)."""
    return getattr(extra, "data", extra) or {}


def failed_flags(extra_fields: Sequence[Any]) -> np.ndarray:
    """``(N,)`` bool: which trajectories' ``reward_extra_info`` carries ``judge_failed``."""
    return np.array(
        [
            bool(extra_info_of(e).get(protocol.REWARD_EXTRA_INFO, {}).get(protocol.REWARD_JUDGE_FAILED, 0))
            for e in extra_fields
        ],
        bool,
    )


def group_ids(keys: Sequence[str]) -> list[str]:
    """verl's prompt-group id (``uid``) of each trajectory key ``<uid>_<session>_<index>``: everything before the last
    two underscores, as verl's trainer splits it (``key.rsplit("_", 2)``), so a uid may hold underscores itself."""
    return [str(k).rsplit("_", 2)[0] for k in keys]


def rewrite_scores(rows: Sequence[torch.Tensor], totals: np.ndarray, failed: np.ndarray) -> list[torch.Tensor]:
    """Each failed row's token scores with the new sequence score ``totals[i]`` where its score sat, zeros elsewhere.

    Shapes: ``rows`` N tensors ``(R_i,)`` (verl's ``rm_scores``: the sequence score at one token); ``totals``,
    ``failed`` ``(N,)``. The score sits at the NaN entries, or for a failure marked with a finite score at the last
    non-zero entry (the last token when all are zero). Rows not failed are returned unchanged.
    """
    out = list(rows)
    for i in np.flatnonzero(failed):
        r = rows[i]
        where = torch.isnan(r)
        if not where.any():
            nz = torch.nonzero(r).flatten()
            where = torch.zeros_like(r, dtype=torch.bool)
            where[int(nz[-1]) if nz.numel() else r.numel() - 1] = True
        out[i] = torch.where(where, torch.as_tensor(totals[i], dtype=r.dtype), torch.zeros_like(r))
    return out


def _mean(values: Sequence[float]) -> float:
    # exact when the values agree (a float mean of equal values can differ in the last bit), so the filter's
    # zero-variance test still sees a group of agreeing valid members as one without variance
    return float(values[0]) if all(v == values[0] for v in values) else float(np.mean(values))


def neutral_metric_values(values: Sequence[Any], groups: Sequence[str], failed: np.ndarray) -> list[Any]:
    """``values`` with each failed sample's value replaced by its group's mean valid (numeric, finite) value (exactly
    their value when they agree), 0.0 when the group has none: the value verl's group filter then compares, which
    keeps a group's spread among its valid members."""
    out = list(values)
    for g in dict.fromkeys(g for g, f in zip(groups, failed, strict=True) if f):
        valid = [
            float(v)
            for v, h, f in zip(values, groups, failed, strict=True)
            if h == g and not f and isinstance(v, int | float) and np.isfinite(v)
        ]
        mean = _mean(valid) if valid else 0.0
        for i in np.flatnonzero(failed):
            if groups[i] == g:
                out[i] = mean
    return out


def _scores_value(rows: list[torch.Tensor], like: Any) -> torch.Tensor:
    if getattr(like, "is_nested", False):
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    return torch.stack(rows)


class FailedRewards:
    """Active with one of our reward functions (directly or through the router): the only ones that mark failures."""

    label = "failed-reward checks"

    def __init__(self, config: Any):
        self.enabled = reward_module(config).endswith(FAILING_REWARD_MODULES)
        self._neutralized: set[str] = set()  # trajectory keys rewritten before the group filter, not yet in a batch
        self._filtered = 0  # failed samples in groups the filter removed since the last batch

    def _neutralize(
        self, store: Any, partition_id: str, keys: list[str], metric: str | None, only: np.ndarray | None = None
    ) -> np.ndarray:
        """Rewrites the stored scores (and ``metric``'s ``reward_extra_info`` value) of ``keys``' failed samples (those
        also in ``only`` when given; the others count as valid); returns the rewritten rows' flags. ``keys`` must hold
        whole prompt groups."""
        from tensordict import NonTensorStack, TensorDict

        from verl_modality.rewards.failed_scores import neutralize_failed

        data = store.kv_batch_get(
            keys=keys, partition_id=partition_id, select_fields=[protocol.RM_SCORES, protocol.EXTRA_FIELDS]
        )
        extra = [extra_info_of(e) for e in data[protocol.EXTRA_FIELDS]]
        failed = failed_flags(extra) if only is None else failed_flags(extra) & only
        if not failed.any():
            return failed
        scores = data[protocol.RM_SCORES]
        rows = [r.detach().clone() for r in scores.unbind()]
        groups = group_ids(keys)
        totals = np.array([float(r.sum()) if not torch.isnan(r).any() else float("nan") for r in rows])
        new, _ = neutralize_failed(totals, groups, failed)
        fields: dict[str, Any] = {protocol.RM_SCORES: _scores_value(rewrite_scores(rows, new, failed), scores)}
        if metric is not None:  # the group filter reads reward_extra_info: its score and metric get the neutral value
            infos = [dict(e.get(protocol.REWARD_EXTRA_INFO, {})) for e in extra]
            # from the stored values themselves: the float64 score, not the float32 rm_scores, so agreeing valid
            # members and their failed peers compare exactly equal
            values = {
                key: neutral_metric_values([info.get(key) for info in infos], groups, failed)
                for key in dict.fromkeys((SCORE_KEY, metric))
                if key != REWARD_METRIC
            }
            for key, vals in values.items():
                for i in np.flatnonzero(failed):
                    if key in infos[i]:
                        infos[i][key] = float(vals[i])
            extra = [{**e, protocol.REWARD_EXTRA_INFO: info} for e, info in zip(extra, infos, strict=True)]
            fields[protocol.EXTRA_FIELDS] = NonTensorStack(*extra)
        store.kv_batch_put(keys=keys, partition_id=partition_id, fields=TensorDict(fields, batch_size=len(keys)))
        logger.warning("%d sample(s) with a failed reward got their group's mean score", int(failed.sum()))
        return failed

    def before_group_filter(self, store: Any, partition_id: str, keys: list[str], metric: str) -> dict[str, int]:
        """Neutralises the failed samples of newly finished groups (``keys``: all their trajectories) before verl's
        group filter compares ``metric``; returns ``{uid: failed samples}`` of the groups that had failures."""
        if not self.enabled or not keys:
            return {}
        failed = self._neutralize(store, partition_id, list(keys), metric)
        counts: dict[str, int] = {}
        for key, uid, f in zip(keys, group_ids(keys), failed, strict=True):
            if f:
                self._neutralized.add(str(key))
                counts[uid] = counts.get(uid, 0) + 1
        return counts

    def group_filtered(self, failed_samples: int) -> None:
        """Counts failed samples whose group verl's filter removed (reported with the next batch)."""
        self._filtered += int(failed_samples)

    def apply(self, store: Any, batch: Any, group_filter: bool = False) -> dict[str, float]:
        """Neutralises the batch's failed samples not yet rewritten; returns ``reward/*`` metrics (with
        ``reward/failed_filtered`` when the group filter is on)."""
        keys = [str(k) for k in batch.keys]
        data = store.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=[protocol.EXTRA_FIELDS])
        failed = failed_flags(list(data[protocol.EXTRA_FIELDS]))
        todo = failed & np.array([k not in self._neutralized for k in keys], dtype=bool)
        if todo.any():
            # the others were rewritten before the filter, whole groups at a time: valid scores by now
            self._neutralize(store, batch.partition_id, keys, None, only=todo)
        groups = np.asarray(group_ids(keys), dtype=object)
        empty = sum(bool(failed[groups == g].all()) for g in dict.fromkeys(groups[failed]))
        metrics = {"reward/failed": float(failed.sum()), "reward/failed_groups": float(empty)}
        if group_filter:
            metrics["reward/failed_filtered"] = float(self._filtered)
        self._neutralized.clear()  # sync sampling: every group rewritten for this batch was consumed or cleared
        self._filtered = 0
        return metrics
