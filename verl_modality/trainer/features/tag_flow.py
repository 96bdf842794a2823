"""Per-tag data flow in training: each row's modality tag to the estimator, and per-tag training metrics.

verl calls an advantage estimator with rewards, mask and uid only. :meth:`TagFlow.advantage_context` hands the
``mapo_stratified`` estimator the rows' ``modality_tag`` (a dataset column stored per trajectory in TransferQueue),
the padding flags and the run's adaptive-weight history (:mod:`verl_modality.algorithms.batch_context`), and turns
the per-tag statistics it writes back into ``mapo/<tag>/<stat>``. With tag metrics on (``mapo_stratified``, or
``+algorithm.mapo.tag_metrics=true`` for baselines) each step also logs:

* ``pg_var/*``: how the step's reward variance splits between and within tags, and the implied Var(g_MA) / Var(g_MU)
  (:mod:`verl_modality.algorithms.gradient_variance`);
* ``streams/<tag>/{prompt,audio,video}_tokens``: the mean prompt / audio / video tokens per response, which shows the
  ``data.modality`` policy at work (e.g. no audio tokens for V-tagged samples under ``exact``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from verl_modality import protocol
from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState
from verl_modality.algorithms.advantage import ESTIMATOR_NAME
from verl_modality.algorithms.batch_context import BatchContext, batch_context
from verl_modality.algorithms.config import MapoConfig
from verl_modality.algorithms.gradient_variance import pg_variance_metrics
from verl_modality.data import schema

TAG_FIELD = schema.MODALITY_TAG


def uses_mapo(config: Any) -> bool:
    """Whether this run selected our estimator."""
    return str(config.algorithm.adv_estimator) == ESTIMATOR_NAME


def wants_tag_metrics(config: Any) -> bool:
    """Per-tag metrics: on with ``mapo_stratified``, opt-in (``algorithm.mapo.tag_metrics``) otherwise."""
    return uses_mapo(config) or bool(OmegaConf.select(config, "algorithm.mapo.tag_metrics", default=False))


def stream_token_metrics(
    tags: list[str], prompt_ids: Any, prompt_mask: Any, audio_id: int, video_id: int
) -> dict[str, float]:
    """Mean prompt / audio / video token counts per tag. Shapes: ``prompt_ids``, ``prompt_mask`` ``(N, P)``."""
    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask).astype(bool)
    if ids.shape != mask.shape or len(tags) != ids.shape[0]:
        raise ValueError(f"{len(tags)} tags, prompt ids {ids.shape}, mask {mask.shape}")
    counts = {
        "prompt_tokens": mask.sum(1),
        "audio_tokens": ((ids == audio_id) & mask).sum(1),
        "video_tokens": ((ids == video_id) & mask).sum(1),
    }
    tags_arr = np.asarray(tags)
    return {
        f"streams/{tag}/{name}": float(values[tags_arr == tag].mean())
        for tag in sorted(set(tags))
        for name, values in counts.items()
    }


def stats_to_metrics(per_tag: dict[str, dict[str, float]], prefix: str = "mapo") -> dict[str, float]:
    """``{tag: {stat: value}}`` -> flat logger keys ``mapo/<tag>/<stat>``."""
    return {f"{prefix}/{tag}/{name}": float(value) for tag, stats in per_tag.items() for name, value in stats.items()}


def stream_token_ids(tokenizer: Any) -> tuple[int, int] | None:
    """(audio, video) placeholder ids; None for a tokenizer without them (no stream tokens to count)."""
    from verl_modality.models.omni import placeholder_token_ids

    try:
        ids = placeholder_token_ids(tokenizer)
    except ValueError:
        return None
    return ids["audio"], ids["video"]


@dataclass
class StepTags:
    """One step's rows: ``tags`` (N,), ``valid`` (N,) bool (False for verl's padding rows), ``prompts`` the prompt ids
    (nested ``(N, P_i)``) when they were read."""

    tags: list[str]
    valid: np.ndarray
    prompts: Any = None


class TagFlow:
    """The rows' tags to the estimator and the per-tag training metrics; keeps the adaptive-weight history."""

    def __init__(self, config: Any):
        self.mapo_active = uses_mapo(config)
        self.tag_metrics = wants_tag_metrics(config)
        # read here so that a bad option fails before any Ray work starts
        self.mapo_config = MapoConfig.from_algorithm_config(config.algorithm) if self.mapo_active else None
        self.weights: AdaptiveWeightState | None = None
        self._stream_ids: tuple[int, int] | None | bool = False  # False: not looked up yet

    @property
    def labels(self) -> list[str]:
        """What this feature acts for, as the trainer's banner names it."""
        return [name for name, on in ((ESTIMATOR_NAME, self.mapo_active), ("per-tag metrics", self.tag_metrics)) if on]

    def adaptive_weights(self, steps_per_epoch: int | None) -> AdaptiveWeightState:
        """The run's adaptive-weight history (created on first use)."""
        if self.weights is None:
            window = self.mapo_config.history_window
            if window is None:  # MAPLE App. E: about one epoch of steps
                window = max(1, int(steps_per_epoch or 1))
            self.weights = AdaptiveWeightState(self.mapo_config, window=window)
        return self.weights

    def _stream_token_ids(self, tokenizer: Any) -> tuple[int, int] | None:
        if self._stream_ids is False:
            self._stream_ids = stream_token_ids(tokenizer)
        return self._stream_ids

    def read(self, store: Any, batch: Any, tokenizer: Any) -> StepTags:
        """The step's tags and padding flags (and prompt ids when stream tokens are counted), in one read."""
        with_prompts = self.tag_metrics and self._stream_token_ids(tokenizer) is not None
        fields = [TAG_FIELD, "prompts"] if with_prompts else [TAG_FIELD]
        try:
            data = store.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            raw = data[TAG_FIELD]
        except Exception as err:  # TransferQueue raises its own types for unknown fields
            raise KeyError(
                f"per-tag training needs a '{TAG_FIELD}' column in the training data (see docs/data_schema.md): {err}"
            ) from err
        tags = [str(t) for t in (raw.tolist() if hasattr(raw, "tolist") else list(raw))]
        valid = np.array([not tag.get(protocol.IS_PADDING, False) for tag in batch.tags], dtype=bool)
        return StepTags(tags, valid, data["prompts"] if with_prompts else None)

    def step_metrics(self, store: Any, batch: Any, step: StepTags, tokenizer: Any) -> dict[str, float]:
        """``streams/*`` and ``pg_var/*`` of the step (empty without tag metrics)."""
        if not self.tag_metrics:
            return {}
        out: dict[str, float] = {}
        tokens = self._stream_token_ids(tokenizer)
        if tokens is not None and step.prompts is not None:
            pad = -1
            ids = step.prompts.to_padded_tensor(padding=pad).cpu().numpy()
            keep = np.flatnonzero(step.valid)
            out.update(
                stream_token_metrics([step.tags[i] for i in keep], ids[keep], ids[keep] != pad, tokens[0], tokens[1])
            )
        # pg_var/* is not under mapo/: there every second part is a tag, and baselines with tag metrics log this too
        data = store.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[protocol.RM_SCORES])
        scores = np.array([float(r.sum()) for r in data[protocol.RM_SCORES].unbind()])
        keep = step.valid & np.isfinite(scores)  # a metric must not stop the step: non-finite scores are left out
        if keep.any():
            out.update(pg_variance_metrics(scores, step.tags, keep))
        return out

    @contextmanager
    def advantage_context(
        self, step: StepTags, global_step: int, steps_per_epoch: int | None, metrics: dict
    ) -> Iterator[BatchContext | None]:
        """Around verl's advantage step: the estimator's batch context under MAPO (None otherwise); its per-tag
        statistics go into ``metrics`` as ``mapo/<tag>/<stat>`` when the block ends."""
        if not self.mapo_active:
            yield None
            return
        ctx = BatchContext(
            modality_tags=step.tags, valid=step.valid, state=self.adaptive_weights(steps_per_epoch), step=global_step
        )
        with batch_context(ctx):
            yield ctx
        metrics.update(stats_to_metrics(ctx.stats))

    def state_dict(self, steps_per_epoch: int | None) -> dict | None:
        return self.adaptive_weights(steps_per_epoch).state_dict() if self.mapo_active else None

    def load_state_dict(self, state: dict, steps_per_epoch: int | None) -> None:
        self.adaptive_weights(steps_per_epoch).load_state_dict(state)
