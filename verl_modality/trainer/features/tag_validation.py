"""Per-tag validation metrics on top of verl's: accuracy per tag, pooled and tag-averaged, per uni/bi/tri level with
the modality gap, and per stratum, as ``verl-modality report`` computes them (docs/method.md §8).

verl's validation loop knows a sample by its ``uid`` only; :class:`UidTagRecorder` wraps the validation dataloader
and remembers each uid's tag and stratum, which :meth:`TagValidation.metrics` then looks up. This relies on verl 0.9.1's
``PPOTrainer._validate`` (``verl/trainer/ppo/v1/trainer_base.py``) doing three things, each checked by
tests/trainer/features/test_tag_validation.py against verl's source: it iterates ``self.val_dataloader``; it sets
``batch_dict["uid"]`` (one fresh uuid per row) on the yielded dict itself, before the rows go to the rollout; and it
hands ``_val_metrics_update`` the ``uid`` field of each response as ``sample_uids``. The rows' other fields reach
``_val_metrics_update`` only as the reward's ``reward_extra_info`` (a custom reward function owes us nothing there),
so the uid is the one thin key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from verl_modality import protocol
from verl_modality.data import schema

TAG_FIELD = schema.MODALITY_TAG
STRATUM_FIELD = schema.STRATUM
_PREFIX, _SUFFIX = "val-core/tag/", "/acc"
_POOLED = ("pooled", "tag_mean")


def tag_accuracy_metrics(
    tags: list[str], scores: list[float | None], strata: list[str] | None = None
) -> dict[str, float]:
    """Validation accuracy per tag, pooled over all responses, averaged over tags (each tag counts once), per
    uni/bi/tri level with the modality gap, and per stratum (:mod:`verl_modality.evaluation.metrics`).

    Shapes: ``tags``, ``scores`` (and ``strata``) are parallel lists of length N (one entry per validation response).
    A score of None or NaN (a caption whose judge failed) is left out and counted in ``val-aux/tag/unscored``.
    """
    from verl_modality.evaluation.metrics import gap_from_levels, pool_levels, pooled

    if len(tags) != len(scores) or (strata is not None and len(strata) != len(tags)):
        raise ValueError(f"{len(tags)} tags for {len(scores)} validation scores and {len(strata or [])} strata")
    by_tag: dict[str, list[float]] = defaultdict(list)
    by_stratum: dict[str, list[float]] = defaultdict(list)
    unscored = 0
    for i, (tag, score) in enumerate(zip(tags, scores, strict=True)):
        if score is None or not np.isfinite(float(score)):
            unscored += 1
            continue
        by_tag[tag].append(float(score))
        if strata is not None:
            by_stratum[str(strata[i])].append(float(score))
    out: dict[str, float] = {}
    per_tag = {tag: (float(np.mean(v)), len(v)) for tag, v in by_tag.items()}
    for tag in sorted(per_tag):
        out[f"{_PREFIX}{tag}{_SUFFIX}"] = per_tag[tag][0]
        out[f"val-aux/tag/{tag}/count"] = float(per_tag[tag][1])
    if per_tag:
        out[f"{_PREFIX}pooled{_SUFFIX}"] = float(pooled(per_tag))
        out[f"{_PREFIX}tag_mean{_SUFFIX}"] = float(np.mean([a for a, _ in per_tag.values()]))
        levels = pool_levels(per_tag)
        for name, lvl in levels.items():
            if lvl is not None:
                out[f"val-aux/level/{name}/acc"] = lvl.accuracy
        gap = gap_from_levels(levels)
        for term in ("u_b", "u_t", "b_t", "gap"):
            if getattr(gap, term) is not None:
                out[f"val-aux/modality_gap/{term}"] = float(getattr(gap, term))
    for stratum in sorted(by_stratum):
        out[f"val-aux/stratum/{stratum}/acc"] = float(np.mean(by_stratum[stratum]))
    if unscored:
        out["val-aux/tag/unscored"] = float(unscored)
    return out


def validation_scores(reward_extra_infos: Mapping[str, Sequence[Any]]) -> list[float | None]:
    """Each validation response's score: the reward function's ``acc`` where it reports one (else the reward), None
    for a response whose reward failed (``judge_failed``: a caption whose judge failed is unscored, not its NaN)."""
    rewards = list(reward_extra_infos["reward"])
    acc = reward_extra_infos.get(protocol.REWARD_ACC)
    if not acc:
        return rewards
    failed = reward_extra_infos.get(protocol.REWARD_JUDGE_FAILED) or [None] * len(acc)
    return [None if f else (r if a is None else a) for a, r, f in zip(acc, rewards, failed, strict=True)]


def tag_accuracies(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{tag: accuracy}`` from the ``val-core/tag/<tag>/acc`` metrics (pooled and tag mean left out)."""
    out = {}
    for key, value in metrics.items():
        if key.startswith(_PREFIX) and key.endswith(_SUFFIX):
            tag = key[len(_PREFIX) : -len(_SUFFIX)]
            if tag not in _POOLED:
                out[tag] = value
    return out


class UidTagRecorder:
    """Wraps the validation dataloader and remembers ``uid -> (modality_tag, stratum)`` for every batch verl processes.

    verl's ``_validate`` assigns ``batch_dict["uid"]`` after the loader yields the batch, so each batch is read back
    when the next one is requested (and the last one when the loop ends).
    """

    def __init__(self, loader: Any, sink: dict[str, tuple[str, str | None]]):
        self._loader = loader
        self._sink = sink

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        for batch_dict in self._loader:
            yield batch_dict
            self._record(batch_dict)

    def _record(self, batch_dict: dict) -> None:
        if TAG_FIELD not in batch_dict:
            raise KeyError(
                f"validation data has no '{TAG_FIELD}' column; per-tag metrics need it (see docs/data_schema.md)"
            )
        if protocol.UID not in batch_dict:
            raise KeyError(
                f"verl's validation loop did not set batch_dict[{protocol.UID!r}] on the loader's batch, which per-tag "
                "validation metrics rely on (verl_modality.trainer.features.tag_validation); has verl's _validate changed?"
            )
        strata = batch_dict.get(STRATUM_FIELD)
        for i, (uid, tag) in enumerate(zip(batch_dict[protocol.UID], batch_dict[TAG_FIELD], strict=True)):
            self._sink[str(uid)] = (str(tag), None if strata is None else str(strata[i]))


class TagValidation:
    """Per-tag validation metrics, on when the run has tag metrics."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.uid_tags: dict[str, tuple[str, str | None]] = {}

    @contextmanager
    def recording(self, owner: Any) -> Iterator[None]:
        """For one validation: ``owner.val_dataloader`` records each uid's tag; the loader is restored after."""
        self.uid_tags = {}
        loader = owner.val_dataloader
        owner.val_dataloader = UidTagRecorder(loader, self.uid_tags)
        try:
            yield
        finally:
            owner.val_dataloader = loader

    def metrics(self, sample_uids: Sequence[Any], reward_extra_infos: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        """The per-tag metrics of one validation's responses (uids as verl lists them)."""
        missing = [u for u in sample_uids if str(u) not in self.uid_tags]
        if missing:
            raise KeyError(f"no modality tag recorded for validation uids {missing[:5]} ({len(missing)} in all)")
        tags = [self.uid_tags[str(u)][0] for u in sample_uids]
        strata = [self.uid_tags[str(u)][1] for u in sample_uids]
        scores = validation_scores(reward_extra_infos)
        return tag_accuracy_metrics(tags, scores, None if None in strata else strata)
