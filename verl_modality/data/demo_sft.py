"""SFT records of the warm start: a QA row as its modality view shows it, answered with the option text in brackets.

The CPU demo's tiny model (a few hundred thousand random weights) cannot learn to map what it perceives to an
option *letter*; it does learn to copy the right option *text* (``[blue video; 1 beep; goat]``), which the answer
reward (:mod:`verl_modality.rewards.choice`) credits as that option. The warm start therefore teaches that form, on
the prompts the RL run will see: the row's view (``exact``, ``full``, ...) chooses the shown streams and re-renders
the prompt, so placeholders and the subtitle line match what training shows.

Records are in the layout of :func:`verl_modality.data.sft_records.write_sft` (``messages``, ``videos``,
``audios``), which :class:`verl_modality.data.omni_sft_dataset.OmniSFTDataset` reads for verl's SFT trainer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from verl_modality import vocabulary
from verl_modality.data import schema
from verl_modality.data.modality_view import ModalityView, apply_view
from verl_modality.data.sft_records import write_sft


def answer_text(row: Mapping[str, Any]) -> str:
    """The reply the warm start teaches: the correct option's text in square brackets."""
    choices = [str(c) for c in schema.as_list(row[schema.CHOICES])]
    answer = str(row[schema.ANSWER])
    if answer not in vocabulary.LETTERS[: len(choices)]:
        raise ValueError(
            f"row {row.get(schema.ID)!r}: answer {answer!r} is not one of its {len(choices)} option letters"
        )
    return f"[{choices[vocabulary.LETTERS.index(answer)]}]"


def sft_record(row: Mapping[str, Any], view: ModalityView) -> dict[str, Any]:
    """One SFT record of a QA ``row`` under ``view`` (the shown streams' media, the view's prompt, the answer)."""
    if row.get(schema.TASK, "qa") != "qa":
        raise ValueError(f"row {row.get(schema.ID)!r}: the warm start takes QA rows, not {row.get(schema.TASK)!r}")
    shown = apply_view(row, view)
    prompt = [dict(m) for m in schema.as_list(shown[schema.PROMPT])]
    return {
        "messages": [*prompt, {"role": "assistant", "content": answer_text(row)}],
        "videos": [{"video": item["video"]} for item in schema.as_list(shown.get(schema.VIDEOS))],
        "audios": [{"audio": item["audio"]} for item in schema.as_list(shown.get(schema.AUDIOS))],
        "id": str(row[schema.ID]),
        "data_source": str(row[schema.DATA_SOURCE]),
        "modality_tag": str(row[schema.MODALITY_TAG]),
        "answer": str(row[schema.ANSWER]),
        "acf_split": "",
    }


def write_sft_file(
    rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, policies: Sequence[str] = ("exact",)
) -> Path:
    """Write one SFT record per QA row and view policy (``exact``, ``full``, ...) to ``path`` (parquet).

    With several policies every row appears once per policy, so that one warm start serves runs that show the
    required streams (MAPO) and runs that show all of them (MUPO).
    """
    records = [sft_record(row, ModalityView(policy=p)) for p in policies for row in rows]
    return write_sft(records, path)
