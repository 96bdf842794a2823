"""MAPLE-QA+ augmentation (docs/method.md §3): exact, superset and deficit variants of exact QA items.

From each exact QA record (``available == modality_tag``) the augmentation makes:

* an **exact** variant (the record itself, shown as its tag);
* **superset** variants: ``available`` strictly contains the tag, which needs media for a stream outside the tag;
* **deficit** variants: a tag stream is missing. By default ``available`` is a strict subset of the tag (possibly
  empty: text only); ``deficit="any"`` also takes sets that add streams outside the tag while missing one of it.

In a deficit variant the correct option's text is replaced by a none-answer (:mod:`verl_modality.data.none_answers`),
which becomes the answer (same letter). In ``rate`` (default 25 %) of exact and superset variants one *incorrect*
option is replaced by a none-answer and the answer stays (MAPLE App. B.2); ``replace="correct"`` follows the other
reading (§5.4.1): the correct option's text is replaced and the none-answer becomes the answer.

``combinations="all"`` emits every superset and deficit stream set; ``"one"`` one seeded choice per stratum.
All random draws come from generators seeded by ``(seed, source id, ...)``, so a record's variants do not depend on
the other rows or their order, and the same input and seed give identical output. A variant's id is
``<source id>/<available>`` (``none`` for text only); its ``extra_info`` records ``source_id``, ``stratum``,
``none_index`` (the replaced option's 0-based index, -1 for none) and ``none_replaced`` (``correct``,
``incorrect`` or ``""``).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations as _subsets
from pathlib import Path
from typing import Any

import numpy as np

from verl_modality import options, protocol, vocabulary
from verl_modality.data import schema, validate
from verl_modality.data.none_answers import NONE_ANSWERS
from verl_modality.data.prompts import PromptConfig, render_messages
from verl_modality.data.schema import Sample
from verl_modality.options import option
from verl_modality.vocabulary import LETTERS, STREAMS, TAGS, canonical_tag, stratum_of

COMBINATIONS = ("all", "one")
REPLACE_MODES = ("incorrect", "correct")
DEFICIT_MODES = ("subset", "any")
#: how the options are named in messages (`verl-modality augment-qa --rate ...`)
SECTION = "augment"
NO_STREAMS_ID = "none"


class AugmentationError(ValueError):
    """A source row that cannot be augmented; the message starts with the row's id."""


@dataclass(frozen=True)
class AugmentConfig:
    """Options of :func:`augment_sample` (see the module docstring)."""

    seed: int = option(0, help="random seed of the augmentation")
    rate: float = option(0.25, ge=0, le=1, help="share of exact / superset items given a none-answer")
    combinations: str = option("all", choices=COMBINATIONS, help="every stream set or one per stratum")
    replace: str = option("incorrect", choices=REPLACE_MODES, help="the option a none-answer replaces")
    deficit: str = option("subset", choices=DEFICIT_MODES, help="deficit sets: subsets of the tag or any")
    prompt: Any = None  # a PromptConfig; None: the schema's default prompt

    def __post_init__(self) -> None:
        options.validate(self, SECTION)
        if self.prompt is not None and not isinstance(self.prompt, PromptConfig):
            raise ValueError(f"{SECTION}.prompt must be a PromptConfig, got {type(self.prompt).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# stream sets


def _stream_sets(streams: str) -> list[str]:
    """Every subset of ``streams`` in canonical form, larger sets first, then canonical order."""
    letters = [s for s in STREAMS if s in streams]
    out = []
    for size in range(len(letters), -1, -1):
        out += ["".join(c) for c in _subsets(letters, size)]
    return out


def superset_sets(tag: str, media_streams: str) -> list[str]:
    """Stream sets that strictly contain ``tag`` and that the record has media for."""
    need = set(canonical_tag(tag))
    return [s for s in _stream_sets(media_streams) if need < set(s)]


def deficit_sets(tag: str, media_streams: str, mode: str = "subset") -> list[str]:
    """Stream sets missing a stream of ``tag``: strict subsets of the tag (``subset``), or any such set the record
    has media for (``any``)."""
    if mode not in DEFICIT_MODES:
        raise ValueError(f"deficit mode {mode!r} is not one of {', '.join(DEFICIT_MODES)}")
    tag = canonical_tag(tag)
    pool = tag if mode == "subset" else canonical_tag(media_streams, allow_empty=True)
    return [s for s in _stream_sets(pool) if stratum_of(tag, s) == "deficit"]


def variant_id(source_id: str, available: str) -> str:
    return f"{source_id}/{available or NO_STREAMS_ID}"


# ---------------------------------------------------------------------------------------------------------------
# checks and randomness


def _rng(seed: int, *keys: str) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join([str(int(seed)), *keys]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def check_source(sample: Sample) -> None:
    """Raise :class:`AugmentationError` naming the sample unless it is an exact QA item with a valid answer."""
    sid = sample.id
    if sample.task != "qa":
        raise AugmentationError(
            f"{sid}: task {sample.task!r} cannot be augmented; MAPLE-QA+ needs multiple-choice (qa) rows"
        )
    try:
        tag = canonical_tag(sample.modality_tag)
        shown = canonical_tag(sample.available, allow_empty=True)
    except ValueError as exc:
        raise AugmentationError(f"{sid}: {exc}") from None
    stratum = stratum_of(tag, shown)
    if stratum != "exact":
        raise AugmentationError(
            f"{sid}: stratum {stratum!r} (modality_tag {tag!r}, available {shown!r}); augmentation starts from "
            "exact rows only"
        )
    n = len(sample.choices)
    if not schema.MIN_CHOICES <= n <= schema.MAX_CHOICES:
        raise AugmentationError(f"{sid}: has {n} options; expected {schema.MIN_CHOICES} to {schema.MAX_CHOICES}")
    if not isinstance(sample.answer, str) or sample.answer not in LETTERS[:n]:
        raise AugmentationError(
            f"{sid}: answer {sample.answer!r} is not among the {n} choices ({LETTERS[0]}-{LETTERS[n - 1]})"
        )


def _pick_none(rng: np.random.Generator, choices: Sequence[str]) -> str:
    taken = {str(c).strip().casefold() for c in choices}
    pool = [p for p in NONE_ANSWERS if p.casefold() not in taken]
    return pool[int(rng.integers(len(pool)))]


# ---------------------------------------------------------------------------------------------------------------
# augmentation


def _variant(sample: Sample, available: str, config: AugmentConfig) -> Sample:
    stratum = stratum_of(sample.modality_tag, available)
    rng = _rng(config.seed, sample.id, available)
    choices = list(sample.choices)
    correct = LETTERS.index(sample.answer)
    none_index, kind = -1, ""
    if stratum == "deficit":
        none_index, kind = correct, "correct"
    elif float(rng.random()) < config.rate:
        if config.replace == "correct":
            none_index, kind = correct, "correct"
        else:
            wrong = [i for i in range(len(choices)) if i != correct]
            none_index, kind = wrong[int(rng.integers(len(wrong)))], "incorrect"
    if none_index >= 0:
        choices[none_index] = _pick_none(rng, choices)
    info = {
        **sample.extra_info,
        "source_id": sample.id,
        "stratum": stratum,
        protocol.INFO_NONE_INDEX: none_index,
        "none_replaced": kind,
    }
    out = replace(sample, id=variant_id(sample.id, available), choices=choices, extra_info=info).with_available(
        available
    )
    if config.prompt is not None:
        subtitle = out.subtitle if "S" in out.available else None
        prompt = render_messages(
            out.question, out.choices, len(out.videos), len(out.audios), subtitle, "qa", config.prompt
        )
        out = replace(out, prompt=prompt)
    return out


def augment_sample(sample: Sample, config: AugmentConfig | None = None) -> list[Sample]:
    """The exact, superset and deficit variants of one exact QA record, in that order."""
    config = config or AugmentConfig()
    check_source(sample)
    tag = canonical_tag(sample.modality_tag)
    sets = {
        "superset": superset_sets(tag, sample.media_streams),
        "deficit": deficit_sets(tag, sample.media_streams, config.deficit),
    }
    chosen = [tag]
    for stratum in ("superset", "deficit"):
        options = sets[stratum]
        if config.combinations == "one" and options:
            options = [options[int(_rng(config.seed, sample.id, "pick", stratum).integers(len(options)))]]
        chosen += options
    return [_variant(sample, available, config) for available in chosen]


def augment_samples(samples: Iterable[Sample], config: AugmentConfig | None = None) -> list[Sample]:
    """Variants of every record, record by record; ``extra_info.index`` is renumbered 0..n-1 in output order."""
    config = config or AugmentConfig()
    out: list[Sample] = []
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise AugmentationError(f"{sample.id}: duplicate id in the input")
        seen.add(sample.id)
        out += augment_sample(sample, config)
    return [replace(s, index=i) for i, s in enumerate(out)]


def _sample_of(row: Mapping[str, Any], position: int) -> Sample:
    try:
        return Sample.from_row(row)
    except (KeyError, TypeError) as exc:
        rid = row.get(schema.ID) if isinstance(row, Mapping) else None
        raise AugmentationError(f"{rid if rid else f'row {position}'}: not a schema row (missing {exc})") from None


def augment_rows(rows: Sequence[Mapping[str, Any]], config: AugmentConfig | None = None) -> list[dict[str, Any]]:
    """:func:`augment_samples` on parquet rows (as from :func:`schema.read_rows`), returning rows."""
    return [s.to_row() for s in augment_samples((_sample_of(r, i) for i, r in enumerate(rows)), config)]


# ---------------------------------------------------------------------------------------------------------------
# files and summaries


def _rebase(sample: Sample, src: Path, dst: Path) -> Sample:
    """Relative media paths of a record read from directory ``src``, rewritten for a file in ``dst``."""

    def move(paths: list[str]) -> list[str]:
        return [p if os.path.isabs(p) else os.path.relpath(src / p, dst) for p in paths]

    return replace(
        sample,
        videos=move(sample.videos),
        audios=move(sample.audios),
        all_videos=move(sample.all_videos),
        all_audios=move(sample.all_audios),
    )


def augment_file(
    in_path: str | os.PathLike, out_path: str | os.PathLike, config: AugmentConfig | None = None
) -> dict[str, Any]:
    """Read ``in_path``, write the variants to ``out_path`` (relative media paths rewritten when the directories
    differ), check the output against the schema (media not opened) and return :func:`summarize` of it."""
    src, dst = Path(in_path).resolve().parent, Path(out_path).resolve().parent
    rows = schema.read_rows(in_path)
    if not rows:
        raise AugmentationError(f"{os.fspath(in_path)}: holds no rows")
    samples = [_sample_of(r, i) for i, r in enumerate(rows)]
    if src != dst:
        samples = [_rebase(s, src, dst) for s in samples]
    out = [s.to_row() for s in augment_samples(samples, config)]
    validate.validate_rows(out, check_media=False, source=os.fspath(out_path))
    schema.write_rows(out, out_path)
    return summarize(out)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of augmented rows: ``rows``, ``sources``, ``by_stratum``, ``by_tag`` (tag -> stratum -> n) and
    ``substitutions`` (stratum -> {"correct": n, "incorrect": n})."""
    by_stratum: Counter[str] = Counter()
    by_tag: dict[str, Counter[str]] = {}
    subs: dict[str, Counter[str]] = {s: Counter() for s in vocabulary.STRATA}
    sources = set()
    for row in rows:
        info = row.get(schema.EXTRA_INFO) or {}
        stratum, tag = row[schema.STRATUM], row[schema.MODALITY_TAG]
        by_stratum[stratum] += 1
        by_tag.setdefault(tag, Counter())[stratum] += 1
        sources.add(info.get("source_id", row[schema.ID]))
        if info.get("none_replaced"):
            subs[stratum][info["none_replaced"]] += 1
    order = [t for t in TAGS if t in by_tag]
    return {
        "rows": len(rows),
        "sources": len(sources),
        "by_stratum": {s: by_stratum[s] for s in vocabulary.STRATA},
        "by_tag": {t: {s: by_tag[t][s] for s in vocabulary.STRATA} for t in order},
        "substitutions": {s: dict(subs[s]) for s in vocabulary.STRATA},
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`summarize`: rows per tag and stratum, then the none-answer substitutions."""
    strata = vocabulary.STRATA
    head = ["tag", *strata, "total"]
    body = [[tag, *(str(c[s]) for s in strata), str(sum(c.values()))] for tag, c in summary["by_tag"].items()]
    body.append(["all", *(str(summary["by_stratum"][s]) for s in strata), str(summary["rows"])])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(head), "  ".join("-" * w for w in widths), *(line(r) for r in body[:-1])]
    lines += ["  ".join("-" * w for w in widths), line(body[-1])]
    lines.append(f"{summary['rows']} rows from {summary['sources']} source records")
    lines.append("none-answer substitutions (replaced option: correct / incorrect):")
    total = 0
    for s in strata:
        n = summary["by_stratum"][s]
        c = summary["substitutions"][s]
        k = c.get("correct", 0) + c.get("incorrect", 0)
        total += k
        share = f"{100.0 * k / n:.1f} %" if n else "-"
        lines.append(f"  {s:<9}{k} of {n} ({share}; correct {c.get('correct', 0)}, incorrect {c.get('incorrect', 0)})")
    lines.append(f"  {'total':<9}{total}")
    return "\n".join(lines)
