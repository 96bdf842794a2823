"""Evaluation metrics (docs/method.md §7 and §8) as pure functions of result records or per-tag numbers.

Everything is a fraction in [0, 1] (accuracies, gaps, fusion gain); a value that cannot be computed is ``None``
together with a sentence saying why, never a made-up number. "Accuracy" of a caption record is its judge score.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from verl_modality.evaluation.results import ResultRecord
from verl_modality.vocabulary import LEVELS, STRATA, TAGS, level

#: How fusion gain decides whether a caption condition is uni- or multi-modal (see :func:`fusion_gain`).
FUSION_CONDITIONS = ("available", "tag")


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def group_by(records: Iterable[ResultRecord], key: Callable[[ResultRecord], Hashable]) -> dict[Any, list[ResultRecord]]:
    """Records grouped by ``key``, groups and records in input order."""
    groups: dict[Any, list[ResultRecord]] = defaultdict(list)
    for rec in records:
        groups[key(rec)].append(rec)
    return dict(groups)


def order_tags(tags: Iterable[str]) -> list[str]:
    """Tags in canonical order ``V A S VA VS AS VAS``."""
    tags = set(tags)
    return [t for t in TAGS if t in tags]


# ---------------------------------------------------------------------------------------------------------------
# pass@1


@dataclass(frozen=True)
class Accuracy:
    """pass@1 of a set of records: per-query mean over its samples, then mean over queries; and the pooled
    (micro) mean over all samples. The two agree when every query has the same number of samples."""

    queries: int
    samples: int
    pass_at_1: float | None
    accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy(records: Sequence[ResultRecord]) -> Accuracy:
    """:class:`Accuracy` of ``records`` (a query is a record's ``(policy, id)``)."""
    per_query = group_by(records, lambda r: r.query)
    query_means = [_mean([r.value for r in recs]) for recs in per_query.values()]
    return Accuracy(
        queries=len(per_query),
        samples=len(records),
        pass_at_1=_mean(query_means),  # type: ignore[arg-type]
        accuracy=_mean([r.value for r in records]),
    )


def accuracy_by(records: Sequence[ResultRecord], key: Callable[[ResultRecord], str]) -> dict[str, Accuracy]:
    """:class:`Accuracy` per value of ``key``, in first-seen order."""
    return {k: accuracy(recs) for k, recs in group_by(records, key).items()}


def accuracy_by_tag(records: Sequence[ResultRecord]) -> dict[str, Accuracy]:
    """:class:`Accuracy` per modality tag, tags in canonical order."""
    by = accuracy_by(records, lambda r: r.tag)
    return {t: by[t] for t in order_tags(by)}


def accuracy_by_stratum(records: Sequence[ResultRecord]) -> dict[str, Accuracy]:
    """:class:`Accuracy` per stratum (exact, superset, deficit), strata without records left out."""
    by = accuracy_by(records, lambda r: r.stratum)
    return {s: by[s] for s in STRATA if s in by}


def tag_stratum_table(records: Sequence[ResultRecord]) -> dict[str, dict[str, Accuracy]]:
    """``{tag: {stratum: Accuracy}}`` for every (tag, stratum) pair that has records."""
    table: dict[str, dict[str, Accuracy]] = {}
    for tag, recs in group_by(records, lambda r: r.tag).items():
        table[tag] = accuracy_by_stratum(recs)
    return {t: table[t] for t in order_tags(table)}


@dataclass(frozen=True)
class SampleCount:
    """How many samples the queries have: ``k`` is the most common count; ``irregular`` lists the queries whose
    count differs from it (their pass@1 then averages over a different number of samples)."""

    k: int
    counts: dict[int, int]
    uniform: bool
    irregular: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "counts": {str(k): n for k, n in self.counts.items()},
            "uniform": self.uniform,
            "irregular_queries": self.irregular,
        }


def sample_count(records: Sequence[ResultRecord]) -> SampleCount:
    """:class:`SampleCount` of the queries of ``records`` (which must not be empty)."""
    per_query = Counter(r.query for r in records)
    counts = Counter(per_query.values())
    k = max(counts, key=lambda c: (counts[c], c))
    irregular = [q[1] for q, n in per_query.items() if n != k]
    return SampleCount(k=k, counts=dict(sorted(counts.items())), uniform=len(counts) == 1, irregular=irregular)


# ---------------------------------------------------------------------------------------------------------------
# modality gap


@dataclass(frozen=True)
class LevelAccuracy:
    """Accuracy of one level (uni / bi / tri), pooled over all samples of its tags."""

    tags: list[str]
    samples: int
    accuracy: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool_levels(per_tag: Mapping[str, tuple[float, int]]) -> dict[str, LevelAccuracy | None]:
    """Pool ``{tag: (accuracy, samples)}`` into uni/bi/tri: sum(acc_t * n_t) / sum(n_t) over the level's tags.

    A level without tags (or without samples) is ``None``.
    """
    out: dict[str, LevelAccuracy | None] = {}
    for lvl in LEVELS:
        tags = [t for t in order_tags(per_tag) if level(t) == lvl and per_tag[t][1] > 0]
        n = sum(per_tag[t][1] for t in tags)
        if n == 0:
            out[lvl] = None
            continue
        out[lvl] = LevelAccuracy(tags, n, math.fsum(per_tag[t][0] * per_tag[t][1] for t in tags) / n)
    return out


def pooled(per_tag: Mapping[str, tuple[float, int]]) -> float | None:
    """Micro average of ``{tag: (accuracy, samples)}`` (sample-weighted), ``None`` without samples."""
    n = sum(c for _, c in per_tag.values())
    return math.fsum(a * c for a, c in per_tag.values()) / n if n else None


@dataclass(frozen=True)
class ModalityGap:
    """U-B = |Bi-Uni|/Uni, U-T = |Tri-Uni|/Uni, B-T = |Tri-Bi|/Bi and their mean (docs/method.md §8).

    A term whose levels are missing (or whose denominator is 0) is ``None`` and ``undefined`` says why; the mean
    is then ``None`` too.
    """

    uni: float | None
    bi: float | None
    tri: float | None
    u_b: float | None
    u_t: float | None
    b_t: float | None
    gap: float | None
    undefined: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def modality_gap(uni: float | None, bi: float | None, tri: float | None) -> ModalityGap:
    """:class:`ModalityGap` from the pooled level accuracies."""
    undefined: list[str] = []

    def rel(num: float | None, den: float | None, name: str, num_name: str, den_name: str) -> float | None:
        missing = [lvl for lvl, v in ((num_name, num), (den_name, den)) if v is None]
        if missing:
            undefined.append(f"{name} is undefined: no {' and no '.join(missing)} samples")
            return None
        if den == 0:
            undefined.append(f"{name} is undefined: {den_name} accuracy is 0")
            return None
        return abs(num - den) / den  # type: ignore[operator]

    u_b = rel(bi, uni, "U-B", "bi", "uni")
    u_t = rel(tri, uni, "U-T", "tri", "uni")
    b_t = rel(tri, bi, "B-T", "tri", "bi")
    terms = (u_b, u_t, b_t)
    gap = math.fsum(terms) / 3 if all(t is not None for t in terms) else None  # type: ignore[arg-type]
    if gap is None:
        undefined.append("gap is undefined: it needs all three terms")
    return ModalityGap(uni, bi, tri, u_b, u_t, b_t, gap, undefined)


def gap_from_levels(levels: Mapping[str, LevelAccuracy | None]) -> ModalityGap:
    """:func:`modality_gap` of :func:`pool_levels` output."""
    acc = {lvl: (v.accuracy if v is not None else None) for lvl, v in levels.items()}
    return modality_gap(acc.get("uni"), acc.get("bi"), acc.get("tri"))


# ---------------------------------------------------------------------------------------------------------------
# none-answers (MAPLE-QA+)


@dataclass(frozen=True)
class NoneAnswerStats:
    """Detection of none-answers: a positive is a sample whose chosen option is a none-answer (``pred_none``);
    it is true when the correct option is one (``gold_none``)."""

    gold_none: int
    pred_none: int
    true_positive: int
    precision: float | None
    recall: float | None
    f1: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def none_answer_stats(records: Sequence[ResultRecord]) -> NoneAnswerStats:
    """Precision = TP / #pred_none, recall = TP / #gold_none, F1 their harmonic mean; ``None`` on a 0 denominator."""
    gold = sum(r.gold_none for r in records)
    pred = sum(r.pred_none for r in records)
    tp = sum(r.gold_none and r.pred_none for r in records)
    precision = tp / pred if pred else None
    recall = tp / gold if gold else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return NoneAnswerStats(gold, pred, tp, precision, recall, f1)


# ---------------------------------------------------------------------------------------------------------------
# fusion gain (captions)


@dataclass(frozen=True)
class FusionGain:
    """Fraction of groups (videos) whose best multi-modal caption score beats their best uni-modal one.

    ``compared`` groups have both kinds of condition; ``only_uni``/``only_multi`` count the groups that lack one
    (they are not in the fraction). ``mean_margin`` is the mean of (best multi - best uni) over compared groups.
    """

    condition: str
    groups: int
    compared: int
    gains: int
    fraction: float | None
    mean_margin: float | None
    only_uni: int
    only_multi: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fusion_gain(records: Sequence[ResultRecord], condition: str = "available") -> FusionGain:
    """:class:`FusionGain` of caption records (MAPLE App. C.3).

    A condition's score is the mean score of its records in the group (all samples). The condition of a record is
    its ``available`` streams by default (what the model was shown; multi-modal = 2 or more streams), or its
    ``tag`` with ``condition="tag"``; the two agree on exact-stratum records, which is how MAPLE-Caption is
    evaluated. A tie is not a gain.
    """
    if condition not in FUSION_CONDITIONS:
        raise ValueError(f"fusion condition {condition!r} is not one of {', '.join(FUSION_CONDITIONS)}")
    groups = group_by(records, lambda r: (r.policy, r.group))
    gains = compared = only_uni = only_multi = 0
    margins: list[float] = []
    for recs in groups.values():
        by_cond = group_by(recs, lambda r: getattr(r, condition))
        means = {c: _mean([r.score for r in rs]) for c, rs in by_cond.items()}
        uni = [m for c, m in means.items() if len(c) == 1]
        multi = [m for c, m in means.items() if len(c) >= 2]
        if not uni or not multi:
            only_uni += bool(uni)
            only_multi += bool(multi)
            continue
        compared += 1
        margin = max(multi) - max(uni)  # type: ignore[type-var, operator]
        margins.append(margin)
        gains += margin > 0
    return FusionGain(
        condition=condition,
        groups=len(groups),
        compared=compared,
        gains=gains,
        fraction=gains / compared if compared else None,
        mean_margin=_mean(margins),
        only_uni=only_uni,
        only_multi=only_multi,
    )


# ---------------------------------------------------------------------------------------------------------------
# perception decay (accuracy by response length)


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str | None]:
    """Pearson correlation ``(r, None)``, or ``(None, reason)`` when it is undefined (fewer than 2 distinct x or y
    values, i.e. a zero variance)."""
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} x values but {len(y)} y values")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    for name, a in (("x", xa), ("y", ya)):
        if len(np.unique(a)) < 2:
            return None, f"undefined: fewer than 2 distinct {name} values"
    dx, dy = xa - xa.mean(), ya - ya.mean()
    return float((dx * dy).sum() / math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))), None


def quantile_edges(lengths: Sequence[float], n_bins: int) -> list[float]:
    """Edges of up to ``n_bins`` equal-count bins (quantiles of ``lengths``); tied quantiles merge bins, so there
    may be fewer. All lengths equal gives one bin ``[L, L]``."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if not len(lengths):
        raise ValueError("quantile_edges: no lengths")
    q = np.quantile(np.asarray(lengths, dtype=float), np.linspace(0.0, 1.0, n_bins + 1))
    edges = [float(v) for v in np.unique(q)]
    return edges if len(edges) > 1 else [edges[0], edges[0]]


@dataclass(frozen=True)
class LengthBin:
    """Bin ``[lo, hi)`` (the last bin includes ``hi``); ``centre`` = (lo + hi) / 2."""

    lo: float
    hi: float
    centre: float
    samples: int
    mean_length: float | None
    accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decay:
    """Accuracy per response-length bin and the correlations of docs/method.md §7.

    ``r_length``: Pearson r between each sample's response length and its correctness (score for captions);
    ``r_bins``: between bin centre and bin accuracy over non-empty bins. ``None`` with a ``*_note`` when undefined.
    ``below``/``above``: samples outside fixed edges (not in any bin, still in ``r_length``).
    """

    binning: str
    bins: list[LengthBin]
    r_length: float | None
    r_length_note: str | None
    r_bins: float | None
    r_bins_note: str | None
    below: int = 0
    above: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def perception_decay(records: Sequence[ResultRecord], n_bins: int = 5, edges: Sequence[float] | None = None) -> Decay:
    """:class:`Decay` of ``records`` binned by ``response_tokens``: fixed ``edges`` (increasing) when given, else
    ``n_bins`` equal-count quantile bins."""
    lengths = [float(r.response_tokens) for r in records]
    values = [r.value for r in records]
    if edges is not None:
        edges = [float(e) for e in edges]
        if len(edges) < 2 or any(b <= a for a, b in pairwise(edges)):
            raise ValueError(f"bin edges must be at least two strictly increasing numbers, got {edges}")
        binning = "fixed"
    else:
        if not records:
            raise ValueError("perception_decay: no records")
        edges = quantile_edges(lengths, n_bins)
        binning = f"quantile({n_bins})"
    members: list[list[int]] = [[] for _ in range(len(edges) - 1)]
    below = above = 0
    for i, x in enumerate(lengths):
        if x < edges[0]:
            below += 1
        elif x > edges[-1]:
            above += 1
        else:
            members[min(int(np.searchsorted(edges, x, side="right")) - 1, len(members) - 1)].append(i)
    bins = [
        LengthBin(
            lo=lo,
            hi=hi,
            centre=(lo + hi) / 2,
            samples=len(m),
            mean_length=_mean([lengths[i] for i in m]),
            accuracy=_mean([values[i] for i in m]),
        )
        for (lo, hi), m in zip(pairwise(edges), members, strict=True)
    ]
    r_length, note_length = pearson(lengths, values) if records else (None, "undefined: no samples")
    if note_length and "x values" in note_length:
        note_length = "undefined: fewer than 2 distinct response lengths"
    elif note_length and "y values" in note_length:
        note_length = "undefined: every sample has the same correctness (or score)"
    filled = [b for b in bins if b.samples]
    if len(filled) < 2:
        r_bins, note_bins = None, "undefined: fewer than 2 non-empty bins"
    else:
        r_bins, note_bins = pearson([b.centre for b in filled], [b.accuracy for b in filled])  # type: ignore[misc]
    return Decay(binning, bins, r_length, note_length, r_bins, note_bins, below, above)
