"""Weak-to-Strong and Mixed-to-Strong data: the SFT and RL parquet files of the two-stage paradigms (docs/method.md §6).

From the weak / strong split of audio-contribution filtering (:mod:`verl_modality.audio_contribution.filter`):

* ``weak_to_strong``: SFT on the weak items, then GRPO on the strong items;
* ``mixed_to_strong``: SFT on all items, then GRPO on the strong items. With ``disjoint`` the strong items are split
  instead (a seeded ``sft_strong_fraction`` of them joins the SFT set, the rest is the RL set), so that no item is
  trained on twice, as in the paper's comparison at a fixed SFT size.

SFT file (``sft.parquet``), for verl 0.9.1's ``verl.trainer.sft_trainer`` and its ``MultiTurnSFTDataset``:

* ``messages``: ``[system (optional), user, assistant]``; the user turn is the RL prompt (``<answer>`` format,
  media placeholders of the shown streams), the assistant turn ``<answer>B</answer>``, preceded by
  ``<think>...</think>`` when the row's ``extra_info`` holds a reasoning text under ``reasoning_key`` (the AudioMCQ
  converter keeps the chain of thought there) and ``reasoning="keep"``; ``reasoning="drop"`` writes answer-only
  targets;
* ``videos``: ``[{"video": absolute path}]`` per row (only when some row shows a video). verl's dataset turns each
  ``<video>`` placeholder into its ``process_video`` item;
* ``audios``: ``[{"audio": absolute path}]`` (``audio="keep"``, only when some row shows audio). verl 0.9.1's
  ``MultiTurnSFTDataset`` has no audio key (it leaves ``<audio>`` as literal text); the recipe's dataset class,
  :class:`verl_modality.data.omni_sft_dataset.OmniSFTDataset` (``data.custom_cls``), reads it. ``audio="drop"`` writes
  neither the column nor the ``<audio>`` placeholders, for text(+video)-only SFT with verl's own class;
* ``id``, ``data_source``, ``modality_tag``, ``answer``, ``acf_split``: bookkeeping, ignored by verl.

RL file (``rl.parquet``): the strong rows in the sample schema, prompts re-rendered in the ``answer_tag`` style
(``<answer>B</answer>``), ``extra_info`` (with the votes) kept.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verl_modality import options, vocabulary
from verl_modality.data import schema, validate
from verl_modality.data.prompts import PromptConfig, render_messages
from verl_modality.data.sft_records import write_sft
from verl_modality.options import option

PARADIGMS = ("weak_to_strong", "mixed_to_strong")
AUDIO_MODES = ("keep", "drop")
ANSWER_CONTENTS = ("letter", "text")
REASONING_MODES = ("keep", "drop")


@dataclass(frozen=True)
class W2SConfig:
    """Options of :func:`build_w2s`."""

    # SFT on weak (W2S) or on all items (M2S), GRPO on strong (paper §3.4)
    paradigm: str = option("weak_to_strong", choices=PARADIGMS, help="SFT on weak (W2S) or on all items (M2S)")
    answer_content: str = option("letter", choices=ANSWER_CONTENTS, help="inside <answer> in SFT")
    # paper §3.1: CoT
    reasoning: str = option("keep", choices=REASONING_MODES, help="<think> from extra_info[reasoning_key] or none")
    reasoning_key: str = option("cot", help="extra_info key of a reasoning text for <think>...</think>")
    system_prompt: str | None = option(None, help="system turn for both files")
    # keep: placeholders + audios column; drop: verl's MultiTurnSFTDataset
    audio: str = option("keep", choices=AUDIO_MODES, flag="--sft-audio", help="drop: text/video-only SFT rows")
    # paper §4: no overlap between SFT and GRPO data
    disjoint: bool = option(False, help="mixed_to_strong: no item in both SFT and RL")
    sft_strong_fraction: float = option(0.5, gt=0, lt=1, help="with --disjoint: strong share for SFT")
    seed: int = 0

    def __post_init__(self) -> None:
        options.validate(self, "w2s")

    @property
    def prompt(self) -> PromptConfig:
        return PromptConfig(style="answer_tag", system_prompt=self.system_prompt)


def _shown(row: Mapping[str, Any]) -> tuple[list[str], list[str], str | None]:
    videos = [item["video"] for item in schema.as_list(row.get(schema.VIDEOS))]
    audios = [item["audio"] for item in schema.as_list(row.get(schema.AUDIOS))]
    subtitle = row.get(schema.SUBTITLE) if "S" in str(row[schema.AVAILABLE]) else None
    return videos, audios, subtitle or None


def answer_prompt(row: Mapping[str, Any], config: W2SConfig, n_audios: int | None = None) -> list[dict[str, str]]:
    """The row's prompt asking for ``<answer>X</answer>``, with the placeholders of the shown streams."""
    videos, audios, subtitle = _shown(row)
    choices = [str(c) for c in schema.as_list(row[schema.CHOICES])]
    n_a = len(audios) if n_audios is None else n_audios
    return render_messages(row[schema.QUESTION], choices, len(videos), n_a, subtitle, "qa", config.prompt)


def reasoning_text(row: Mapping[str, Any], config: W2SConfig) -> str:
    """The row's reasoning for ``<think>``: ``extra_info[reasoning_key]`` stripped, or "" (none, or dropped)."""
    if config.reasoning == "drop":
        return ""
    value = (row.get(schema.EXTRA_INFO) or {}).get(config.reasoning_key)
    return str(value).strip() if value is not None else ""


def assistant_turn(row: Mapping[str, Any], config: W2SConfig) -> str:
    """``[<think>reasoning</think>]<answer>X</answer>``, X the letter or the option text."""
    answer = str(row[schema.ANSWER])
    if config.answer_content == "text":
        answer = str(schema.as_list(row[schema.CHOICES])[vocabulary.LETTERS.index(answer)])
    reasoning = reasoning_text(row, config)
    think = f"<think>{reasoning}</think>" if reasoning else ""
    return f"{think}<answer>{answer}</answer>"


def sft_row(row: Mapping[str, Any], config: W2SConfig) -> dict[str, Any]:
    """One SFT record (see the module docstring)."""
    videos, audios, _ = _shown(row)
    keep_audio = config.audio == "keep"
    messages = answer_prompt(row, config, n_audios=len(audios) if keep_audio else 0)
    messages = [*messages, {"role": "assistant", "content": assistant_turn(row, config)}]
    info = row.get(schema.EXTRA_INFO) or {}
    return {
        "messages": messages,
        "videos": [{"video": p} for p in videos],
        "audios": [{"audio": p} for p in audios] if keep_audio else [],
        "id": row[schema.ID],
        "data_source": row[schema.DATA_SOURCE],
        "modality_tag": row[schema.MODALITY_TAG],
        "answer": row[schema.ANSWER],
        "acf_split": str(info.get("acf_split") or ""),
    }


def rl_row(row: Mapping[str, Any], config: W2SConfig) -> dict[str, Any]:
    """The schema row with its prompt asking for the ``<answer>`` format."""
    return {**row, schema.PROMPT: answer_prompt(row, config)}


def _read(path: str | os.PathLike, what: str) -> list[dict[str, Any]]:
    from verl_modality.data.dataset import resolve_media_paths

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {os.fspath(path)!r} does not exist")
    rows = schema.read_rows(path)
    if rows:
        validate.validate_rows(rows, root=path.resolve().parent, check_media=False, source=os.fspath(path))
    bad = [r[schema.ID] for r in rows if r[schema.TASK] not in schema.CHOICE_TASKS]
    if bad:
        raise ValueError(f"{path}: {len(bad)} row(s) are not multiple choice (first ids: {', '.join(bad[:5])})")
    root = path.resolve().parent
    return [resolve_media_paths(r, root) for r in rows]


def split_items(
    weak: list[dict[str, Any]], strong: list[dict[str, Any]], config: W2SConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(sft_rows, rl_rows)`` of the paradigm (schema rows, input order: weak first, then strong)."""
    if config.paradigm == "weak_to_strong":
        return list(weak), list(strong)
    if not config.disjoint:
        return [*weak, *strong], list(strong)
    rng = np.random.default_rng(config.seed)
    n_sft = int(round(config.sft_strong_fraction * len(strong)))
    to_sft = set(rng.permutation(len(strong))[:n_sft].tolist())
    return (
        [*weak, *(r for i, r in enumerate(strong) if i in to_sft)],
        [r for i, r in enumerate(strong) if i not in to_sft],
    )


def build_w2s(
    weak: str | os.PathLike, strong: str | os.PathLike, out_dir: str | os.PathLike, config: W2SConfig | None = None
) -> dict[str, Any]:
    """Write ``OUT/sft.parquet``, ``OUT/rl.parquet`` and ``OUT/summary.json`` for the paradigm; returns the summary."""
    config = config or W2SConfig()
    weak_rows, strong_rows = _read(weak, "weak"), _read(strong, "strong")
    both = {r[schema.ID] for r in weak_rows} & {r[schema.ID] for r in strong_rows}
    if both:
        raise ValueError(f"{len(both)} id(s) are in both {weak} and {strong}, e.g. {sorted(both)[:5]}")
    sft_items, rl_items = split_items(weak_rows, strong_rows, config)
    if not sft_items:
        raise ValueError(f"{config.paradigm}: the SFT set is empty ({weak} has no rows)")
    if not rl_items:
        raise ValueError(f"{config.paradigm}: the RL set is empty ({strong} has no rows for GRPO)")
    out = Path(out_dir)
    sft_path = write_sft([sft_row(r, config) for r in sft_items], out / "sft.parquet")
    rl_rows = [rl_row(r, config) for r in rl_items]
    validate.validate_rows(rl_rows, check_media=False, source="rl.parquet")
    rl_path = schema.write_rows(rl_rows, out / "rl.parquet")

    def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
        return dict(sorted(Counter(r[schema.DATA_SOURCE] for r in rows).items()))

    summary = {
        "paradigm": config.paradigm,
        "disjoint": config.disjoint,
        "weak_items": len(weak_rows),
        "strong_items": len(strong_rows),
        "sft": {"path": os.fspath(sft_path), "rows": len(sft_items), "per_source": counts(sft_items)},
        "rl": {"path": os.fspath(rl_path), "rows": len(rl_rows), "per_source": counts(rl_rows)},
        "overlap": len({r[schema.ID] for r in sft_items} & {r[schema.ID] for r in rl_items}),
        "sft_audio": config.audio,
        "answer_content": config.answer_content,
        "reasoning": config.reasoning,
        "reasoning_key": config.reasoning_key,
        "sft_with_reasoning": sum(bool(reasoning_text(r, config)) for r in sft_items),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
