"""MMAR (github.com/ddlBoJack/MMAR ``MMAR-meta.json``; audio on HF ``BoJack/MMAR``): 1,000 audio reasoning items.

Layouts, with the field names of the published files:

* ``MMAR-meta.json``: a JSON list of ``{"id", "audio_path", "question", "choices", "answer", "modality",
  "category", "sub-category", "language", "source", "url", "timestamp"}``; ``audio_path`` (``./audio/<id>.wav``)
  is relative to the media root (the folder holding ``audio/``);
* parquet / arrow exports of it with an ``audio`` column of ``{"bytes", "path"}`` structs: the embedded audio is
  written to ``<out folder>/media/mmar/`` and wins over ``audio_path``.

``answer`` is the option **text**.

Mapping: tag ``A``: every MMAR item is a single audio clip, whatever its content; MMAR's own ``modality`` field
(sound, music, speech, mix-sound-music, ...) describes what is *in* the audio, not which of our streams are needed,
so it goes to ``extra_info.modality`` (the axis MMAR reports by, and the report's category). Answer text -> letter
(text kept in ``extra_info.answer_text``); ``category``, ``sub_category``, ``language``, ``source``, ``url``,
``timestamp`` to ``extra_info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter
from verl_modality.data.converters.fields import audio_mcq, media_path, options
from verl_modality.data.converters.records import Record

META = ("modality", "category", "sub-category", "language", "source", "url", "timestamp")
AUDIO_FIELDS = ("audio_path", "audio_id", "audio")


class MMARConverter(Converter):
    name = "mmar"
    data_source = "mmar"
    description = "MMAR-meta.json or parquet/arrow (audio MCQ, answer = option text, modality -> extra_info); tag A"
    media_fields = AUDIO_FIELDS
    category_fields = ("modality",)
    fixed_tag = "A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        return audio_mcq(
            record, options(record.get("choices")), record.get("answer"), media_path(record, *AUDIO_FIELDS), META
        )
