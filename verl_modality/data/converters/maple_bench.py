"""MAPLE-bench test splits (HF ``lihVerma/MAPLE-bench``, CC-BY-NC-ND-4.0: convert locally, do not redistribute).

Three layouts: ``maple-qa-exact`` (``MAPLE_QA_exact``, 5,001 MCQs shown exactly their Required Modality Tag),
``maple-qa-all`` (``MAPLE_QA_all_combinations``, 34,048 = 4,864 questions x 7 stream combinations, MAPLE-QA+: each
item carries the streams it is shown, hence its stratum; deficit items have a "none"-style correct answer) and
``maple-caption`` (``MAPLE_caption``, 5,348 open-ended captions, 764 per tag). Video ids refer to VAST-omni
(QA built on Daily-Omni / VAST-omni clips); the media are not part of the dataset.

**ASSUMED LAYOUT.** The dataset card confirms the splits, their sizes, the per-item minimal modality tag over
video / audio / subtitles and the VAST-omni video ids, but the stored copies of the card stop before the field
list. The field names below are therefore assumed; each accepts the aliases listed, so small differences only need
a new alias here:

==================  =============================================================================================
field               assumed names (first found wins)
==================  =============================================================================================
id                  ``id``, ``qid``, ``question_id``, ``sample_id`` (default: ``<video_id>-<row>``)
video id            ``video_id``, ``vid``, ``video`` (when it is text, not embedded media)
required tag        ``modality_tag``, ``rmt``, ``required_modalities``, ``tag``, ``modality``, ``modalities``
                    (``"VA"``, ``["V", "A"]``, ``"video+audio"``, ...)
shown streams       ``available``, ``available_modalities``, ``input_modalities``, ``combination``, ``condition``
                    (``maple-qa-all`` only; required there. ``stratum``, if present, must agree)
question            ``question``, ``query``
options             ``choices``, ``options`` (list, ``"A. ..."`` strings, or ``{"A": ...}`` dict)
answer              ``answer``, ``gt``, ``label`` (letter or option text)
subtitle            ``subtitle``, ``subtitles``, ``transcript`` (string or list of lines)
caption reference   ``caption``, ``reference``, ``reference_caption``, ``gt_caption``, ``answer``
caption prompt      ``prompt``, ``instruction``, ``question`` (default: ``prompts.CAPTION_INSTRUCTION``)
==================  =============================================================================================

Media: embedded bytes in ``video_path`` / ``video`` / ``audio_path`` / ``audio`` (``{"bytes", "path"}`` structs or
raw bytes of a parquet / arrow export, written to ``<out folder>/media/<layout>/``) win, then an explicit
``video_path`` / ``audio_path`` field; else the video is the first that exists of
``<id>/<id>_video.mp4`` (Daily-Omni folder style) and ``<id>.mp4``, the audio of ``<id>/<id>_audio.wav`` and
``<id>.wav``. Streams the item is shown (``available``; the tag for exact / caption items) must have media: a
shown ``V``/``A`` without its file is a missing-media row, a shown ``S`` without subtitle text is
``invalid: no subtitle``. Streams not shown are attached when their file exists (so QA+ variants can be built from
the ``media`` column later). As for Daily-Omni, a video's soundtrack is not extracted: ``A`` needs a wav.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality import vocabulary
from verl_modality.data import prompts
from verl_modality.data.converters.base import Context, Converter
from verl_modality.data.converters.fields import extra_info, get, mcq, options, parse_streams, text
from verl_modality.data.converters.media_extract import EmbeddedMedia
from verl_modality.data.converters.records import InvalidRow, Record

TAG_FIELDS = ("modality_tag", "rmt", "required_modalities", "tag", "modality", "modalities")
AVAILABLE_FIELDS = ("available", "available_modalities", "input_modalities", "combination", "condition")
META = ("category", "type", "question_type", "source", "video_category", "video_duration")


def _subtitle(record: Mapping[str, Any]) -> str:
    value = get(record, "subtitle", "subtitles", "transcript", default="")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple):
        value = " ".join(str(v).strip() for v in value if v is not None)
    return " ".join(str(value).split())


class _MapleBase(Converter):
    data_source = "maple-bench"
    needs_available = False
    media_fields = ("video_path", "video", "audio_path", "audio")

    def _media(self, record: Mapping[str, Any], video_id: str, shown: str, ctx: Context) -> tuple[list, list]:
        videos, audios = [], []
        for stream, fields, candidates, bucket in (
            ("V", ("video_path", "video"), (f"{video_id}/{video_id}_video.mp4", f"{video_id}.mp4"), videos),
            ("A", ("audio_path", "audio"), (f"{video_id}/{video_id}_audio.wav", f"{video_id}.wav"), audios),
        ):
            embedded = next((record[f] for f in fields if isinstance(record.get(f), EmbeddedMedia)), None)
            explicit = record.get(fields[0])
            if isinstance(explicit, Mapping):  # a {"bytes": None, "path": ...} struct
                explicit = explicit.get("path")
            if embedded:
                candidates = (embedded,)
            elif isinstance(explicit, str) and explicit.strip():
                candidates = (explicit.strip(),)
            found = ctx.first_existing(*candidates)
            if found:
                bucket.append(found)
            elif stream in shown:
                bucket.append(candidates[0])  # reported as missing media by the media check
        return videos, audios

    def _common(self, record: Mapping[str, Any], index: int, ctx: Context) -> dict[str, Any]:
        video = record.get("video")
        video_is_id = isinstance(video, str) and not isinstance(video, EmbeddedMedia)
        video_id = text(record, *(("video_id", "vid", "video") if video_is_id else ("video_id", "vid")))
        tag = parse_streams(get(record, *TAG_FIELDS), "modality tag")
        if self.needs_available:
            shown = parse_streams(get(record, *AVAILABLE_FIELDS), "available streams")
            given = record.get("stratum")
            if isinstance(given, str) and given.strip():
                expected = vocabulary.stratum_of(tag, shown)
                if given.strip().lower().replace("modality-", "") != expected:
                    raise InvalidRow("stratum disagrees", f"{given!r} but tag {tag} shown {shown} is {expected}")
        else:
            shown = parse_streams(get(record, *AVAILABLE_FIELDS, default=tag), "available streams")
        subtitle = _subtitle(record)
        if "S" in shown and not subtitle:
            raise InvalidRow("no subtitle", f"S is shown but the item has no subtitle text (tag {tag})")
        videos, audios = self._media(record, video_id, shown, ctx)
        source_id = text(record, "id", "qid", "question_id", "sample_id", default="") or f"{video_id}-{index}"
        info = extra_info(record, META)
        info["video_id"] = video_id
        info["source_id"] = source_id
        return dict(id=source_id, tag=tag, shown=shown, subtitle=subtitle, videos=videos, audios=audios, info=info)


class MapleQAExactConverter(_MapleBase):
    name = "maple-qa-exact"
    description = "MAPLE_QA_exact (MCQ shown exactly its tag) [assumed field names]"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        c = self._common(record, index, ctx)
        choices, letter, info = mcq(
            options(get(record, "choices", "options"), strip_letters=True), get(record, "answer", "gt", "label")
        )
        return Record(
            id=self._row_id(c),
            question=text(record, "question", "query"),
            choices=choices,
            answer=letter,
            modality_tag=c["tag"],
            videos=c["videos"],
            audios=c["audios"],
            subtitle=c["subtitle"],
            available=c["shown"],
            extra_info={**info, **c["info"]},
        )

    def _row_id(self, c: Mapping[str, Any]) -> str:
        return c["id"]


class MapleQAAllConverter(MapleQAExactConverter):
    name = "maple-qa-all"
    description = "MAPLE_QA_all_combinations (each item with its shown streams -> stratum) [assumed field names]"
    needs_available = True

    def _row_id(self, c: Mapping[str, Any]) -> str:
        return f"{c['id']}-{c['shown']}"  # one question appears under all seven combinations


class MapleCaptionConverter(_MapleBase):
    name = "maple-caption"
    fixed_task = "caption"
    description = "MAPLE_caption (open-ended captions, task=caption, judge reward) [assumed field names]"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        c = self._common(record, index, ctx)
        reference = text(record, "caption", "reference", "reference_caption", "gt_caption", "answer")
        instruction = text(record, "prompt", "instruction", "question", default="") or prompts.CAPTION_INSTRUCTION
        return Record(
            id=f"{c['id']}-{c['shown']}" if c["shown"] != c["tag"] else c["id"],
            question=instruction,
            answer=reference,
            modality_tag=c["tag"],
            videos=c["videos"],
            audios=c["audios"],
            subtitle=c["subtitle"],
            available=c["shown"],
            task="caption",
            extra_info=c["info"],
        )
