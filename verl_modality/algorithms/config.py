"""Options of the ``mapo_stratified`` estimator, read from verl's ``algorithm.mapo`` config section."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from verl_modality.vocabulary import ABLATIONS, TAGS

HISTORY_MODES = ("global", "per_tag")
DIFFICULTY_MODES = ("auto", "binary", "continuous")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"algorithm.mapo.{name}={value!r}: {expected}")


@dataclass(frozen=True)
class MapoConfig:
    """``algorithm.mapo.*``; the defaults are MAPLE's basic MAPO (stratified GRPO without adaptive weights).

    MAPLE's baseline MAPO is Eq. 2 alone (§4.2); the KL-adaptive weights of Eq. 3-4 are evaluated as an add-on
    (``+adp_w`` in §5.3, Tables 2-3), so ``adaptive_weights`` is off unless asked for. Every value is validated on
    construction; a bad one raises ``ValueError`` naming ``algorithm.mapo.<key>=<value>``.
    """

    balance: bool = True  # 1/|B_M| stratum balance (MAPLE §4.2, Eq. 2)
    adaptive_weights: bool = False  # w_M of Eq. 3-4: the adp_w add-on to basic MAPO, not part of it (MAPLE §5.3)
    history: str = "global"  # one KL window over every tag of a training cycle (MAPLE App. E)
    history_window: int | None = None  # steps kept in the history; None = one epoch of steps (MAPLE App. E)
    difficulty: str = "auto"  # Bernoulli KL for 0/1 rewards, histogram-Beta KL otherwise (MAPLE §4.2, SPEC §2.4)
    target_accuracy: float = 100 / 101  # Bernoulli target q: mean of Beta(100, 1) (MAPLE §4.2)
    beta_a: float = 100.0  # target reward distribution Beta(100, 1), mode 0.99 (MAPLE §4.2)
    beta_b: float = 1.0  # second Beta parameter of that target (MAPLE App. E.2.1)
    bins: int = 50  # histogram bins on [0, 1] for continuous rewards (SPEC §2.4)
    eps: float = 1e-6  # epsilon of Eq. 4 and of the KL terms (MAPLE Eq. 6, 9)
    tags: tuple[str, ...] = TAGS  # allowed required-modality tags (MAPLE §3)
    tag_metrics: bool = False  # per-tag validation metrics for runs with other estimators (baselines)

    def __post_init__(self) -> None:
        for name in ("balance", "adaptive_weights", "tag_metrics"):
            _check(name, getattr(self, name), isinstance(getattr(self, name), bool), "expected true or false")
        _check("history", self.history, self.history in HISTORY_MODES, f"expected one of {HISTORY_MODES}")
        _check(
            "difficulty", self.difficulty, self.difficulty in DIFFICULTY_MODES, f"expected one of {DIFFICULTY_MODES}"
        )
        w = self.history_window
        _check("history_window", w, w is None or (_is_int(w) and w >= 1), "expected an integer >= 1 or null")
        for name in ("target_accuracy", "beta_a", "beta_b", "eps"):
            _check(name, getattr(self, name), _is_real(getattr(self, name)), "expected a finite number")
        _check("target_accuracy", self.target_accuracy, 0.0 < self.target_accuracy < 1.0, "expected in (0, 1)")
        _check("beta_a", self.beta_a, self.beta_a > 0, "expected > 0")
        _check("beta_b", self.beta_b, self.beta_b > 0, "expected > 0")
        _check("eps", self.eps, self.eps > 0, "expected > 0")
        _check("bins", self.bins, _is_int(self.bins) and self.bins >= 1, "expected an integer >= 1")
        tags = self.tags
        ok = isinstance(tags, (tuple, list)) and bool(tags) and all(isinstance(t, str) and t for t in tags)
        _check("tags", tags, ok and len(set(tags)) == len(tags), "expected a non-empty list of distinct tag names")
        # Plain Python types from here on (numpy scalars would not survive json in the checkpointed state).
        object.__setattr__(self, "tags", tuple(tags))
        object.__setattr__(self, "bins", int(self.bins))
        object.__setattr__(self, "history_window", None if w is None else int(w))
        for name in ("target_accuracy", "beta_a", "beta_b", "eps"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> MapoConfig:
        """Build from a plain mapping; unknown keys raise with the list of known ones."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) algorithm.mapo.{unknown}: known options are {sorted(known)}")
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


@dataclass(frozen=True)
class MapoATConfig:
    """``algorithm.mapo_at.*``: MAPO-AT's relevance mask and attention loss (SPEC §5; defaults of the public release).

    Independent of the advantage estimator. The relevance mask also needs
    ``actor_rollout_ref.actor.policy_loss.loss_mode=mapo_relevance``.
    """

    relevance_mask: bool = False  # entropy-difference mask on the policy loss (SPEC §5)
    tau_base: float = 1.0  # tau_i = tau_base log(max(T_i, 2))
    c_mask: float = 5.0  # cap of the mask weights (C_mask)
    ablation: str = "remove"  # how the reference pass drops the audio: removed features, or silence (option)
    attention_loss: bool = False  # temporally scaled audio-attention loss (SPEC §5)
    eta: float = 0.05  # coefficient of L_attn
    kappa: float = 1.0  # temporal exponent of (t / T_i)^kappa
    layers: tuple[int, ...] = (-3, -2, -1)  # decoder layers whose attention counts (the last three)

    def __post_init__(self) -> None:
        for name in ("relevance_mask", "attention_loss"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"algorithm.mapo_at.{name}={value!r}: expected true or false")
        for name in ("tau_base", "c_mask", "eta", "kappa"):
            value = getattr(self, name)
            if not _is_real(value) or value <= 0:
                raise ValueError(f"algorithm.mapo_at.{name}={value!r}: expected a finite number > 0")
            object.__setattr__(self, name, float(value))
        if self.ablation not in ABLATIONS:
            raise ValueError(f"algorithm.mapo_at.ablation={self.ablation!r}: expected one of {ABLATIONS}")
        layers = self.layers
        if not isinstance(layers, (tuple, list)) or not layers or not all(_is_int(i) for i in layers):
            raise ValueError(f"algorithm.mapo_at.layers={layers!r}: expected a non-empty list of layer indices")
        object.__setattr__(self, "layers", tuple(int(i) for i in layers))

    @property
    def enabled(self) -> bool:
        return self.relevance_mask or self.attention_loss

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any) -> MapoATConfig:
        """From verl's ``algorithm`` section; unknown keys raise with the list of known ones."""
        node = algorithm_config.get("mapo_at", None) if algorithm_config is not None else None
        if node is None:
            return cls()
        from omegaconf import DictConfig, OmegaConf

        options = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) algorithm.mapo_at.{unknown}: known options are {sorted(known)}")
        return cls(**options)
