"""MMAU test-mini (``mmau-test-mini.json`` from github.com/Sakshi113/MMAU; HF ``lmms-lab/mmau`` test_mini).

Layout: a JSON list of ``{"id", "audio_id", "question", "choices", "answer", "dataset", "task", "split",
"category", "sub-category", "difficulty"}``; ``audio_id`` is ``./test-mini-audios/<id>.wav`` relative to the JSON
file; ``answer`` is the option **text**.

Mapping: tag ``A`` (audio-only benchmark, no video, no subtitles); ``answer`` becomes the option letter and the text
stays in ``extra_info.answer_text`` (MMAU is scored by string match on the text). Repeated options (27 items of
v05.15.25 list one option twice) are dropped, keeping the first; the count is in
``extra_info.duplicate_choices_dropped``. Items with more than six options (one garbled item) cannot be represented
and are skipped as ``invalid: too many choices``. ``dataset``, ``task`` (sound/music/speech), ``category``,
``sub_category`` and ``difficulty`` go to ``extra_info``; the source ``split`` (``test-mini``) is the row's split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter, Record, audio_mcq, options, text

META = ("dataset", "task", "category", "sub-category", "difficulty")


class MMAUConverter(Converter):
    name = "mmau"
    data_source = "mmau/test-mini"
    description = "MMAU test-mini JSON (audio MCQ, answer = option text); tag A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        return audio_mcq(
            record,
            options(record.get("choices")),
            record.get("answer"),
            text(record, "audio_id", "audio_path"),
            META,
            split="test-mini",
        )
