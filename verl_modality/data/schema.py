"""The tagged-sample schema: one parquet row per multiple-choice item, readable by verl's ``RLHFDataset``.

The field list, the meaning of each field and the validator's error format (:mod:`verl_modality.data.validate`)
are documented in ``docs/data_schema.md``; the tags, strata and option letters are :mod:`verl_modality.vocabulary`'s. In
short: ``prompt`` is a chat message list whose text carries one ``<video>`` / ``<audio>``
placeholder per entry of ``videos`` / ``audios`` (the streams shown to the policy), ``modality_tag`` is the required
modality tag, ``available`` the streams shown, and ``stratum`` follows from the two (docs/method.md §1).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from verl_modality import protocol, vocabulary
from verl_modality.data import prompts

# ---------------------------------------------------------------------------------------------------------------
# field names and vocabularies

ID = "id"
DATA_SOURCE = "data_source"
PROMPT = "prompt"
VIDEOS = "videos"
AUDIOS = "audios"
SUBTITLE = "subtitle"
QUESTION = "question"
CHOICES = "choices"
ANSWER = "answer"
MODALITY_TAG = "modality_tag"
MEDIA_STREAMS = "media_streams"
AVAILABLE = "available"
STRATUM = "stratum"
TASK = "task"
REWARD_MODEL = "reward_model"
EXTRA_INFO = "extra_info"
#: Optional: every media file of the record, shown or not: ``{"videos": [path, ...], "audios": [path, ...]}``.
MEDIA = "media"

REQUIRED_FIELDS = (
    ID,
    DATA_SOURCE,
    PROMPT,
    VIDEOS,
    AUDIOS,
    SUBTITLE,
    QUESTION,
    CHOICES,
    ANSWER,
    MODALITY_TAG,
    MEDIA_STREAMS,
    AVAILABLE,
    STRATUM,
    TASK,
    REWARD_MODEL,
    EXTRA_INFO,
)
OPTIONAL_FIELDS = (MEDIA,)

_PLACEHOLDER_RE = re.compile(r"<image>|<video>|<audio>")

MIN_CHOICES, MAX_CHOICES = 2, len(vocabulary.LETTERS)
TASKS = ("qa", "caption")
#: Tasks of multiple-choice rows (2-6 choices, letter answer, "rule" reward). A "caption" row has no choices, the
#: reference caption as its answer and a "judge" reward (scored by an LLM judge).
CHOICE_TASKS = ("qa",)
ROLES = ("system", "user", "assistant")
REWARD_STYLE = "rule"
JUDGE_STYLE = "judge"


def reward_style(task: str) -> str:
    """``reward_model.style`` of a row of ``task``: ``"judge"`` for captions, ``"rule"`` otherwise."""
    return JUDGE_STYLE if task == "caption" else REWARD_STYLE


def count_placeholders(prompt: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Number of ``<image>``, ``<video>``, ``<audio>`` placeholders over all string message contents."""
    counts = {vocabulary.IMAGE_PLACEHOLDER: 0, vocabulary.VIDEO_PLACEHOLDER: 0, vocabulary.AUDIO_PLACEHOLDER: 0}
    for message in prompt:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            for match in _PLACEHOLDER_RE.findall(content):
                counts[match] += 1
    return counts


def resolve_path(path: str, root: str | os.PathLike | None) -> Path:
    """A media path of a row: absolute paths stay, relative ones are taken against ``root`` (the dataset root)."""
    p = Path(path)
    return p if p.is_absolute() or root is None else Path(root) / p


# ---------------------------------------------------------------------------------------------------------------
# the sample record


@dataclass
class Sample:
    """One record in Python form. ``videos``/``audios`` are the shown paths; ``all_videos``/``all_audios`` every
    media file of the record (shown or not), stored in the optional ``media`` column."""

    id: str
    question: str
    choices: list[str]
    answer: str
    modality_tag: str
    available: str
    media_streams: str
    prompt: list[dict[str, str]]
    videos: list[str] = field(default_factory=list)
    audios: list[str] = field(default_factory=list)
    subtitle: str = ""
    all_videos: list[str] = field(default_factory=list)
    all_audios: list[str] = field(default_factory=list)
    data_source: str = "verl_modality"
    task: str = "qa"
    index: int = 0
    split: str = "train"
    extra_info: dict[str, Any] = field(default_factory=dict)  # keys beyond index/split/modality_tag/id
    extra: dict[str, Any] = field(default_factory=dict)  # columns beyond the schema, passed through

    @property
    def stratum(self) -> str:
        return vocabulary.stratum_of(self.modality_tag, self.available)

    @property
    def level(self) -> str:
        return vocabulary.level(self.modality_tag)

    @classmethod
    def create(
        cls,
        id: str,
        question: str,
        choices: Sequence[str],
        answer: str,
        modality_tag: str,
        *,
        videos: Sequence[str] = (),
        audios: Sequence[str] = (),
        subtitle: str = "",
        available: str | None = None,
        **kwargs: Any,
    ) -> Sample:
        """A record from its media (``videos``/``audios`` = all files) shown as ``available`` (default: the tag);
        ``media_streams``, the shown lists and the prompt are derived."""
        tag = vocabulary.canonical_tag(modality_tag)
        media_streams = vocabulary.canonical_tag(
            ("V" if videos else "") + ("A" if audios else "") + ("S" if subtitle else ""), allow_empty=True
        )
        sample = cls(
            id=id,
            question=question,
            choices=list(choices),
            answer=answer,
            modality_tag=tag,
            available="",
            media_streams=media_streams,
            prompt=[],
            subtitle=subtitle,
            all_videos=list(videos),
            all_audios=list(audios),
            **kwargs,
        )
        return sample.with_available(tag if available is None else available)

    def with_available(self, available: str) -> Sample:
        """A copy showing the streams ``available`` (must be a subset of ``media_streams``), prompt rebuilt."""
        shown = vocabulary.canonical_tag(available, allow_empty=True)
        missing = set(shown) - set(self.media_streams)
        if missing:
            raise ValueError(f"{self.id}: cannot show {shown!r}, the record has media for {self.media_streams!r} only")
        videos = list(self.all_videos) if "V" in shown else []
        audios = list(self.all_audios) if "A" in shown else []
        subtitle = self.subtitle if "S" in shown else None
        if self.task == "caption":
            prompt = prompts.build_caption_prompt(self.question, len(videos), len(audios), subtitle)
        else:
            prompt = prompts.build_prompt(self.question, self.choices, len(videos), len(audios), subtitle)
        return replace(self, available=shown, videos=videos, audios=audios, prompt=prompt)

    def to_row(self) -> dict[str, Any]:
        """The parquet row (a plain dict in schema field order, extra columns last)."""
        row = {
            ID: self.id,
            DATA_SOURCE: self.data_source,
            PROMPT: [{"role": m["role"], "content": m["content"]} for m in self.prompt],
            VIDEOS: [{"video": p} for p in self.videos],
            AUDIOS: [{"audio": p} for p in self.audios],
            SUBTITLE: self.subtitle,
            QUESTION: self.question,
            CHOICES: list(self.choices),
            ANSWER: self.answer,
            MODALITY_TAG: self.modality_tag,
            MEDIA_STREAMS: self.media_streams,
            AVAILABLE: self.available,
            STRATUM: self.stratum,
            TASK: self.task,
            REWARD_MODEL: {"style": reward_style(self.task), "ground_truth": self.answer},
            EXTRA_INFO: {
                **self.extra_info,
                "index": int(self.index),
                "split": self.split,
                protocol.INFO_MODALITY_TAG: self.modality_tag,
                protocol.INFO_ID: self.id,
                # the reward function sees only extra_info: it needs the task and option texts (docs/method.md §4)
                protocol.INFO_TASK: self.task,
                protocol.INFO_CHOICES: list(self.choices),
            },
            MEDIA: {"videos": list(self.all_videos), "audios": list(self.all_audios)},
        }
        row.update(self.extra)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Sample:
        """Inverse of :meth:`to_row` (does not validate; see :func:`verl_modality.data.validate.validate_row`)."""
        videos = [item["video"] for item in as_list(row.get(VIDEOS))]
        audios = [item["audio"] for item in as_list(row.get(AUDIOS))]
        media = row.get(MEDIA) or {}
        info = dict(row.get(EXTRA_INFO) or {})
        known = set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)
        return cls(
            id=row[ID],
            question=row[QUESTION],
            choices=list(as_list(row[CHOICES])),
            answer=row[ANSWER],
            modality_tag=row[MODALITY_TAG],
            available=row[AVAILABLE],
            media_streams=row[MEDIA_STREAMS],
            prompt=[dict(m) for m in as_list(row[PROMPT])],
            videos=videos,
            audios=audios,
            subtitle=row.get(SUBTITLE) or "",
            all_videos=list(as_list(media.get("videos"))) if media else list(videos),
            all_audios=list(as_list(media.get("audios"))) if media else list(audios),
            data_source=row[DATA_SOURCE],
            task=row.get(TASK, "qa"),
            index=int(info.pop("index", 0)),
            split=str(info.pop("split", "train")),
            extra_info={k: v for k, v in info.items() if k not in _DERIVED_INFO},
            extra={k: v for k, v in row.items() if k not in known},
        )


#: extra_info keys that to_row derives from the record's fields (dropped again by from_row).
_DERIVED_INFO = (protocol.INFO_MODALITY_TAG, protocol.INFO_ID, protocol.INFO_TASK, protocol.INFO_CHOICES)


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def as_list(value: Any) -> list:
    """Lists as they come from pyarrow (list), pandas (ndarray) or None."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


# ---------------------------------------------------------------------------------------------------------------
# parquet I/O


def _arrow_type(name: str, rows: Sequence[Mapping[str, Any]]):
    import pyarrow as pa

    string_list = pa.list_(pa.string())
    fixed = {
        ID: pa.string(),
        DATA_SOURCE: pa.string(),
        PROMPT: pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
        VIDEOS: pa.list_(pa.struct([("video", pa.string())])),
        AUDIOS: pa.list_(pa.struct([("audio", pa.string())])),
        SUBTITLE: pa.string(),
        QUESTION: pa.string(),
        CHOICES: string_list,
        ANSWER: pa.string(),
        MODALITY_TAG: pa.string(),
        MEDIA_STREAMS: pa.string(),
        AVAILABLE: pa.string(),
        STRATUM: pa.string(),
        TASK: pa.string(),
        REWARD_MODEL: pa.struct([("style", pa.string()), ("ground_truth", pa.string())]),
        MEDIA: pa.struct([("videos", string_list), ("audios", string_list)]),
    }
    if name in fixed:
        return fixed[name]
    if name == EXTRA_INFO:
        base = [("index", pa.int64()), ("split", pa.string()), ("modality_tag", pa.string()), ("id", pa.string())]
        names = {n for n, _ in base}
        more = sorted({k for r in rows for k in (r.get(EXTRA_INFO) or {}) if k not in names})
        for key in more:
            base.append((key, pa.array([(r.get(EXTRA_INFO) or {}).get(key) for r in rows]).type))
        return pa.struct(base)
    return None  # inferred


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows to parquet with fixed column types (so e.g. an all-empty ``videos`` column keeps its type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError("no rows to write")
    names = [n for n in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS) if any(n in r for r in rows)]
    names += sorted({k for r in rows for k in r} - set(names))
    columns = [pa.array([r.get(n) for r in rows], type=_arrow_type(n, rows)) for n in names]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(columns, names=names), path)
    return path


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a parquet file as plain Python dicts."""
    import pyarrow.parquet as pq

    return pq.read_table(os.fspath(path)).to_pylist()
