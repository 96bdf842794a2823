"""MMAR (github.com/ddlBoJack/MMAR ``MMAR-meta.json``; audio on HF ``BoJack/MMAR``): 1,000 audio reasoning items.

Layout: a JSON list of ``{"id", "audio_path", "question", "choices", "answer", "modality", "category",
"sub-category", "language", "source", "url", "timestamp"}``; ``audio_path`` (``./audio/<id>.wav``) is relative to
the media root; ``answer`` is the option **text**.

Mapping: tag ``A``: every MMAR item is a single audio clip, whatever its content; MMAR's own ``modality`` field
(sound, music, speech, mix-sound-music, ...) describes what is *in* the audio, not which of our streams are needed,
so it goes to ``extra_info.modality`` (the axis MMAR reports by). Answer text -> letter (text kept in
``extra_info.answer_text``); ``category``, ``sub_category``, ``language``, ``source``, ``url``, ``timestamp`` to
``extra_info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter, Record, audio_mcq, options, text

META = ("modality", "category", "sub-category", "language", "source", "url", "timestamp")


class MMARConverter(Converter):
    name = "mmar"
    data_source = "mmar"
    description = "MMAR-meta.json (audio MCQ, answer = option text, modality -> extra_info); tag A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        return audio_mcq(
            record, options(record.get("choices")), record.get("answer"), text(record, "audio_path", "audio_id"), META
        )
