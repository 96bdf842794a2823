"""Scores of samples whose reward could not be computed (the caption judge's ``on_failure: mark`` policy).

A marked sample carries ``judge_failed = 1`` and a NaN score. Training never reads that NaN as a reward: before the
advantages, the sample's score becomes the mean of the valid scores of its prompt group, so its group-relative
advantage is exactly zero (it pushes the policy neither way) and the group's mean is unchanged. A group with no
valid score at all gets 0 for every member, which again gives zero advantages. The count is logged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def neutralize_failed(
    scores: np.ndarray, groups: Sequence[str], failed: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """Replace the scores of failed samples by their group's mean valid score.

    Args:
        scores: ``(N,)`` scalar rewards; failed entries may be NaN.
        groups: ``N`` prompt-group ids (verl's ``uid``).
        failed: ``(N,)`` bool, the samples whose reward failed.
    Returns:
        the new ``(N,)`` scores and metrics ``reward/failed`` (count) and ``reward/failed_groups`` (groups
        without any valid score). Raises ``ValueError`` when a sample that is not marked failed has a non-finite
        score (a NaN reward from anywhere else is a bug, not a failure to paper over).
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    failed = np.asarray(failed, dtype=bool)
    if scores.shape != failed.shape or len(groups) != len(scores):
        raise ValueError(f"shapes differ: scores {scores.shape}, failed {failed.shape}, {len(groups)} group ids")
    bad = np.flatnonzero(~failed & ~np.isfinite(scores))
    if bad.size:
        raise ValueError(
            f"{bad.size} reward(s) are not finite and not marked as failed (first at row {int(bad[0])}, "
            f"score {scores[bad[0]]}); the reward function must return a number or mark the failure"
        )
    empty_groups = 0
    if failed.any():
        keys = np.asarray([str(g) for g in groups], dtype=object)
        for g in dict.fromkeys(keys[failed]):
            members = keys == g
            valid = members & ~failed
            if valid.any():
                kept = scores[valid]
                # exactly their score when the valid members agree (a float mean of equal values can differ in the
                # last bit), so a zero-variance test still sees the group as one without variance
                scores[members & failed] = kept[0] if np.all(kept == kept[0]) else kept.mean()
            else:
                scores[members] = 0.0
                empty_groups += 1
    return scores, {"reward/failed": float(failed.sum()), "reward/failed_groups": float(empty_groups)}
