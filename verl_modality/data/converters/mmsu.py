"""MMSU (github.com/dingdongwang/MMSU; HF ``ddwang2000/MMSU``): spoken-language understanding, 5,000 items.

Layout: JSON / JSONL / parquet records ``{"id", "audio_path", "question", "choice_a", "choice_b", "choice_c",
"choice_d", "answer_gt", "task_name", "category", "sub-category", "sub-sub-category"}`` (a ``choices`` list is
accepted instead of ``choice_a..d``); ``answer_gt`` is the option **text**; ``audio_path`` is relative to the media
root. An ``audio`` column of the HF parquet is used for its ``path`` only (embedded bytes are not extracted: unpack
the audio next to the file and point ``--media-root`` at it).

Mapping: tag ``A``; answer text -> letter (text kept in ``extra_info.answer_text``); ``task_name``, ``category``,
``sub_category``, ``sub_sub_category`` to ``extra_info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import (
    Context,
    Converter,
    InvalidRow,
    Record,
    audio_mcq,
    get,
    options,
)

META = ("task_name", "category", "sub-category", "sub-sub-category", "linguistics_sub_discipline")


def audio_path(record: Mapping[str, Any]) -> str:
    """``audio_path``, or the path of an ``audio`` field (a string or a ``{"path": ...}`` dict)."""
    value = get(record, "audio_path", "audio", "audio_file")
    if isinstance(value, Mapping):
        value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise InvalidRow("missing field", "'audio_path' (no usable path in the audio field)")
    return value.strip()


class MMSUConverter(Converter):
    name = "mmsu"
    data_source = "mmsu"
    description = "MMSU (choice_a..choice_d, answer_gt = option text); tag A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        if record.get("choices") is not None:
            raw = options(record["choices"])
        else:
            raw = [str(record[k]).strip() for k in sorted(record) if k.startswith("choice_") and record[k] is not None]
        return audio_mcq(record, raw, get(record, "answer_gt", "answer"), audio_path(record), META)
