"""Daily-Omni (github.com/Lliar-liar/Daily-Omni; HF ``liarliar/Daily-Omni``: ``qa.json`` + ``Videos.tar``).

Layout: a JSON list of ``{"video_id", "Question", "Choice", "Answer", "Type", "video_category",
"video_duration"}``; ``Choice`` is a list of lettered options (``"A. ..."``), ``Answer`` the letter. The video of an
item is ``<media root>/<video_id>/<video_id>_video.mp4`` (``Videos.tar`` unpacked; the media root is the folder
holding the ``<video_id>/`` folders). Items have no id of their own: the row id is ``<video_id>-<n>``, ``n`` counting
that video's questions in file order (an ``id``/``qid`` field wins if present). A parquet / arrow export with the
video (and a separate audio track) embedded in ``video`` / ``audio`` columns (``{"bytes", "path"}`` structs) is
also read: the embedded files are written to ``<out folder>/media/daily-omni/`` and used instead of the folders.

Mapping:

* ``answer``: the letter, checked against the options (the option text is kept in ``extra_info.answer_text``);
  the ``"A. "`` prefixes are stripped from the option texts.
* Audio: if ``<video_id>/<video_id>_audio.wav`` exists next to the video it is the A stream. Otherwise the video's
  soundtrack is **not** extracted: the record has media for ``V`` only, ``available`` is ``V`` and, with tag
  ``VA``, the row is in the ``deficit`` stratum; the report counts these rows under the note
  ``no separate audio wav``. Extract the tracks first (``ffmpeg -i X_video.mp4 -ac 1 -ar 16000 X_audio.wav``)
  to get ``exact`` rows. (docs/method.md §1: the soundtrack is a separate audio item, never ``use_audio_in_video``.)
* Tag: ``VA`` for every item. Daily-Omni's QA types (AV Event Alignment, Comparative, Context understanding,
  Event Sequence, Inference, Reasoning) were all generated and filtered to need both the picture and the sound;
  the benchmark's own ablation (``--input_mode visual`` / ``audio``) drops well below the A+V score for every type,
  so no per-type mapping to a uni-modal tag is justified. No subtitles exist, so ``S`` never appears.
* ``Type``, ``video_category``, ``video_duration`` and ``video_id`` go to ``extra_info`` (Daily-Omni reports by
  type, category and duration); the report counts rows per ``Type``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter
from verl_modality.data.converters.fields import extra_info, get, mcq, options, text
from verl_modality.data.converters.media_extract import EmbeddedMedia
from verl_modality.data.converters.records import Record
from verl_modality.data.converters.source import RecordHook

META = ("Type", "video_category", "video_duration", "video_id")
NO_AUDIO = "no separate audio wav (A not available)"


def video_paths(video_id: str) -> tuple[str, str]:
    """Daily-Omni's per-video folder: ``(<id>/<id>_video.mp4, <id>/<id>_audio.wav)``."""
    return f"{video_id}/{video_id}_video.mp4", f"{video_id}/{video_id}_audio.wav"


class DailyOmniConverter(Converter):
    name = "daily-omni"
    data_source = "daily-omni"
    description = "Daily-Omni qa.json (video <id>/<id>_video.mp4, letter answers) or parquet/arrow; tag VA"
    media_fields = ("video", "audio")
    category_fields = ("Type",)
    fixed_tag = "VA"

    def __init__(self) -> None:
        self._per_video: Counter = Counter()

    def read(self, source, limit: int | None = None, hook: RecordHook | None = None) -> list[dict[str, Any]]:
        self._per_video = Counter()
        return super().read(source, limit, hook)

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        video_id = text(record, "video_id")
        self._per_video[video_id] += 1
        rid = text(record, "id", "qid", default="") or f"{video_id}-{self._per_video[video_id] - 1}"
        choices, letter, info = mcq(
            options(get(record, "Choice", "Choices", "choices"), strip_letters=True), get(record, "Answer", "answer")
        )
        video, audio = video_paths(video_id)
        if isinstance(record.get("video"), EmbeddedMedia):
            video = record["video"]
        if isinstance(record.get("audio"), EmbeddedMedia):
            audio = record["audio"]
        has_audio = ctx.exists(audio)
        return Record(
            id=rid,
            question=text(record, "Question", "question"),
            choices=choices,
            answer=letter,
            modality_tag="VA",
            videos=[video],
            audios=[audio] if has_audio else [],
            extra_info={**info, **extra_info(record, META)},
            notes=[] if has_audio else [NO_AUDIO],
        )
