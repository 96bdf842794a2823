"""Scoring generations into result records, one per sample (their fields: :mod:`verl_modality.evaluation.results`).

QA responses are scored with the training reward's rules (:mod:`verl_modality.rewards.choice`: option letters,
MMAU's string match for MMAU / MMSU / MMAR sources) or, with a benchmark, its registered rule
(:mod:`verl_modality.evaluation.scorers`). String match follows ``rule``: ``official`` by default (the raw reply, as
the benchmarks' own scripts score it), ``lenient`` for the training reward's parse; every QA record names its rule.
Captions are scored with the LLM judge (:mod:`verl_modality.rewards.caption_judge`) when a judge config is given;
without one their score is null (never 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from verl_modality import protocol, vocabulary
from verl_modality.data import schema
from verl_modality.evaluation.config import EvalConfig
from verl_modality.models.generation import Generation


def _none_letter(info: Mapping[str, Any]) -> str | None:
    index = info.get(protocol.INFO_NONE_INDEX)
    if index is None or int(index) < 0:
        return None
    return vocabulary.letter(int(index))


def score_qa(
    row: Mapping[str, Any], response: str, benchmark: Any = None, rule: str = "official"
) -> tuple[str | None, bool]:
    """``(parsed option letter, correct)`` of a QA response: the benchmark's rule, or the training reward on the row
    (none-answers and the MMAU rule for MMAU-style sources included); ``rule`` is how string match reads it."""
    if benchmark is not None:
        from verl_modality.evaluation.scorers import score_record

        choices = [str(c) for c in (row.get(schema.CHOICES) or [])]
        letter = str(row[schema.ANSWER]).strip().upper()
        # the option's text, not its letter: with options such as ["C", "Gm", ...] the letter C is also a text
        answer = choices[vocabulary.LETTERS.index(letter)] if letter in vocabulary.LETTERS[: len(choices)] else letter
        return score_record(benchmark, response, answer, choices, rule)
    from verl_modality.rewards.choice import score_row

    out = score_row(row, response, string_rule=rule)
    return (out["parsed"] or None), out["acc"] == 1.0


def qa_rule_name(row: Mapping[str, Any], benchmark: Any = None, rule: str = "official") -> str:
    """The name of the rule :func:`score_qa` scores ``row`` with (``string_match:official``, ..., ``letter``)."""
    from verl_modality.evaluation.scorers import scoring_rule_name

    if benchmark is not None:
        return benchmark.rule_name(rule)
    from verl_modality.rewards.choice import uses_string_match

    return scoring_rule_name(uses_string_match(str(row[schema.DATA_SOURCE])), rule)


def _group(row: Mapping[str, Any]) -> str:
    info = row.get(schema.EXTRA_INFO) or {}
    for key in ("source_id", "video_id"):
        if info.get(key):
            return str(info[key])
    return str(row[schema.ID])


def make_records(
    row: Mapping[str, Any],
    shown: Mapping[str, Any],
    gens: Sequence[Generation],
    cfg: EvalConfig,
    policy: str,
    benchmark: Any,
    judge: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """One record per generation (format (4) of the shared APIs); ``shown`` is ``row`` after the modality view."""
    info = dict(row.get(schema.EXTRA_INFO) or {})
    task = row.get(schema.TASK, "qa")
    none_letter = _none_letter(info) if task == "qa" else None
    if task == "caption":
        answer = str((row.get(schema.REWARD_MODEL) or {}).get("ground_truth") or row[schema.ANSWER])
    else:
        answer = str(row[schema.ANSWER])
    scores: list[float | None] = [None] * len(gens)
    failed = [False] * len(gens)
    if task == "caption" and judge is not None:
        from verl_modality.rewards.caption_judge import judge_captions

        items = [
            {
                "id": f"{row[schema.ID]}#{i}",
                "response": g.text,
                "ground_truth": answer,
                protocol.INFO_REFERENCE_CAPTIONS: info.get(protocol.INFO_REFERENCE_CAPTIONS) or {},
                "modality_tag": row[schema.MODALITY_TAG],
            }
            for i, g in enumerate(gens)
        ]
        for i, result in enumerate(judge_captions(items, judge, progress=False)):
            value = float(result["score"])
            failed[i] = value != value  # NaN: the judge failed and on_failure="mark" asked to keep going
            scores[i] = None if failed[i] else value
    bench_name = getattr(benchmark, "name", None)
    version = getattr(benchmark, "version", None) or info.get("benchmark_version")
    records = []
    for i, g in enumerate(gens):
        rec: dict[str, Any] = {
            "id": str(row[schema.ID]),
            "data_source": str(row[schema.DATA_SOURCE]),
            "benchmark": bench_name,
            "benchmark_version": None if version is None else str(version),
            "task": task,
            "tag": vocabulary.canonical_tag(row[schema.MODALITY_TAG]),
            "available": vocabulary.canonical_tag(shown[schema.AVAILABLE], allow_empty=True),
            "stratum": vocabulary.stratum_of(row[schema.MODALITY_TAG], shown[schema.AVAILABLE]),
            "group": _group(row),
            "sample": i,
            "response": g.text,
            "parsed": None,
            "answer": answer,
            "correct": None,
            "score": scores[i],
            "response_tokens": int(g.n_tokens),
            "gold_none": none_letter is not None and none_letter == answer.strip().upper(),
            "pred_none": False,
            "policy": policy,
            "rule": qa_rule_name(row, benchmark, cfg.rule) if task == "qa" else None,
            "ablation": cfg.ablation,
            "truncated": bool(g.truncated),
        }
        if task == "qa":
            parsed, correct = score_qa(row, g.text, benchmark, cfg.rule)
            rec.update(parsed=parsed, correct=bool(correct), score=float(bool(correct)))
            rec["pred_none"] = parsed is not None and parsed == none_letter
        if failed[i]:
            rec["judge_failed"] = True
        records.append(rec)
    return records
