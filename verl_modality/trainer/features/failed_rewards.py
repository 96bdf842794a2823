"""Samples whose reward failed (``judge_failed``, the caption judge's ``on_failure: mark``) get zero advantage.

Before any advantage is computed, a marked sample's score becomes its group's mean valid score
(:func:`verl_modality.rewards.failed_scores.neutralize_failed`); ``reward/failed`` counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

logger = logging.getLogger(__name__)

#: reward functions that can mark a sample's reward as failed (``judge_failed``)
FAILING_REWARD_MODULES = ("verl_modality.rewards.score", "verl_modality.rewards.caption_judge")


def failed_flags(extra_fields: Sequence[Any]) -> np.ndarray:
    """``(N,)`` bool: which trajectories' ``reward_extra_info`` carries ``judge_failed``."""
    infos = [getattr(e, "data", e) for e in extra_fields]
    return np.array([bool((e or {}).get("reward_extra_info", {}).get("judge_failed", 0)) for e in infos], dtype=bool)


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


class FailedRewards:
    """Active with one of our reward functions (directly or through the router): the only ones that mark failures."""

    label = "failed-reward checks"

    def __init__(self, config: Any):
        path = str(OmegaConf.select(config, "reward.custom_reward_function.path", default="") or "")
        module = path.removeprefix("pkg://").removesuffix(".py").replace("/", ".")  # pkg:// or a file path
        self.enabled = module.endswith(FAILING_REWARD_MODULES)

    def apply(self, store: Any, batch: Any) -> dict[str, float]:
        """Rewrites the step's ``rm_scores`` in ``store`` where rewards failed; returns ``reward/*`` metrics."""
        from tensordict import TensorDict

        from verl_modality.rewards.failed_scores import neutralize_failed

        data = store.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["rm_scores", "extra_fields"]
        )
        failed = failed_flags(list(data["extra_fields"]))
        if not failed.any():
            return {"reward/failed": 0.0}
        scores = data["rm_scores"]
        rows = [r.detach().clone() for r in scores.unbind()]
        groups = [str(k).split("_")[0] for k in batch.keys]  # verl's trajectory keys are "<uid>_<index>"
        totals = np.array([float(r.sum()) if not torch.isnan(r).any() else float("nan") for r in rows])
        new, stats = neutralize_failed(totals, groups, failed)
        rows = rewrite_scores(rows, new, failed)
        value = (
            torch.nested.as_nested_tensor(rows, layout=torch.jagged)
            if getattr(scores, "is_nested", False)
            else torch.stack(rows)
        )
        store.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({"rm_scores": value}, batch_size=len(batch)),
        )
        logger.warning("%d sample(s) with a failed reward got their group's mean score", int(failed.sum()))
        return stats
