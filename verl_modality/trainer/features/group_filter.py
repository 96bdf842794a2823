"""verl's zero-variance group filter (``algorithm.filter_groups``) with the plugin's reward functions.

verl's sync replay buffer classifies each finished prompt group as it polls TransferQueue, before the trainer sees the
step, and removes the groups whose ``metric`` (``reward``: ``rm_scores``; any other name: that
``reward_extra_info`` key) is the same for every trajectory. Two things go wrong there with our reward functions:

* a caption whose judge call failed (``on_failure: mark``) has a NaN score: the NaN breaks the variance test, so
  a group is kept or dropped because of the failure. :meth:`GroupFilter.guard` makes the buffer neutralise failed
  samples (:meth:`~.failed_rewards.FailedRewards.before_group_filter`) before it compares a group, and counts the
  failed samples of removed groups (``reward/failed_filtered``);
* the QA-only keys of :mod:`verl_modality.rewards.score` (``acc``, ...) are None on caption rows, and
  :mod:`verl_modality.rewards.caption_judge` returns none of them: such a metric is refused at start-up
  (:meth:`GroupFilter.check_tasks` once verl has loaded the training data).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from verl_modality.data import schema
from verl_modality.trainer.features.failed_rewards import FailedRewards, group_ids, reward_module

logger = logging.getLogger(__name__)

SCORE_MODULE = "verl_modality.rewards.score"
JUDGE_MODULE = "verl_modality.rewards.caption_judge"


def filter_metric(config: Any) -> str | None:
    """``algorithm.filter_groups.metric`` when the filter is on, else None."""
    if not bool(OmegaConf.select(config, "algorithm.filter_groups.enable", default=False)):
        return None
    metric = OmegaConf.select(config, "algorithm.filter_groups.metric", default=None)
    return str(metric) if metric else None


def _qa_keys() -> tuple[str, ...]:
    from verl_modality.rewards.score import QA_KEYS

    return QA_KEYS


class GroupFilter:
    """Active when ``algorithm.filter_groups`` is on; checks its metric and guards verl's replay buffer."""

    def __init__(self, config: Any, failed_rewards: FailedRewards):
        self.metric = filter_metric(config)
        self.enabled = self.metric is not None
        self.failed_rewards = failed_rewards
        self.module = reward_module(config)
        self.guarded = False
        if self.enabled and self.metric in _qa_keys() and self.module.endswith(JUDGE_MODULE):
            raise ValueError(
                f"algorithm.filter_groups.metric={self.metric}: the reward function {JUDGE_MODULE} scores captions and "
                f"returns no {self.metric!r} (a QA key); filter on 'score' (the judge's score) or 'reward' "
                "(verl's rm_scores)"
            )

    @property
    def labels(self) -> list[str]:
        return ["failed rewards before the group filter"] if self.guarded else []

    @property
    def checks_tasks(self) -> bool:
        """Whether the metric is a QA-only key of :mod:`verl_modality.rewards.score`, the run's reward function."""
        return self.enabled and compares_qa_key(self.metric, self.module)

    def check_tasks(self, tasks: Sequence[Any] | None, ids: Sequence[Any] | None = None) -> None:
        """Refuses a QA-only metric of :mod:`verl_modality.rewards.score` on training data with caption rows
        (``tasks``: the dataset's ``task`` column, None when it has none)."""
        if self.checks_tasks:
            refuse_caption_rows("algorithm.filter_groups.metric", self.metric, tasks, ids)

    def check_dataset(self, dataset: Any) -> None:
        """:meth:`check_tasks` on verl's training dataset (``RLHFDataset.dataframe``; no ``task`` column: QA data)."""
        if self.checks_tasks:
            refuse_caption_rows("algorithm.filter_groups.metric", self.metric, *dataset_tasks(dataset))

    def guard(self, buffer: Any, store: Any) -> bool:
        """Give ``buffer`` (verl's ``ReplayBuffer``) the hook that neutralises failed rewards before it compares a
        group (:mod:`verl_modality.integrations.verl_trainer`); returns whether it did (not needed without the filter
        or without a reward function that marks failures). The hook reads verl's private buffer state through that
        module (a ``read`` entry of the integration registry); a verl that keeps it otherwise is refused here, at
        start-up, naming the attribute and verl's version."""
        from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

        from verl_modality.integrations.patching import is_marked
        from verl_modality.integrations.verl_trainer import HOOK, groups_to_classify, require_state

        if not (self.enabled and self.failed_rewards.enabled):
            return False
        if not isinstance(buffer, ReplayBuffer) or getattr(buffer, "filter_groups_metric", None) is None:
            logger.warning(
                "algorithm.filter_groups: the replay buffer %s filters groups its own way; failed rewards are "
                "neutralised before the advantages only, so its filter may see their NaN scores",
                type(buffer).__name__,
            )
            return False
        require_state(buffer)
        if not is_marked(type(buffer)._dapo_filtered_keys):
            raise RuntimeError(
                "algorithm.filter_groups with failed-reward marking needs the plugin's replay-buffer hook, which is "
                "not installed (see `verl-modality doctor`)"
            )
        failed_rewards, metric = self.failed_rewards, self.metric

        def before_filter(partition_id: str, classify):
            counts: dict[str, int] = {}
            if partition_id != "val":
                keys = groups_to_classify(buffer, partition_id, group_ids)
                counts = failed_rewards.before_group_filter(store, partition_id, keys, metric)
            filtered, values = classify()
            failed_rewards.group_filtered(sum(n for uid, n in counts.items() if uid in filtered))
            return filtered, values

        setattr(buffer, HOOK, before_filter)
        self.guarded = True
        return True


def compares_qa_key(metric: str | None, module: str) -> bool:
    """Whether a group filter's ``metric`` is a QA-only key of :mod:`verl_modality.rewards.score` (the run's reward
    function ``module``), which caption rows do not have."""
    return metric in _qa_keys() and module.endswith(SCORE_MODULE)


def dataset_tasks(dataset: Any) -> tuple[Sequence[Any] | None, Sequence[Any] | None]:
    """(``task`` column, ``id`` column) of verl's training dataset (``RLHFDataset.dataframe``); None for a column it
    lacks (no ``task`` column: QA data)."""
    frame = getattr(dataset, "dataframe", None)
    names = getattr(frame, "column_names", None) or []
    tasks = frame[schema.TASK] if schema.TASK in names else None
    return tasks, (frame[schema.ID] if schema.ID in names else None)


def refuse_caption_rows(option: str, metric: str, tasks: Sequence[Any] | None, ids: Sequence[Any] | None) -> None:
    """Raise when the training data has caption rows, whose QA key ``metric`` is None (``option`` names the setting)."""
    if tasks is None:
        return
    rows = [i for i, t in enumerate(tasks) if str(t) == "caption"]
    if rows:
        first = f"row {rows[0]}" + (f" (id {ids[rows[0]]!r})" if ids is not None else "")
        raise ValueError(
            f"{option}={metric}: the training data (data.train_files) has {len(rows)} caption row(s) (task column; "
            f"first: {first}); {SCORE_MODULE} gives caption rows no {metric!r} (None: it is a QA key, and a failed "
            "judge call leaves no value to compare), so groups of caption rows cannot be compared. Filter on 'score' "
            "(every row's reward) or 'reward' (verl's rm_scores)"
        )
