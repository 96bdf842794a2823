"""Contrastive reward weighting (CRW) for caption rewards (docs/method.md §4; MAPLE §5.4.2 and App. E.3).

Each caption rollout ``y+`` of a prompt, generated with the sample's streams, is compared with a *negative* ``y-``:
a response to the same prompt generated with one or more of the required streams removed (or blanked). Its reward
is raised when the two are semantically apart:

    R = clip01(R_pos * (1 + alpha * 1[s < tau])),   s = Sim(y+, y-)   (MAPLE Eq. 10-11)

A rollout that stays close to what the model writes without the evidence gains nothing; one that uses the evidence
(and so differs) gains up to ``alpha`` times its reward. QA rewards are binary and are left alone (MAPLE §5.4.2).

A uni-modal sample has no deficit condition that still shows the model something (removing its only stream leaves
text only), and the paper states that CRW has no effect there (App. E.3, last paragraph). :func:`deficit_streams`
raises :class:`NoDeficitError` for such a sample; :func:`negative_view` returns None; :func:`reweight_scores`
leaves the scores of responses without a negative unchanged and reports how many had one.

Generating the negatives belongs to the trainer: :func:`negative_view` says which streams each caption prompt's
negative is generated with, :func:`reweight_scores` rescales the scores once both are available.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from verl_modality import options, vocabulary
from verl_modality.options import option
from verl_modality.rewards.similarity import BACKENDS, Similarity
from verl_modality.vocabulary import ABLATIONS, STREAMS

SECTION = "reward.custom_reward_function.reward_kwargs.contrastive"  # where the options live in verl's config
DEFICIT_MODES = ("any", "drop_one")
NEGATIVES = ("per_prompt", "per_response")


class NoDeficitError(ValueError):
    """The sample has no deficit condition that keeps at least one stream (e.g. a uni-modal sample)."""


def contrastive_weighting(r_pos: torch.Tensor, sim: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    """MAPLE Eq. 10: ``clip01(r_pos * (1 + alpha * 1[sim < tau]))``.

    r_pos: (N,) rewards of the rollouts; sim: (N,) similarity of each rollout to its negative (broadcastable to
    r_pos). Returns (N,) in r_pos's floating dtype. ``sim == tau`` is not boosted. NaN in either input, or a
    non-finite alpha / tau, raises ``ValueError``.
    """
    r_pos, sim = torch.as_tensor(r_pos), torch.as_tensor(sim)
    if not r_pos.is_floating_point():
        r_pos = r_pos.float()
    if not (math.isfinite(alpha) and math.isfinite(tau)):
        raise ValueError(f"contrastive weighting: alpha={alpha!r} and tau={tau!r} must be finite")
    for name, t in (("r_pos", r_pos), ("sim", sim)):
        if torch.isnan(t).any():
            bad = torch.nonzero(torch.isnan(t).reshape(-1))[:5].reshape(-1).tolist()
            raise ValueError(f"contrastive weighting: {name} contains NaN (flat positions {bad})")
    gate = (sim < tau).to(r_pos.dtype)
    return (r_pos * (1 + alpha * gate)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class ContrastiveConfig:
    """``reward.custom_reward_function.reward_kwargs.contrastive.*``. MAPLE App. E.3 names alpha and tau but gives no
    values; ours are project defaults
    (see docs/contrastive_reward.md for how they were chosen). Values are validated on construction."""

    enable: bool = False  # CRW is an add-on to MAPO for captions (MAPLE §5.4.2)
    alpha: float = option(0.2, ge=0)  # boost factor of Eq. 10 (MAPLE App. E.3; value not given there: project default)
    tau: float = 0.8  # similarity threshold of the gate 1[s < tau] (MAPLE App. E.3; value not given: project default)
    similarity: str = option("bertscore", choices=BACKENDS)  # Sim(y+, y-) is BERTScore (MAPLE App. E.3, Eq. 11)
    model: str | None = None  # encoder: None = packaged all-MiniLM-L6-v2 (project choice; the paper names none)
    # negatives see "one or more modalities removed" (MAPLE App. E.3): any such subset
    deficit: str = option("any", choices=DEFICIT_MODES)
    ablation: str = option("remove", choices=ABLATIONS)  # "removed or degraded" (MAPLE App. E.3): remove, or blank
    negatives: str = option(
        "per_prompt", choices=NEGATIVES
    )  # one negative "from the same sample" per prompt (App. E.3)
    seed: int = 0  # seeds the per-sample choice of the deficit streams
    idf: bool = False  # BERTScore idf weighting (off, as BERTScore's default)
    baseline: float | None = option(None, lt=1)  # BERTScore baseline rescaling (off)
    batch_size: int = option(32, ge=1)  # similarity batch size
    device: str = "cpu"  # similarity encoder device

    def __post_init__(self) -> None:
        options.validate(self, SECTION)
        for name, what in (("model", "a path or null"), ("device", "a device name such as 'cpu'")):
            if getattr(self, name) == "":
                raise ValueError(f"{SECTION}.{name}='': expected {what}")

    @classmethod
    def from_config(cls, node: Any) -> ContrastiveConfig:
        """From the ``reward_kwargs.contrastive`` node or a plain mapping; None gives the defaults (disabled)."""
        return options.load(cls, node, SECTION)

    def make_similarity(self, progress: bool = False) -> Similarity:
        """The similarity backend these options select (the model loads on first use)."""
        return Similarity(
            backend=self.similarity,
            model=self.model,
            device=self.device,
            batch_size=self.batch_size,
            idf=self.idf,
            baseline=self.baseline,
            progress=progress,
        )


_SHARED: dict[tuple, Similarity] = {}
_SHARED_LOCK = threading.Lock()


def shared_similarity(config: ContrastiveConfig) -> Similarity:
    """One :class:`Similarity` per process for each backend/model setting, so per-sample reward calls load the
    encoder once (thread-safe)."""
    key = (config.similarity, config.model, config.device, config.batch_size, config.idf, config.baseline)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = config.make_similarity()
        return _SHARED[key]


def deficit_options(tag: str, available: str, mode: str = "any") -> list[str]:
    """Every stream set a negative may be generated with, canonical and sorted smallest first.

    A deficit set is a non-empty strict subset of ``available`` that misses at least one stream of ``tag``;
    ``drop_one`` keeps only those with exactly one stream of ``available`` removed.
    """
    if mode not in DEFICIT_MODES:
        raise ValueError(f"{SECTION}.deficit={mode!r}: expected one of {DEFICIT_MODES}")
    tag = vocabulary.canonical_tag(tag)
    available = vocabulary.canonical_tag(available)
    out = []
    for k in range(1, len(available)):
        if mode == "drop_one" and k != len(available) - 1:
            continue
        for combo in itertools.combinations(available, k):
            if not set(tag) <= set(combo):
                out.append("".join(s for s in STREAMS if s in combo))
    return out


def deficit_streams(tag: str, available: str, mode: str = "any", seed: int = 0, sample_id: str = "") -> str:
    """The streams one sample's negative is generated with: one of :func:`deficit_options`, chosen by a hash of
    ``seed`` and ``sample_id`` (deterministic across processes and runs).

    Raises :class:`NoDeficitError` naming the sample when there is none: a sample shown a single stream (removing
    it leaves only text, and MAPLE App. E.3 applies no CRW there).
    """
    options = deficit_options(tag, available, mode)
    if not options:
        raise NoDeficitError(
            f"sample {sample_id!r} (tag {tag!r}, shown {available!r}) has no deficit condition that keeps a stream: "
            "contrastive weighting does not apply to it (MAPLE App. E.3: no effect in the single-modality setting)"
        )
    digest = hashlib.sha256(f"crw\0{seed}\0{sample_id}".encode()).digest()
    return options[int.from_bytes(digest[:8], "little") % len(options)]


def negative_view(tag: str, available: str, task: str, sample_id: str, config: ContrastiveConfig) -> str | None:
    """The streams to generate this prompt's negative with, or None when CRW does not apply to it (disabled, not a
    caption sample, or no deficit condition). Use as an explicit ``ModalityView`` policy with ``config.ablation``."""
    if not config.enable or task != "caption":
        return None
    try:
        return deficit_streams(tag, available, config.deficit, config.seed, sample_id)
    except NoDeficitError:
        return None


def _broadcast_negatives(
    n: int, deficit_responses: Sequence[str | None] | Mapping[Any, str | None], group_ids: Sequence[Any] | None
) -> list[str | None]:
    """One negative (or None) per response: per response, per contiguous prompt group, or looked up by group id."""
    if isinstance(deficit_responses, Mapping):
        if group_ids is None or len(group_ids) != n:
            raise ValueError("reweight_scores: a mapping of negatives needs group_ids, one per response")
        missing = sorted({str(g) for g in group_ids if g not in deficit_responses})
        if missing:
            raise KeyError(f"reweight_scores: no negative (or None) given for group id(s) {missing[:5]}")
        return [deficit_responses[g] for g in group_ids]
    negs = list(deficit_responses)
    if group_ids is not None:
        raise ValueError("reweight_scores: group_ids is only used with a mapping group id -> negative")
    if len(negs) == n:
        return negs
    if negs and n % len(negs) == 0:
        size = n // len(negs)  # verl repeats each prompt's rollouts contiguously (interleave=True)
        return [negs[i // size] for i in range(n)]
    raise ValueError(
        f"reweight_scores: {len(negs)} negatives for {n} responses; give one per response or one per prompt group"
    )


def reweight_scores(
    scores: Sequence[float] | torch.Tensor,
    responses: Sequence[str],
    deficit_responses: Sequence[str | None] | Mapping[Any, str | None],
    similarity: Callable[[list[str], list[str]], torch.Tensor],
    config: ContrastiveConfig,
    group_ids: Sequence[Any] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Apply Eq. 10 to every response that has a negative; the others keep their score.

    scores: (N,) caption rewards; responses: N texts; deficit_responses: N negatives (None = no negative), or one per
    contiguous prompt group (N divisible by their number), or a mapping group id -> negative with ``group_ids`` (N).
    ``similarity(a, b)`` returns (N',) pairwise similarities (a :class:`Similarity`). Returns the new scores (N,)
    float32 and metrics: ``contrastive/applied_frac`` (responses with a negative), and over those
    ``contrastive/boosted_frac`` (gate open: s < tau), ``contrastive/similarity_mean``, ``contrastive/reward_gain``
    (mean score increase). With ``config.enable`` false the scores come back unchanged and the metrics are empty.
    """
    old = torch.as_tensor(scores, dtype=torch.float32).detach().cpu().reshape(-1).clone()
    responses = list(responses)
    if len(responses) != old.numel():
        raise ValueError(f"reweight_scores: {old.numel()} scores but {len(responses)} responses")
    if torch.isnan(old).any():
        raise ValueError("reweight_scores: scores contain NaN")
    if not config.enable:
        return old, {}
    negatives = _broadcast_negatives(len(responses), deficit_responses, group_ids)
    idx = [i for i, neg in enumerate(negatives) if neg is not None]
    metrics = {"contrastive/applied_frac": len(idx) / max(len(responses), 1)}
    if not idx:
        return old, metrics
    sim = torch.as_tensor(similarity([responses[i] for i in idx], [str(negatives[i]) for i in idx])).float().cpu()
    if sim.shape != (len(idx),):
        raise ValueError(f"reweight_scores: similarity returned shape {tuple(sim.shape)}, expected ({len(idx)},)")
    index = torch.tensor(idx)
    new = old.clone()
    new[index] = contrastive_weighting(old[index], sim, config.alpha, config.tau)
    metrics.update(
        {
            "contrastive/boosted_frac": float((sim < config.tau).float().mean()),
            "contrastive/similarity_mean": float(sim.mean()),
            "contrastive/reward_gain": float((new[index] - old[index]).mean()),
        }
    )
    return new, metrics
