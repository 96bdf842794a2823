"""MMAU (github.com/Sakshi113/MMAU ``mmau-test-mini.json``; HF ``lmms-lab/mmau`` test_mini / test).

Layouts, with the field names of the published files:

* ``mmau-test-mini.json``: a JSON list of ``{"id", "audio_id", "question", "choices", "answer", "dataset", "task",
  "split", "category", "sub-category", "difficulty"}``; ``audio_id`` is ``./test-mini-audios/<id>.wav`` relative
  to the JSON file (the default media root); ``choices`` is a list;
* the Hugging Face export (``data/test_mini-*.parquet``): the same fields without ``audio_id``, with an ``audio``
  column of ``{"bytes", "path"}`` structs (written to ``<out folder>/media/mmau/``) and ``choices`` stored as one
  string holding the list.

``answer`` is the option **text**.

Mapping: tag ``A`` (audio-only benchmark, no video, no subtitles); ``answer`` becomes the option letter and the text
stays in ``extra_info.answer_text`` (MMAU is scored by string match on the text). Repeated options (27 items of
v05.15.25 list one option twice) are dropped, keeping the first; the count is in
``extra_info.duplicate_choices_dropped``. Items with more than six options (one garbled item) cannot be represented
and are skipped as ``invalid: too many choices``. ``dataset``, ``task`` (sound/music/speech), ``category``,
``sub_category`` and ``difficulty`` go to ``extra_info``; the source ``split`` (``test-mini``) is the row's split.
The report counts rows per ``task``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter
from verl_modality.data.converters.fields import audio_mcq, media_path, options
from verl_modality.data.converters.records import Record

META = ("dataset", "task", "category", "sub-category", "difficulty")
AUDIO_FIELDS = ("audio_id", "audio_path", "audio")


class MMAUConverter(Converter):
    name = "mmau"
    data_source = "mmau/test-mini"
    description = "MMAU test-mini JSON or HF parquet (audio MCQ, answer = option text, embedded audio); tag A"
    media_fields = AUDIO_FIELDS
    category_fields = ("task",)
    fixed_tag = "A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        return audio_mcq(
            record,
            options(record.get("choices")),
            record.get("answer"),
            media_path(record, *AUDIO_FIELDS),
            META,
            split="test-mini",
        )
