"""MAPLE's zero-variance filtering (§5.2) in verl's V1 trainer: ``algorithm.zero_variance``.

* **Early filtering** (``drop``). After the rollout and the reward, before verl balances the batch over the ranks,
  the groups whose ``metric`` is equal for every response leave the step: their trajectories are cleared from
  TransferQueue and the old-log-prob, reference, MAPO-AT and update passes run on the kept groups only. Nothing is
  generated to replace them. The kept count is rounded down to a count the configured mini-batches and the ranks
  divide (:func:`~verl_modality.algorithms.zero_variance.trainable_groups`; the surplus groups, last in the step's
  order, are counted in ``zero_variance/rounded_off_groups``), and the step's actor mini-batch is that count over
  the number of mini-batches (``ppo_mini_batch_size`` for this step only). A step with nothing left is skipped
  (``zero_variance/skipped_step`` = 1): no update, its samples cleared.
* **Mid-training filtering** (``retire``). During the curriculum's first epoch every prompt's group is classified;
  a prompt whose groups were all zero-variance leaves the curriculum's pools from the second epoch on
  (:meth:`~verl_modality.data.curriculum.TagCurriculum.retire`, kept in its checkpointed state).

Metrics per step: ``zero_variance/{kept,dropped,rounded_off}_groups``, ``.../samples_per_update``,
``.../skipped_step`` and, with tagged data, ``zero_variance/{kept,dropped}/<tag>``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import OmegaConf, open_dict

from verl_modality import protocol
from verl_modality.algorithms.config import REWARD_METRIC, ZeroVarianceConfig
from verl_modality.algorithms.zero_variance import trainable_groups, zero_variance_groups
from verl_modality.data import schema
from verl_modality.trainer.features.failed_rewards import extra_info_of, group_ids, reward_module
from verl_modality.trainer.features.group_filter import compares_qa_key, dataset_tasks, refuse_caption_rows

logger = logging.getLogger(__name__)

PREFIX = "zero_variance"


@dataclass
class StepGroups:
    """One step's trajectories: ``keys`` (N,), their ``groups`` (verl's uid), ``values`` (the compared metric),
    ``tags`` (the rows' modality tags; None for data without them) and the zero-variance group ids."""

    keys: list[str]
    groups: list[str]
    values: np.ndarray
    tags: list[str] | None
    zero: set[str] = field(default_factory=set)

    def group_tags(self) -> dict[str, str]:
        return {g: t for g, t in zip(self.groups, self.tags, strict=True)} if self.tags is not None else {}


class SkippedStep(Exception):
    """No group of the step is left to train on (``batch``: the step's samples)."""

    def __init__(self, batch: Any, step: StepGroups):
        super().__init__("no group of the step is left to train on")
        self.batch = batch
        self.step = step


class ZeroVariance:
    """``algorithm.zero_variance``: checked when the trainer is built; acts after each step's reward."""

    def __init__(self, config: Any):
        self.config = ZeroVarianceConfig.from_algorithm_config(config.algorithm)
        self.enabled = self.config.enabled
        self.drop = self.config.drop
        self.metric = self.config.metric
        self.skipped = False  # whether the running step was skipped
        self._module = reward_module(config)
        if not self.enabled:
            return
        if bool(OmegaConf.select(config, "algorithm.filter_groups.enable", default=False)):
            raise ValueError(
                "algorithm.zero_variance and algorithm.filter_groups.enable=true: choose one. zero_variance drops "
                "zero-variance groups (MAPLE §5.2); filter_groups regenerates until the batch is full again (DAPO)"
            )
        if self.config.retire and str(OmegaConf.select(config, "data.curriculum.order", default="none")) == "none":
            raise ValueError(
                "algorithm.zero_variance.retire=true needs the plugin's sampler to take prompts out: set "
                "data.curriculum.order (mixed samples every tag together, as verl's shuffled loader does)"
            )
        if not self.drop:
            return
        if str(config.algorithm.adv_estimator) == "gae" or bool(OmegaConf.select(config, "critic.enable")):
            raise ValueError("algorithm.zero_variance.drop=true drops groups of a group estimator; not with a critic")
        sync_steps = OmegaConf.select(config, "trainer.v1.sync.parameter_sync_step", default=1)
        if int(sync_steps or 1) != 1:
            raise ValueError(
                f"algorithm.zero_variance.drop=true counts a step's mini-batches over the whole batch; "
                f"trainer.v1.sync.parameter_sync_step={sync_steps} splits it into several updates: use 1"
            )
        batch_size = int(config.data.train_batch_size)
        mini = int(config.actor_rollout_ref.actor.ppo_mini_batch_size)
        if mini < 1 or batch_size % mini:
            raise ValueError(
                f"algorithm.zero_variance.drop=true: data.train_batch_size={batch_size} must be a multiple of "
                f"actor_rollout_ref.actor.ppo_mini_batch_size={mini} (the mini-batches per step stay fixed)"
            )
        self.mini_batches = batch_size // mini
        self.n = int(config.actor_rollout_ref.rollout.n)
        self.micro_batch, self.infer_micro_batch = micro_batch_sizes(config)
        self._config = config
        self._mini_batch_size = mini

    def check_dataset(self, dataset: Any) -> None:
        """Refuses a QA-only metric (``acc``) of :mod:`verl_modality.rewards.score` on training data with caption
        rows, before any worker starts (verl's training dataset)."""
        if self.enabled and compares_qa_key(self.metric, self._module):
            refuse_caption_rows("algorithm.zero_variance.metric", self.metric, *dataset_tasks(dataset))

    @property
    def labels(self) -> list[str]:
        out = ["zero-variance drop"] if self.drop else []
        return out + (["zero-variance retire"] if self.config.retire else [])

    # ------------------------------------------------------------------------------------------------ reading
    def read(self, store: Any, batch: Any) -> StepGroups:
        """The step's groups, compared values and tags, and which groups have zero variance."""
        keys = [str(k) for k in batch.keys]
        field_name = protocol.RM_SCORES if self.metric == REWARD_METRIC else protocol.EXTRA_FIELDS
        data = store.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=[field_name])
        if self.metric == REWARD_METRIC:
            values = np.array([float(r.sum()) for r in data[protocol.RM_SCORES].unbind()], dtype=np.float64)
        else:
            values = np.empty(len(keys), dtype=np.float64)
            for i, extra in enumerate(data[protocol.EXTRA_FIELDS]):
                info = extra_info_of(extra).get(protocol.REWARD_EXTRA_INFO, {})
                if info.get(self.metric) is None:
                    raise KeyError(
                        f"algorithm.zero_variance.metric={self.metric}: the reward of trajectory {keys[i]} has no "
                        f"{self.metric!r} (reward_extra_info keys: {sorted(info)}); use 'reward' (verl's rm_scores)"
                    )
                values[i] = float(info[self.metric])
        try:
            raw = store.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=[schema.MODALITY_TAG])
            column = raw[schema.MODALITY_TAG]
            tags = [str(t) for t in (column.tolist() if hasattr(column, "tolist") else list(column))]
        except Exception:  # data without a modality_tag column: counts without the per-tag split
            tags = None
        groups = group_ids(keys)
        return StepGroups(keys, groups, values, tags, zero_variance_groups(groups, values))

    # ---------------------------------------------------------------------------------------------- dropping
    def select(self, store: Any, batch: Any, step: StepGroups, dp_size: int, metrics: dict) -> Any:
        """The batch of the kept groups (the others cleared from ``store``); the step's counts go into ``metrics``.
        Raises :class:`SkippedStep` when no group is left. Sets this step's actor mini-batch (see :meth:`step`)."""
        order = list(dict.fromkeys(step.groups))
        varied = [g for g in order if g not in step.zero]
        k = trainable_groups(len(varied), self.mini_batches, self.n, dp_size, self.micro_batch, self.infer_micro_batch)
        kept = set(varied[:k])
        counts = {
            f"{PREFIX}/kept_groups": float(len(kept)),
            f"{PREFIX}/dropped_groups": float(len(step.zero)),
            f"{PREFIX}/rounded_off_groups": float(len(varied) - k),
            f"{PREFIX}/samples_per_update": float(sum(g in kept for g in step.groups)),
            f"{PREFIX}/skipped_step": float(not kept),
        }
        tag_of = step.group_tags()
        for tag in sorted(set(tag_of.values())):
            counts[f"{PREFIX}/kept/{tag}"] = float(sum(tag_of[g] == tag for g in kept))
            counts[f"{PREFIX}/dropped/{tag}"] = float(sum(tag_of[g] == tag for g in step.zero))
        metrics.update(counts)
        if not kept:
            self.skipped = True
            logger.warning(
                "zero-variance filtering: no group left to train on (%d of %d without variance, %d rounded off); "
                "step skipped",
                len(step.zero),
                len(order),
                len(varied),
            )
            raise SkippedStep(batch, step)
        keep_keys = [key for key, g in zip(step.keys, step.groups, strict=True) if g in kept]
        gone = [key for key, g in zip(step.keys, step.groups, strict=True) if g not in kept]
        if gone:
            store.kv_clear(keys=gone, partition_id=batch.partition_id)
        with open_dict(self._config):
            self._config.actor_rollout_ref.actor.ppo_mini_batch_size = k // self.mini_batches
        return batch.select_keys(keep_keys)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around one training step: the configured actor mini-batch comes back whatever :meth:`select` set."""
        self.skipped = False
        try:
            yield
        finally:
            if self.drop:
                with open_dict(self._config):
                    self._config.actor_rollout_ref.actor.ppo_mini_batch_size = self._mini_batch_size


def tag_rewards(step: StepGroups) -> dict[str, np.ndarray]:
    """Every finite compared value of the step, per tag (before any group is dropped)."""
    if step.tags is None:
        return {}
    tags = np.asarray(step.tags)
    finite = np.isfinite(step.values)
    return {t: step.values[(tags == t) & finite] for t in sorted(set(step.tags))}


def zero_variance_rows(step: StepGroups, rows: dict[str, int]) -> tuple[list[int], list[int]]:
    """(rows whose group had zero variance, rows whose group had variance) for the groups in ``rows`` ({uid: row})."""
    zero, varied = [], []
    for g in dict.fromkeys(step.groups):
        if g in rows:
            (zero if g in step.zero else varied).append(int(rows[g]))
    return zero, varied


def micro_batch_sizes(config: Any) -> tuple[int, int]:
    """(update micro-batch, log-prob micro-batch) in samples per rank that a step's kept samples must divide into:
    1 where verl's dynamic batch size packs by tokens; the log-prob one covers the actor's and, when a KL term needs
    it, the reference's."""

    def fixed(dynamic: str, size: str) -> int:
        if bool(OmegaConf.select(config, dynamic, default=False)):
            return 1
        return int(OmegaConf.select(config, size, default=None) or 1)

    update = fixed("actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu")
    infer = fixed(
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
    )
    uses_reference = bool(OmegaConf.select(config, "algorithm.use_kl_in_reward", default=False)) or bool(
        OmegaConf.select(config, "actor_rollout_ref.actor.use_kl_loss", default=False)
    )
    if uses_reference:
        ref = fixed(
            "actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"
        )
        infer = math.lcm(infer, ref)
    return update, infer


def actor_dp_size(worker_group: Any) -> int:
    """The actor's data-parallel size, read as verl's ``_balance_batch`` reads it (and cached the same way)."""
    role = "actor"
    if role not in worker_group._dispatch_info:
        worker_group._dispatch_info[role] = worker_group._query_dispatch_info(role)
    return max(worker_group._dispatch_info[role]) + 1


def skipped_metrics(timing_raw: dict, global_steps: int, epoch: int) -> dict[str, float]:
    """What a skipped step logs besides its ``zero_variance/*`` counts: its step, epoch and phase timings."""
    out = {"training/global_step": float(global_steps), "training/epoch": float(epoch)}
    out.update({f"timing_s/{name}": float(value) for name, value in timing_raw.items()})
    return out
