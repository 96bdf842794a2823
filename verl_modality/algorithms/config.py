"""Options of the ``mapo_stratified`` estimator (``algorithm.mapo``) and of MAPO-AT (``algorithm.mapo_at``), read and
checked by :mod:`verl_modality.options`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl_modality import options
from verl_modality.options import option
from verl_modality.vocabulary import ABLATIONS, TAGS

HISTORY_MODES = ("global", "per_tag")
DIFFICULTY_MODES = ("auto", "binary", "continuous")
#: L_attn reductions: per sequence (mean over its content tokens), then the mean over sequences; or one global mean
ATTN_REDUCTIONS = ("seq_mean", "token_mean")
#: a sequence without content tokens: every completion token counts as content, or it adds nothing to L_attn
CONTENT_FALLBACKS = ("all_tokens", "skip")


@dataclass(frozen=True)
class MapoConfig:
    """``algorithm.mapo.*``; the defaults are MAPLE's basic MAPO (stratified GRPO without adaptive weights).

    MAPLE's baseline MAPO is Eq. 2 alone (§4.2); the KL-adaptive weights of Eq. 3-4 are evaluated as an add-on
    (``+adp_w`` in §5.3, Tables 2-3), so ``adaptive_weights`` is off unless asked for. Every value is validated on
    construction; a bad one raises ``ValueError`` naming ``algorithm.mapo.<key>=<value>``.
    """

    balance: bool = True  # 1/|B_M| stratum balance (MAPLE §4.2, Eq. 2)
    adaptive_weights: bool = False  # w_M of Eq. 3-4: the adp_w add-on to basic MAPO, not part of it (MAPLE §5.3)
    history: str = option("global", choices=HISTORY_MODES)  # one KL window over every tag of a cycle (MAPLE App. E)
    history_window: int | None = option(None, ge=1)  # steps kept in the history; None = one epoch (MAPLE App. E)
    difficulty: str = option(
        "auto", choices=DIFFICULTY_MODES
    )  # Bernoulli / histogram-Beta KL (MAPLE §4.2, docs/method.md §2.4)
    target_accuracy: float = option(100 / 101, gt=0, lt=1)  # Bernoulli target q: mean of Beta(100, 1) (MAPLE §4.2)
    beta_a: float = option(100.0, gt=0)  # target reward distribution Beta(100, 1), mode 0.99 (MAPLE §4.2)
    beta_b: float = option(1.0, gt=0)  # second Beta parameter of that target (MAPLE App. E.2.1)
    bins: int = option(50, ge=1)  # histogram bins on [0, 1] for continuous rewards (docs/method.md §2.4)
    eps: float = option(1e-6, gt=0)  # epsilon of Eq. 4 and of the KL terms (MAPLE Eq. 6, 9)
    tags: tuple[str, ...] = option(TAGS, nonempty=True, distinct=True)  # required-modality tags (MAPLE §3)
    tag_metrics: bool = False  # per-tag validation metrics for runs with other estimators (baselines)

    def __post_init__(self) -> None:
        options.validate(self, "algorithm.mapo")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> MapoConfig:
        """Build from a plain mapping; unknown keys raise with the list of known ones."""
        return options.load(cls, values, "algorithm.mapo")

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any) -> MapoConfig:
        """From verl's ``algorithm`` section (an OmegaConf DictConfig, a dict or None)."""
        node = algorithm_config.get("mapo", None) if algorithm_config is not None else None
        return options.load(cls, node, "algorithm.mapo")


@dataclass(frozen=True)
class MapoATConfig:
    """``algorithm.mapo_at.*``: MAPO-AT's relevance mask and attention loss (docs/method.md §5; defaults of the public release).

    Independent of the advantage estimator. The relevance mask also needs
    ``actor_rollout_ref.actor.policy_loss.loss_mode=mapo_relevance``. Where docs/method.md §5 leaves a detail of L_attn open,
    the default is the code release's and the other reading is an option: ``advantage_floor_eps=0`` turns the floor
    off, ``attn_loss_reduction=token_mean`` divides once by the batch's content tokens, ``content_fallback=skip``
    lets a sequence without content tokens add nothing.
    """

    relevance_mask: bool = False  # entropy-difference mask on the policy loss (docs/method.md §5)
    tau_base: float = option(1.0, gt=0)  # tau_i = tau_base log(max(T_i, 2)) (docs/method.md §5)
    c_mask: float = option(5.0, gt=0)  # cap of the mask weights, C_mask (docs/method.md §5)
    ablation: str = option("remove", choices=ABLATIONS)  # how the reference pass drops the audio (our option)
    attention_loss: bool = False  # temporally scaled audio-attention loss (docs/method.md §5)
    eta: float = option(0.05, gt=0)  # coefficient of L_attn (docs/method.md §5)
    kappa: float = option(1.0, gt=0)  # temporal exponent of (t / T_i)^kappa (docs/method.md §5)
    layers: tuple[int, ...] = option(
        (-3, -2, -1), nonempty=True
    )  # decoder layers that count: the last three (docs/method.md §5)
    advantage_floor_eps: float = option(0.02, ge=0)  # failed: |A_i| >= this in the gate; 0 = off (docs/method.md §5)
    attn_loss_reduction: str = option(
        "seq_mean", choices=ATTN_REDUCTIONS
    )  # L_attn per sequence first (docs/method.md §5)
    content_fallback: str = option(
        "all_tokens", choices=CONTENT_FALLBACKS
    )  # no content token: all count (docs/method.md §5)

    def __post_init__(self) -> None:
        options.validate(self, "algorithm.mapo_at")

    @property
    def enabled(self) -> bool:
        return self.relevance_mask or self.attention_loss

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any) -> MapoATConfig:
        """From verl's ``algorithm`` section; unknown keys raise with the list of known ones."""
        node = algorithm_config.get("mapo_at", None) if algorithm_config is not None else None
        return options.load(cls, node, "algorithm.mapo_at")


#: what a zero-variance test compares within a group: verl's sequence reward (``rm_scores``), or any other name for
#: that key of the reward function's ``reward_extra_info`` (``acc``, ``score``), as verl's ``filter_groups.metric``
REWARD_METRIC = "reward"


@dataclass(frozen=True)
class ZeroVarianceConfig:
    """``algorithm.zero_variance.*``: MAPLE's zero-variance filtering (§5.2), which drops and never regenerates.

    verl's ``algorithm.filter_groups`` is DAPO's dynamic sampling: it regenerates until the batch is full again. The
    two cannot be combined. ``retire`` needs the plugin's sampler (``data.curriculum.order``; ``mixed`` samples every
    tag together, as verl's shuffled loader does).
    """

    drop: bool = False  # early filtering: a step trains on its groups with reward variance only (MAPLE §5.2)
    retire: bool = False  # mid-training filtering: zero-variance prompts of epoch 1 leave the set (MAPLE §5.2)
    metric: str = REWARD_METRIC  # compared within a group (as verl's filter_groups.metric)

    def __post_init__(self) -> None:
        options.validate(self, "algorithm.zero_variance")
        if not self.metric.strip():
            raise ValueError("algorithm.zero_variance.metric='': expected 'reward' or a reward_extra_info key")

    @property
    def enabled(self) -> bool:
        return self.drop or self.retire

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any) -> ZeroVarianceConfig:
        """From verl's ``algorithm`` section; unknown keys raise with the list of known ones."""
        node = algorithm_config.get("zero_variance", None) if algorithm_config is not None else None
        return options.load(cls, node, "algorithm.zero_variance")
