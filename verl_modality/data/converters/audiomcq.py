"""AudioMCQ (HF ``inclusionAI/AudioMCQ``, 571k audio MCQs with weak / strong audio-contribution splits).

Layout. Confirmed by the dataset card: JSON files under ``datasets/``; every record starts with ``source_dataset``
(Clotho, AudioCaps, CompA-R, MusicCaps, LP-MusicCaps-MTT, SpeechCraft-LibriTTS-R, TACOS) and ``id``, and the items
carry two chain-of-thought annotations, a structured and an unstructured one. **Assumed** (the stored copies of the
card stop after the first two fields): ``audio_path`` (aliases ``audio``, ``audio_file``; relative to the media root,
or embedded bytes in a parquet / arrow export), ``question``, ``choices`` (list; alias ``options``), ``answer``
(option text or letter), ``audio_contribution`` (``weak`` / ``strong``; alias ``ac_split``), ``question_type``, and
the CoT fields in :data:`REASONING_FIELDS`. Files may be JSON, JSON lines, parquet or arrow.

Mapping: tag ``A``; answer -> letter (text kept in ``extra_info.answer_text``); ``source_dataset`` (the report's
category), ``audio_contribution``, ``question_type`` to ``extra_info`` (the audio-contribution split is what
ACF-style filtering and weak-to-strong curricula select on). Chain of thought: the first present of
:data:`REASONING_FIELDS` becomes ``extra_info.cot`` (:data:`REASONING_KEY`, where ``verl-modality w2s`` reads the
``<think>`` part of an SFT target); ``structured_cot`` and ``unstructured_cot`` are also kept under their own names,
so ``w2s --reasoning-key structured_cot`` trains on the other one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_modality.data.converters.base import Context, Converter
from verl_modality.data.converters.fields import audio_mcq, extra_info, get, info_value, options
from verl_modality.data.converters.mmsu import AUDIO_FIELDS, audio_path
from verl_modality.data.converters.records import Record

META = ("source_dataset", "audio_contribution", "ac_split", "question_type", "audio_type")
#: The extra_info key of the reasoning text (``W2SConfig.reasoning_key``'s default).
REASONING_KEY = "cot"
#: Source fields of a chain of thought, by preference for :data:`REASONING_KEY`.
REASONING_FIELDS = ("cot", "CoT", "chain_of_thought", "reasoning", "rationale", "unstructured_cot", "structured_cot")
#: CoT fields also kept under their own (normalised) names.
KEPT_COT_FIELDS = ("structured_cot", "unstructured_cot")


def reasoning(record: Mapping[str, Any]) -> str | None:
    """The first non-empty chain of thought of ``record`` (a structured one as JSON text), else None."""
    for name in REASONING_FIELDS:
        value = info_value(record.get(name))
        if value is not None and value.strip():
            return value.strip()
    return None


class AudioMCQConverter(Converter):
    name = "audiomcq"
    data_source = "audiomcq"
    description = "AudioMCQ records (source_dataset, id, audio_path, question, choices, answer, CoT); tag A"
    media_fields = AUDIO_FIELDS
    category_fields = ("source_dataset",)
    fixed_tag = "A"

    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        rec = audio_mcq(
            record,
            options(get(record, "choices", "options")),
            get(record, "answer", "answer_gt"),
            audio_path(record),
            META,
            split="train",
        )
        rec.extra_info.update(extra_info(record, KEPT_COT_FIELDS))
        rec.extra_info[REASONING_KEY] = reasoning(record)
        return rec
