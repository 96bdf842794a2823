"""Zero-variance groups (MAPLE §5.2): which prompt groups carry no learning signal, and how many of the rest a step can
train on.

A group (the ``n`` responses of one prompt) whose rewards are all equal has zero GRPO advantage everywhere. MAPLE's
*early filtering* removes such groups at batch construction, so the step's log-prob and update passes run on fewer
samples; nothing is generated to replace them (that is DAPO's dynamic sampling, verl's ``algorithm.filter_groups``).

The kept groups must still split into the configured number of mini-batches (``train_batch_size /
ppo_mini_batch_size``) of equal size, each mini-batch's samples over the data-parallel ranks, and (without dynamic
batch sizes) each rank's share into whole micro-batches: the rule is to keep the largest count that does, dropping
the surplus groups last in the step's order (:func:`trainable_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def zero_variance_groups(groups: Sequence[str], values: Sequence[float]) -> set[str]:
    """The groups of more than one sample whose ``values`` are all equal (verl's own test: population std 0).

    Shapes: ``groups``, ``values`` ``(N,)``; a non-finite value makes its group count as having variance (a failed
    reward must be neutralised before it is compared)."""
    if len(groups) != len(values):
        raise ValueError(f"{len(groups)} group ids for {len(values)} values")
    by_group: dict[str, list[float]] = {}
    for g, v in zip(groups, values, strict=True):
        by_group.setdefault(str(g), []).append(float(v))
    out = set()
    for g, vals in by_group.items():
        arr = np.asarray(vals, dtype=np.float64)
        if len(arr) > 1 and np.isfinite(arr).all() and float(np.std(arr)) == 0.0:
            out.add(g)
    return out


def trainable_groups(
    kept: int, mini_batches: int, n: int, dp_size: int, micro_batch: int = 1, infer_micro_batch: int = 1
) -> int:
    """The largest ``k <= kept`` whose ``k * n`` samples split into ``mini_batches`` equal mini-batches, each mini-batch
    into ``dp_size`` equal rank shares of whole update micro-batches (``micro_batch`` samples), and each rank's
    ``k * n / dp_size`` samples into whole log-prob micro-batches (``infer_micro_batch``); 0 when none does."""
    if min(mini_batches, n, dp_size, micro_batch, infer_micro_batch) < 1 or kept < 0:
        raise ValueError(
            f"kept={kept}, mini_batches={mini_batches}, n={n}, dp_size={dp_size}, micro_batch={micro_batch}, "
            f"infer_micro_batch={infer_micro_batch}: expected counts >= 1"
        )
    for k in range(kept - kept % mini_batches, 0, -mini_batches):
        per_mini = (k // mini_batches) * n
        if per_mini % (dp_size * micro_batch) == 0 and (k * n) % (dp_size * infer_micro_batch) == 0:
            return k
    return 0
