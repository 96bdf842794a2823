"""Per-row data the trainer hands to the registered estimator, which verl calls with rewards, mask and uid only.

The trainer opens a :func:`batch_context` around verl's advantage step; ``mapo_stratified_advantage`` reads the tags,
the padding flags and the adaptive-weight state from it and writes its per-tag statistics back into ``stats``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class BatchContext:
    """``modality_tags`` (N,), ``valid`` (N,) bool (False for verl's synthetic padding rows), state, step, stats."""

    modality_tags: Sequence[str]
    valid: np.ndarray | None = None
    state: Any = None  # AdaptiveWeightState
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
