"""Per-row data the trainer hands to the registered estimator, which verl calls with rewards, mask and uid only.

The trainer opens a :func:`batch_context` around verl's advantage step; ``mapo_stratified_advantage`` reads the tags,
the padding flags and the adaptive-weight state from it and writes its per-tag statistics back into ``stats``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState


@dataclass
class BatchContext:
    """What the trainer knows about the N rows of the batch that verl does not pass to estimators.

    ``modality_tags`` (N,): each response's required-modality tag, row-aligned with verl's batch.
    ``valid`` (N,) bool or None: False for verl's synthetic padding rows (None = all real).
    ``state``: the run's adaptive-weight history (None: a fresh one per call when adaptive weights are on).
    ``step``: the training step (verl's ``global_steps``), the clock of the history window.
    ``stats``: filled in place by the estimator, ``{tag: {statistic: value}}`` (see ``MapoResult.per_tag``).
    """

    modality_tags: Sequence[str]
    valid: np.ndarray | None = None
    state: AdaptiveWeightState | None = None
    step: int | None = None
    stats: dict[str, dict[str, float]] = field(default_factory=dict)


_CURRENT: list[BatchContext] = []


@contextmanager
def batch_context(ctx: BatchContext) -> Iterator[BatchContext]:
    """Make ``ctx`` the current batch context for the duration of the block (not re-entrant)."""
    if _CURRENT:
        raise RuntimeError("a batch context is already active; batch contexts do not nest")
    _CURRENT.append(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.clear()


def current_batch_context() -> BatchContext | None:
    """The active context, or None outside :func:`batch_context`."""
    return _CURRENT[-1] if _CURRENT else None
