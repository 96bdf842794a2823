"""Options of the ``mapo_stratified`` estimator, read from verl's ``algorithm.mapo`` config section."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from verl_modality import TAGS

HISTORY_MODES = ("global", "per_tag")
DIFFICULTY_MODES = ("auto", "binary", "continuous")


@dataclass(frozen=True)
class MapoConfig:
    """``algorithm.mapo.*``; the defaults are MAPLE's basic MAPO (stratified GRPO without adaptive weights)."""

    balance: bool = True  # 1/|B_M| stratum balance (MAPLE §4.2, Eq. 2)
    adaptive_weights: bool = False  # w_M (Eq. 3-4) is the adp_w variant on top of basic MAPO (MAPLE §5.3)
    history: str = "global"  # one KL window over every tag of a training cycle (MAPLE App. E)
    history_window: int | None = None  # steps kept in the history; None = one epoch of steps (MAPLE App. E)
    difficulty: str = "auto"  # Bernoulli KL for 0/1 rewards, histogram-Beta KL otherwise (MAPLE §4.2, SPEC §2.4)
    target_accuracy: float = 100 / 101  # Bernoulli target q: mean of Beta(100, 1) (MAPLE §4.2)
    beta_a: float = 100.0  # target reward distribution Beta(100, 1), mode 0.99 (MAPLE §4.2)
    beta_b: float = 1.0
    bins: int = 50  # histogram bins on [0, 1] for continuous rewards (SPEC §2.4)
    eps: float = 1e-6  # epsilon of Eq. 4 and of the KL terms
    tags: tuple[str, ...] = TAGS  # allowed required-modality tags (MAPLE §3)
    tag_metrics: bool = False  # per-tag validation metrics for runs with other estimators (baselines)

    def __post_init__(self) -> None:
        if self.history not in HISTORY_MODES:
            raise ValueError(f"algorithm.mapo.history={self.history!r}: expected one of {HISTORY_MODES}")
        if self.difficulty not in DIFFICULTY_MODES:
            raise ValueError(f"algorithm.mapo.difficulty={self.difficulty!r}: expected one of {DIFFICULTY_MODES}")
        if self.history_window is not None and int(self.history_window) < 1:
            raise ValueError(f"algorithm.mapo.history_window={self.history_window!r}: expected >= 1 or null")
        if not 0.0 < self.target_accuracy < 1.0:
            raise ValueError(f"algorithm.mapo.target_accuracy={self.target_accuracy!r}: expected in (0, 1)")
        if self.beta_a <= 0 or self.beta_b <= 0:
            raise ValueError(f"algorithm.mapo.beta_a/beta_b must be > 0, got {self.beta_a}, {self.beta_b}")
        if int(self.bins) < 1:
            raise ValueError(f"algorithm.mapo.bins={self.bins!r}: expected >= 1")
        if not self.eps > 0:
            raise ValueError(f"algorithm.mapo.eps={self.eps!r}: expected > 0")
        if not self.tags or len(set(self.tags)) != len(self.tags):
            raise ValueError(f"algorithm.mapo.tags={self.tags!r}: expected distinct tag names")

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> MapoConfig:
        """Build from a plain mapping; unknown keys raise with the list of known ones."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) algorithm.mapo.{unknown}: known options are {sorted(known)}")
        if "tags" in options:
            options["tags"] = tuple(str(t) for t in options["tags"])
        return cls(**options)

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any) -> MapoConfig:
        """From verl's ``algorithm`` section (an OmegaConf DictConfig, a dict or None)."""
        if algorithm_config is None:
            return cls()
        mapo = algorithm_config.get("mapo", None)
        if mapo is None:
            return cls()
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(mapo, DictConfig):
                mapo = OmegaConf.to_container(mapo, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf ships with verl
            pass
        if not isinstance(mapo, dict):
            raise ValueError(f"algorithm.mapo must be a mapping, got {type(mapo).__name__}")
        return cls.from_dict(mapo)
