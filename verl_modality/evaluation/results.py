"""Evaluation result records (``RESULTS.jsonl``): one JSON object per generated sample, read and validated.

Each line holds the fields of :data:`FIELDS` (shared record format, written by the evaluation run). Reading is
strict: a missing field, a wrong type, an unknown tag, a stratum that contradicts tag and available streams, a
non-finite score (``null`` is allowed only for a caption the judge did not score), two lines for the same ``(id,
sample)`` or samples of one query that disagree on their condition
raise :class:`ResultsError` naming ``file:line`` and the field. Unknown extra fields are kept in ``extra``. The
optional ``rule`` field names the rule that decided ``correct`` (files written before it existed read as null).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from verl_modality.data.schema import TASKS
from verl_modality.evaluation.scorers import RULE_NAMES
from verl_modality.vocabulary import STRATA, canonical_tag, stratum_of

#: field -> accepted JSON types (``None`` means null is allowed).
FIELDS: dict[str, tuple[type | None, ...]] = {
    "id": (str,),
    "data_source": (str,),
    "benchmark": (str, None),
    "benchmark_version": (str, None),
    "task": (str,),
    "tag": (str,),
    "available": (str,),
    "stratum": (str,),
    "group": (str,),
    "sample": (int,),
    "response": (str,),
    "parsed": (str, None),
    "answer": (str,),
    "correct": (bool, None),
    "score": (float, int, None),
    "response_tokens": (int,),
    "gold_none": (bool,),
    "pred_none": (bool,),
    "policy": (str,),
}
#: optional field -> accepted JSON types; absent reads as null.
OPTIONAL_FIELDS: dict[str, tuple[type | None, ...]] = {"rule": (str, None)}
#: fields that must agree across the samples of one query (``id``).
QUERY_FIELDS = (
    "data_source",
    "benchmark",
    "benchmark_version",
    "task",
    "tag",
    "available",
    "stratum",
    "group",
    "rule",
)


class ResultsError(ValueError):
    """A results file (or record) that does not follow the record format; the message names file:line and field."""


@dataclass(frozen=True)
class ResultRecord:
    """One generated sample of one evaluation query."""

    id: str
    data_source: str
    benchmark: str | None
    benchmark_version: str | None
    task: str
    tag: str
    available: str
    stratum: str
    group: str
    sample: int
    response: str
    parsed: str | None
    answer: str
    correct: bool | None
    score: float | None  # None: a caption the judge did not score (counted as unscored by the report)
    response_tokens: int
    gold_none: bool
    pred_none: bool
    policy: str
    rule: str | None = None  # the rule that decided ``correct``; None: not recorded (or a caption)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def query(self) -> tuple[str, str]:
        """The query this sample answers: ``(policy, id)`` (one id may be evaluated under several policies)."""
        return (self.policy, self.id)

    @property
    def value(self) -> float:
        """What the metrics average: correctness (1/0) for QA, the judge score for captions."""
        if self.task == "qa":
            return float(self.correct)
        if self.score is None:
            raise ValueError(f"caption record {self.id!r} sample {self.sample} has no score (unscored)")
        return self.score


def _type_ok(value: Any, types: tuple[type | None, ...]) -> bool:
    if value is None:
        return None in types
    if isinstance(value, bool):  # bool is an int subclass; accept it only where bool is meant
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return any(t is not None and t is not bool and isinstance(value, t) for t in types)


def _type_name(types: tuple[type | None, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", None: "null"}
    return " or ".join(names[t] for t in types if not (t is int and float in types))


def parse_record(obj: Any, where: str = "record") -> ResultRecord:
    """Validate one decoded JSON object; ``where`` (``file:line``) prefixes every error message."""
    if not isinstance(obj, dict):
        raise ResultsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise ResultsError(f"{where}: missing field(s) {', '.join(repr(f) for f in missing)}")
    for name, types in FIELDS.items():
        if not _type_ok(obj[name], types):
            raise ResultsError(f"{where}: field {name!r}: {obj[name]!r} is not of type {_type_name(types)}")
    for name, types in OPTIONAL_FIELDS.items():
        if not _type_ok(obj.get(name), types):
            raise ResultsError(f"{where}: field {name!r}: {obj[name]!r} is not of type {_type_name(types)}")

    def bad(name: str, why: str) -> ResultsError:
        return ResultsError(f"{where}: field {name!r}: {obj[name]!r} {why}")

    if obj["task"] not in TASKS:
        raise bad("task", f"is not one of {', '.join(TASKS)}")
    try:
        tag = canonical_tag(obj["tag"])
    except ValueError as err:
        raise bad("tag", f"is not a modality tag ({err})") from None
    if tag != obj["tag"]:
        raise bad("tag", f"is not in canonical V/A/S order (write {tag!r})")
    try:
        available = canonical_tag(obj["available"], allow_empty=True)
    except ValueError as err:
        raise bad("available", f"is not a set of streams ({err})") from None
    if available != obj["available"]:
        raise bad("available", f"is not in canonical V/A/S order (write {available!r})")
    if obj["stratum"] not in STRATA:
        raise bad("stratum", f"is not one of {', '.join(STRATA)}")
    expected = stratum_of(tag, available)
    if obj["stratum"] != expected:
        raise bad("stratum", f"contradicts tag {tag!r} with available {available!r} (expected {expected!r})")
    if obj["sample"] < 0:
        raise bad("sample", "is negative")
    if obj["response_tokens"] < 0:
        raise bad("response_tokens", "is negative")
    score = None if obj["score"] is None else float(obj["score"])
    if score is None:
        if obj["task"] == "qa":
            raise bad("score", "must be a number for a QA record (null is only for an unscored caption)")
    elif not math.isfinite(score):
        raise bad("score", "is not a finite number")
    elif not 0.0 <= score <= 1.0:
        raise bad("score", "is outside [0, 1]")
    if obj["task"] == "qa":
        if obj["correct"] is None:
            raise bad("correct", "must be true or false for a QA record")
        if score != float(obj["correct"]):
            raise bad("score", f"disagrees with correct={obj['correct']} (a QA score is 1 or 0)")
    elif obj["correct"] is not None:
        raise bad("correct", "must be null for a caption record")
    if obj.get("rule") is not None and obj["rule"] not in RULE_NAMES:
        raise bad("rule", f"is not one of {', '.join(RULE_NAMES)}")
    extra = {k: v for k, v in obj.items() if k not in FIELDS and k not in OPTIONAL_FIELDS}
    values = {name: obj[name] for name in FIELDS}
    values["score"] = score
    values["rule"] = obj.get("rule")
    return ResultRecord(**values, extra=extra)


def check_consistency(records: Iterable[ResultRecord], lines: Iterable[str] | None = None) -> None:
    """Raise when two records share ``(policy, id, sample)`` or samples of one query disagree on
    :data:`QUERY_FIELDS`.

    ``lines`` gives each record's ``file:line`` for the messages (defaults to ``record <index>``).
    """
    records = list(records)
    where = list(lines) if lines is not None else [f"record {i}" for i in range(len(records))]
    seen: dict[tuple[str, str, int], int] = {}
    first: dict[tuple[str, str], int] = {}
    for i, rec in enumerate(records):
        key = (*rec.query, rec.sample)
        if key in seen:
            raise ResultsError(
                f"{where[i]}: id {rec.id!r} sample {rec.sample} (policy {rec.policy!r}) repeats {where[seen[key]]}"
            )
        seen[key] = i
        j = first.setdefault(rec.query, i)
        for name in QUERY_FIELDS:
            if getattr(rec, name) != getattr(records[j], name):
                raise ResultsError(
                    f"{where[i]}: field {name!r}: {getattr(rec, name)!r} differs from {getattr(records[j], name)!r} "
                    f"of the same id {rec.id!r} at {where[j]}"
                )


def read_results(path: str | os.PathLike) -> list[ResultRecord]:
    """All records of a ``RESULTS.jsonl`` file, validated; blank lines are skipped, an empty file is an error."""
    records: list[ResultRecord] = []
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ResultsError(f"{where}: not a JSON line ({err})") from None
            records.append(parse_record(obj, where))
            lines.append(where)
    if not records:
        raise ResultsError(f"{path}: no result records")
    check_consistency(records, lines)
    return records
