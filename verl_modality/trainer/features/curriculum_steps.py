"""One tag per batch (``data.curriculum.order`` static / adaptive / mixed): each step's prompts come from
:class:`~verl_modality.data.curriculum.TagCurriculum` instead of verl's dataloader, refills of filtered groups from the
same tag; the step's difficulties feed the adaptive order (MAPLE §4.2), logged as ``curriculum/*``. With
``algorithm.zero_variance.retire`` the first epoch's zero-variance prompts leave the pools (MAPLE §5.2).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from verl_modality import protocol
from verl_modality.algorithms.advantage import ESTIMATOR_NAME
from verl_modality.algorithms.config import ZeroVarianceConfig
from verl_modality.data import schema
from verl_modality.data.curriculum import ALL, CurriculumConfig, TagCurriculum

logger = logging.getLogger(__name__)


class CurriculumSteps:
    """The run's tag curriculum (built once verl's dataset is loaded); inactive without ``data.curriculum.order``."""

    def __init__(self, config: Any, mapo_active: bool):
        self.config = CurriculumConfig.from_config(config.data)
        self.enabled = self.config.enabled
        self.curriculum: TagCurriculum | None = None
        self.retire = ZeroVarianceConfig.from_algorithm_config(config.algorithm).retire
        self.rows: dict[str, int] = {}  # uid -> dataset index of the prompts handed out and not yet observed
        if self.config.order == "adaptive" and not mapo_active:
            raise ValueError(
                "data.curriculum.order=adaptive orders tags by the difficulties of algorithm.adv_estimator="
                f"{ESTIMATOR_NAME}; with {config.algorithm.adv_estimator!r} use 'static' or 'mixed'"
            )

    @property
    def labels(self) -> list[str]:
        return [f"curriculum {self.config.order}"] if self.enabled else []

    @property
    def active(self) -> bool:
        """Whether the curriculum draws the prompts (built and enabled)."""
        return self.curriculum is not None

    def start(self, tags: list[str], batch_size: int, verl_steps_per_epoch: int | None = None) -> None:
        """Build the curriculum over the training rows' tags (in dataset order)."""
        if not self.enabled:
            return
        self.curriculum = TagCurriculum(tags, int(batch_size), self.config, retire=self.retire)
        logger.warning(
            "curriculum %s: %d steps per curriculum epoch over %d prompts (verl counts %s)",
            self.config.order,
            self.curriculum.steps_per_epoch,
            len(tags),
            verl_steps_per_epoch,
        )

    def next_batch(self, dataset: Any, n: int) -> Any:
        """The next ``n`` prompts of the step's tag as verl's collated batch (a TensorDict with fresh uids)."""
        from verl.utils import tensordict_utils as tu
        from verl.utils.dataset.rl_dataset import collate_fn

        indices = self.curriculum.take(int(n))
        batch_dict = collate_fn([dataset[i] for i in indices])
        batch_dict[protocol.UID] = np.array([str(uuid.uuid4()) for _ in indices], dtype=object)
        if self.retire:
            self.rows.update(zip(batch_dict[protocol.UID].tolist(), (int(i) for i in indices), strict=True))
        return tu.get_tensordict(batch_dict)

    def observe(self, zero: set[str], varied: set[str]) -> None:
        """The step's groups (verl uids) with zero reward variance and with some, for mid-training filtering."""
        if not (self.retire and self.active):
            return
        rows = self.rows
        self.curriculum.observe([rows[g] for g in zero if g in rows], [rows[g] for g in varied if g in rows])
        for g in (*zero, *varied):
            rows.pop(g, None)

    def end_step(
        self, tags: list[str], valid: np.ndarray, difficulties: Mapping[str, float] | None, global_step: int
    ) -> dict[str, float]:
        """Close the step: check that its batch held the step's tag only, feed the difficulties (adaptive order),
        and return ``curriculum/*``."""
        cur = self.curriculum
        step_tag = cur.step_tag
        held = sorted({t for t, v in zip(tags, valid, strict=True) if v})
        if step_tag != ALL and held != [step_tag]:
            raise RuntimeError(f"curriculum step {global_step} should hold tag {step_tag!r} only, got {held}")
        metrics = cur.metrics()
        if self.retire:
            metrics["curriculum/retired_prompts"] = float(len(cur.retired))
        cur.end_step(difficulties)
        prio = {t: round(p, 4) for t, p in cur.priorities().items() if p == p}
        print(
            f"[verl-modality] step {global_step}: curriculum {cur.config.order}, epoch {cur.epoch}, "
            f"tag {step_tag}, priorities {prio}",
            flush=True,
        )
        return metrics

    def after_validation(self, accuracies: Mapping[str, float], global_step: int) -> None:
        """Before the first step, the adaptive order without configured zero-shot accuracies takes them from
        validation (MAPLE §4.2: lowest zero-shot accuracy first)."""
        cur = self.curriculum
        if cur is None or cur.config.order != "adaptive" or cur.zero_shot is not None or global_step != 0:
            return
        cur.set_zero_shot(dict(accuracies))
        print(f"[verl-modality] curriculum zero-shot accuracy from validation: {dict(accuracies)}", flush=True)

    def state_dict(self) -> dict | None:
        return self.curriculum.state_dict() if self.curriculum is not None else None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curriculum.load_state_dict(state)


def dataset_tags(dataset: Any) -> list[str]:
    """The training rows' tags in dataset order (verl's RLHFDataset keeps the rows as ``dataframe``)."""
    return [str(t) for t in dataset.dataframe[schema.MODALITY_TAG]]
