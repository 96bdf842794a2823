"""MMSU (github.com/dingdongwang/MMSU; HF ``ddwang2000/MMSU``): spoken-language understanding, 5,000 items.

Layouts, with the field names of the published files:

* ``mmsu.jsonl`` (also JSON): ``{"id", "audio_path", "question", "choice_a", "choice_b", "choice_c", "choice_d",
  "answer_gt", "task_name", "category", "sub-category", "sub-sub-category", "linguistics_sub_discipline"}``;
  ``audio_path`` is ``/audio/<task>_<uuid>.wav``: root-relative with a leading slash, found under ``--media-root``
  (the folder holding ``audio/``) when it does not exist as given;
* the Hugging Face export (``data/*.parquet``, or a ``datasets.save_to_disk`` folder of ``.arrow`` files): the same
  fields with an ``audio`` column of ``{"bytes", "path"}`` structs. The bytes are written to
  ``<out folder>/media/mmsu/``; a struct without bytes gives its ``path``.

A ``choices`` list is accepted instead of ``choice_a..d``, ``answer`` instead of ``answer_gt``; the answer is the
option **text** (a letter also works).

Mapping: tag ``A``; answer text -> letter (text kept in ``extra_info.answer_text``); ``task_name``, ``category``,
``sub_category``, ``sub_sub_category``, ``linguistics_sub_discipline`` to ``extra_info``. The report counts rows per
``category``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter
from verl_modality.data.converters.fields import audio_mcq, get, media_path, options
from verl_modality.data.converters.records import Record

META = ("task_name", "category", "sub-category", "sub-sub-category", "linguistics_sub_discipline")
AUDIO_FIELDS = ("audio_path", "audio", "audio_file")


def audio_path(record: Mapping[str, Any]) -> str:
    """The record's audio: embedded bytes (already written out) first, else ``audio_path``, ``audio`` (a path or a
    ``{"path": ...}`` struct) or ``audio_file``."""
    return media_path(record, "audio_path", "audio", "audio_file")


class MMSUConverter(Converter):
    name = "mmsu"
    data_source = "mmsu"
    description = "MMSU jsonl or HF parquet/arrow (choice_a..d, answer_gt = option text, embedded audio); tag A"
    media_fields = AUDIO_FIELDS
    category_fields = ("category",)
    fixed_tag = "A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        if record.get("choices") is not None:
            raw = options(record["choices"])
        else:
            raw = [str(record[k]).strip() for k in sorted(record) if k.startswith("choice_") and record[k] is not None]
        return audio_mcq(record, raw, get(record, "answer_gt", "answer"), audio_path(record), META)
