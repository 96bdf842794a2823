"""AudioMCQ (HF ``inclusionAI/AudioMCQ``, 571k audio MCQs with weak / strong audio-contribution splits).

Layout. Confirmed by the dataset card: every record starts with ``source_dataset`` (Clotho, AudioCaps, CompA-R,
MusicCaps, LP-MusicCaps-MTT, SpeechCraft-LibriTTS-R, TACOS) and ``id``. **Assumed** (the stored copy of the card is
truncated after those two fields): ``audio_path`` (aliases ``audio``, ``audio_file``; relative to the media root),
``question``, ``choices`` (list; alias ``options``), ``answer`` (option text or letter), ``audio_contribution``
(``weak`` / ``strong``; alias ``ac_split``), ``question_type`` and optional CoT fields. Files may be JSON, JSONL or
parquet.

Mapping: tag ``A``; answer -> letter (text kept in ``extra_info.answer_text``); ``source_dataset``,
``audio_contribution``, ``question_type`` to ``extra_info`` (the audio-contribution split is what ACF-style
filtering and weak-to-strong curricula select on). CoT annotations are not copied (training targets, not metadata).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter, Record, audio_mcq, get, options
from verl_modality.data.converters.mmsu import audio_path

META = ("source_dataset", "audio_contribution", "ac_split", "question_type", "audio_type")


class AudioMCQConverter(Converter):
    name = "audiomcq"
    data_source = "audiomcq"
    description = "AudioMCQ records (source_dataset, id, audio_path, question, choices, answer); tag A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        return audio_mcq(
            record,
            options(get(record, "choices", "options")),
            get(record, "answer", "answer_gt"),
            audio_path(record),
            META,
            split="train",
        )
