"""Tag curriculum: training batches of one tag each, in a static or difficulty-adaptive order (docs/method.md
§2.5, §2.6).

The sampler hands out dataset indices step by step. A step begins with the first :meth:`TagCurriculum.take` after
the previous :meth:`TagCurriculum.end_step`; it picks one tag, and every index taken until the step ends (the batch
and any refills of filtered groups) comes from that tag. Orders:

* ``mixed``: no tags, plain shuffled batches over all samples (for the MUPO baseline);
* ``static``: uni -> bi -> tri levels, the batches of a level's tags shuffled together, each epoch (MAPLE §5.2);
* ``adaptive``: the tag with the highest priority s_M (mean of its last ``window`` difficulties) among those with
  batches left this epoch; in the first epoch, before any history, the lowest zero-shot accuracy first (MAPLE
  §4.2, Alg. 2). Ties go to canonical tag order.

An epoch gives tag M ``ceil(n_M / batch_size)`` batches and draws its samples from one seeded permutation of the
tag, so every sample is taken once per epoch. Leftovers are *padded from the same tag*: a batch that needs more
samples than the tag's permutation has left (the last, partial batch of a tag, or refills after group filtering)
gets extra draws from a fresh seeded permutation of the same tag, counted in :attr:`TagCurriculum.extra_samples`.
Nothing is dropped. All randomness is derived from ``(seed, epoch, tag)``, so the state is a few counters and
resuming from :meth:`state_dict` continues the exact sequence.

Mid-training filtering (MAPLE §5.2, ``retire=True``): during the first epoch :meth:`TagCurriculum.observe` records
which prompts' groups had zero reward variance; when the second epoch begins, the prompts that had zero variance
every time they were seen leave the pools (:attr:`TagCurriculum.retired`), and the epoch's batches are counted over
the prompts that remain. A tag with no prompt left has no batches; no prompt left at all is an error.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verl_modality import options
from verl_modality.options import option
from verl_modality.vocabulary import LEVELS, TAGS, canonical_tag, level

ORDERS = ("none", "mixed", "static", "adaptive")
ALL = "*"  # the one pseudo-tag of the mixed order
ZERO_SHOT_FROM_VALIDATION = "validation"


@dataclass(frozen=True)
class CurriculumConfig:
    """Options of ``data.curriculum`` (read and checked by :mod:`verl_modality.options`)."""

    order: str = option("none", choices=ORDERS)  # none: verl's dataloader; mixed / static / adaptive (MAPLE §4.2, §5.2)
    seed: int = 0  # all shuffles derive from (seed, epoch, tag)
    window: int = option(5, ge=1)  # L_W: difficulties averaged into a tag's priority (MAPLE Alg. 2)
    # first-epoch order for ``adaptive``: {tag: accuracy} or "validation" (the per-tag accuracy of verl's
    # validation before training)
    zero_shot: Any = ZERO_SHOT_FROM_VALIDATION

    def __post_init__(self) -> None:
        options.validate(self, "data.curriculum")
        zero_shot = options.plain(self.zero_shot)
        if zero_shot != ZERO_SHOT_FROM_VALIDATION:
            if not isinstance(zero_shot, Mapping):
                raise ValueError(
                    f"data.curriculum.zero_shot={zero_shot!r}: expected {ZERO_SHOT_FROM_VALIDATION!r} or a mapping "
                    "tag -> accuracy"
                )
            zero_shot = _accuracies(zero_shot, "data.curriculum.zero_shot")
        object.__setattr__(self, "zero_shot", zero_shot)

    @property
    def enabled(self) -> bool:
        return self.order != "none"

    @classmethod
    def from_config(cls, data_config: Any) -> CurriculumConfig:
        """From verl's data config (reads ``curriculum``; absent means ``order: none``)."""
        node = data_config.get("curriculum", None) if data_config is not None else None
        return options.load(cls, node, "data.curriculum")


def _accuracies(values: Mapping[str, Any], what: str) -> dict[str, float]:
    out = {}
    for tag, acc in values.items():
        try:
            canon = canonical_tag(str(tag))
        except ValueError:
            canon = None
        if canon not in TAGS:
            raise ValueError(f"{what}: unknown tag {tag!r} (use one of {', '.join(TAGS)})")
        out[canon] = options.check(f"{what}.{tag}", acc, float)
    return out


def _tag_of_row(tag: Any, row: int) -> str:
    try:
        canon = canonical_tag(str(tag))
    except ValueError:
        canon = None
    if canon not in TAGS:
        raise ValueError(f"unknown modality tag {tag!r} in row {row} of the training set (use one of {TAGS})")
    return canon


def _rng(*key: Any) -> np.random.Generator:
    """A generator that depends only on ``key`` (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


class TagCurriculum:
    """The stateful one-tag-per-batch sampler; see the module docstring.

    ``tags[i]`` is the tag of dataset index i; ``batch_size`` prompts make one training batch.
    """

    def __init__(self, tags: Sequence[str], batch_size: int, config: CurriculumConfig, retire: bool = False):
        if not config.enabled:
            raise ValueError("TagCurriculum needs data.curriculum.order other than 'none'")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if not len(tags):
            raise ValueError("the training set is empty")
        self.config = config
        self.batch_size = int(batch_size)
        self.retire = bool(retire)
        self._keys = np.asarray(
            [ALL] * len(tags) if config.order == "mixed" else [_tag_of_row(t, i) for i, t in enumerate(tags)]
        )
        self.pools: dict[str, np.ndarray] = {}
        self.blocks: dict[str, int] = {}
        self._build_pools(())
        self.pool_sizes = {t: int(len(p)) for t, p in self.pools.items()}  # before any prompt is retired
        self.zero_shot: dict[str, float] | None = None
        if isinstance(config.zero_shot, Mapping):
            self.set_zero_shot(config.zero_shot)
        # state (all of it in state_dict)
        self.epoch = 0
        self.served: dict[str, int] = dict.fromkeys(self.pools, 0)  # batches begun this epoch, per tag
        self.taken: dict[str, int] = dict.fromkeys(self.pools, 0)  # indices taken this epoch, per tag
        self.step_tag: str | None = None  # the open step's tag
        self.steps = 0  # steps begun in all
        self.extra_samples = 0  # indices drawn beyond a tag's permutation (padding / refills), in all
        self.step_indices: list[int] = []  # taken in the open step
        self._perms: dict[tuple, np.ndarray] = {}
        self.recent: dict[str, list[float]] = {tag: [] for tag in self.pools}
        self.zero_rows: set[int] = set()  # first epoch: prompts whose group had zero variance
        self.varied_rows: set[int] = set()  # first epoch: prompts whose group had variance
        self.retired: list[int] = []  # prompts out of the pools from the second epoch on

    def _build_pools(self, retired: Sequence[int]) -> None:
        keep = np.ones(len(self._keys), dtype=bool)
        keep[np.asarray(list(retired), dtype=np.int64)] = False
        groups = [ALL] if self.config.order == "mixed" else TAGS
        pools = {tag: np.flatnonzero((self._keys == tag) & keep) for tag in groups}
        self.pools = {tag: idx for tag, idx in pools.items() if len(idx)}
        if not self.pools:
            raise RuntimeError(
                f"mid-training filtering retired all {len(retired)} training prompts (every group had zero reward "
                "variance in the first epoch): nothing is left to train on"
            )
        self.blocks = {tag: math.ceil(len(idx) / self.batch_size) for tag, idx in self.pools.items()}
        self._perms = {}

    def observe(self, zero: Sequence[int], varied: Sequence[int]) -> None:
        """Record, during the first epoch, the prompts (dataset indices) whose group had zero reward variance and those
        whose group had some (``retire`` only; later epochs are not recorded)."""
        if self.retire and self.epoch == 0:
            self.zero_rows.update(int(i) for i in zero)
            self.varied_rows.update(int(i) for i in varied)

    # ------------------------------------------------------------------------------------------- ordering
    @property
    def steps_per_epoch(self) -> int:
        return sum(self.blocks.values())

    def set_zero_shot(self, accuracies: Mapping[str, float]) -> None:
        """First-epoch order of ``adaptive``: ``{tag: accuracy}`` covering every tag of the training set."""
        acc = _accuracies(accuracies, "zero-shot accuracy")
        missing = sorted(set(self.pools) - set(acc) - {ALL})
        if missing and self.config.order == "adaptive":
            raise ValueError(f"zero-shot accuracy is missing for tag(s) {missing} of the training set")
        self.zero_shot = acc

    def priorities(self) -> dict[str, float]:
        """s_M per tag: the mean of its last ``window`` difficulties (NaN without history)."""
        out = {}
        for tag, values in self.recent.items():
            last = values[-self.config.window :]
            out[tag] = math.fsum(last) / len(last) if last else float("nan")
        return out

    def _static_plan(self) -> list[str]:
        plan = []
        for lvl in LEVELS:
            blocks = [tag for tag in TAGS if tag in self.pools and level(tag) == lvl for _ in range(self.blocks[tag])]
            order = _rng(self.config.seed, self.epoch, "static", lvl).permutation(len(blocks))
            plan.extend(blocks[i] for i in order)
        return plan

    def _choose_tag(self) -> str:
        left = [tag for tag in self.pools if self.served[tag] < self.blocks[tag]]
        if self.config.order == "mixed":
            return ALL
        if self.config.order == "static":
            return self._static_plan()[sum(self.served.values())]
        # adaptive
        if self.epoch == 0:
            if self.zero_shot is None:
                raise RuntimeError(
                    "data.curriculum.order=adaptive needs zero-shot accuracies for its first epoch: set "
                    "data.curriculum.zero_shot to {tag: accuracy}, or keep 'validation' with trainer.val_before_train"
                )
            return min(left, key=lambda t: (self.zero_shot[t], TAGS.index(t)))
        prio = self.priorities()

        def rank(tag: str) -> tuple:
            # a tag without history goes first (nothing says it is easy), then the hardest (largest s_M)
            known = not math.isnan(prio[tag])
            return (known, -prio[tag] if known else 0.0, TAGS.index(tag))

        return min(left, key=rank)

    def plan_preview(self) -> list[str]:
        """The remaining tags of this epoch in order, as far as they are fixed now (static and mixed only)."""
        if self.config.order == "static":
            return self._static_plan()[sum(self.served.values()) :]
        if self.config.order == "mixed":
            return [ALL] * (self.steps_per_epoch - self.served[ALL])
        return []

    # ---------------------------------------------------------------------------------------------- steps
    def _permutation(self, tag: str, round_: int) -> np.ndarray:
        key = (self.epoch, tag, round_)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            pool = self.pools[tag]
            self._perms[key] = pool[_rng(self.config.seed, self.epoch, tag, round_).permutation(len(pool))]
        return self._perms[key]

    def begin_step(self) -> str:
        """Open a step (if none is open) and return its tag."""
        if self.step_tag is None:
            if all(self.served[t] >= self.blocks[t] for t in self.pools):
                self._next_epoch()
            tag = self._choose_tag()
            self.served[tag] += 1
            self.step_tag = tag
            self.step_indices = []
            self.steps += 1
        return self.step_tag

    def take(self, n: int) -> list[int]:
        """The next ``n`` indices of the open step's tag (opening a step if needed).

        Round 0 of a tag's permutation gives each sample once; draws beyond it (round 1, 2, ...) skip samples the
        step already holds while the tag has others left.
        """
        tag = self.begin_step()
        pool_size = len(self.pools[tag])
        in_step = set(self.step_indices)
        out: list[int] = []
        while len(out) < n:
            round_, offset = divmod(self.taken[tag], pool_size)
            index = int(self._permutation(tag, round_)[offset])
            self.taken[tag] += 1
            if round_ > 0:
                if index in in_step and len(in_step) < pool_size:
                    continue
                self.extra_samples += 1
            out.append(index)
            in_step.add(index)
        self.step_indices.extend(out)
        return out

    def end_step(self, difficulties: Mapping[str, float] | None = None) -> None:
        """Close the open step; ``difficulties`` ({tag: D_M}, this step's) feed the adaptive priorities."""
        for tag, d in (difficulties or {}).items():
            if tag in self.recent and d is not None and math.isfinite(float(d)):
                self.recent[tag] = (self.recent[tag] + [float(d)])[-self.config.window :]
        self.step_tag = None

    def _next_epoch(self) -> None:
        if self.retire and self.epoch == 0:
            self.retired = sorted(self.zero_rows - self.varied_rows)
            self._build_pools(self.retired)
            self.recent = {tag: self.recent.get(tag, []) for tag in self.pools}
        self.epoch += 1
        self.served = dict.fromkeys(self.pools, 0)
        self.taken = dict.fromkeys(self.pools, 0)

    # ----------------------------------------------------------------------------------------- metrics/state
    def metrics(self) -> dict[str, float]:
        """Per-step log values: tag (index in the seven tags, -1 for mixed), epoch, priorities, extra samples."""
        tag = self.step_tag
        out = {
            "curriculum/tag_index": float(TAGS.index(tag)) if tag in TAGS else -1.0,
            "curriculum/level": float(LEVELS.index(level(tag))) if tag in TAGS else -1.0,
            "curriculum/epoch": float(self.epoch),
            "curriculum/order": float(ORDERS.index(self.config.order)),
            "curriculum/extra_samples": float(self.extra_samples),
        }
        for t, p in self.priorities().items():
            if t in TAGS and not math.isnan(p):
                out[f"curriculum/priority/{t}"] = p
        return out

    def state_dict(self) -> dict:
        """JSON-serialisable state; :meth:`load_state_dict` continues the exact sequence of indices."""
        return {
            "order": self.config.order,
            "seed": self.config.seed,
            "batch_size": self.batch_size,
            "pool_sizes": dict(self.pool_sizes),
            "epoch": self.epoch,
            "served": dict(self.served),
            "taken": dict(self.taken),
            "step_tag": self.step_tag,
            "steps": self.steps,
            "extra_samples": self.extra_samples,
            "step_indices": list(self.step_indices),
            "recent": {t: list(v) for t, v in self.recent.items()},
            "zero_shot": dict(self.zero_shot) if self.zero_shot is not None else None,
            "retire": self.retire,
            "zero_rows": sorted(self.zero_rows),
            "varied_rows": sorted(self.varied_rows),
            "retired": list(self.retired),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {
            "order": self.config.order,
            "seed": self.config.seed,
            "batch_size": self.batch_size,
            "pool_sizes": dict(self.pool_sizes),
        }
        if state.get("retire", False) != self.retire:
            raise ValueError(
                f"saved curriculum has retire={state.get('retire', False)!r}, this run has {self.retire!r}; "
                "algorithm.zero_variance.retire changed since the checkpoint"
            )
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(
                    f"saved curriculum has {key}={state.get(key)!r}, this run has {value!r}; the data or "
                    "data.curriculum settings changed since the checkpoint"
                )
        self.epoch = int(state["epoch"])
        self.served = {t: int(v) for t, v in state["served"].items()}
        self.taken = {t: int(v) for t, v in state["taken"].items()}
        self.step_tag = state["step_tag"]
        self.steps = int(state["steps"])
        self.extra_samples = int(state["extra_samples"])
        self.step_indices = [int(i) for i in state["step_indices"]]
        self.recent = {t: [float(x) for x in v] for t, v in state["recent"].items()}
        self.zero_shot = dict(state["zero_shot"]) if state.get("zero_shot") is not None else self.zero_shot
        self.zero_rows = {int(i) for i in state.get("zero_rows", [])}
        self.varied_rows = {int(i) for i in state.get("varied_rows", [])}
        self.retired = [int(i) for i in state.get("retired", [])]
        if self.retired:
            self._build_pools(self.retired)
