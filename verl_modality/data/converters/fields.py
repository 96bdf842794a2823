"""Field helpers for the layout modules: required text, media paths, option lists, answer letters, extra_info and
stream sets, each raising :class:`~verl_modality.data.converters.records.InvalidRow` for what cannot be mapped."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from verl_modality import protocol, vocabulary
from verl_modality.data import schema
from verl_modality.data.converters.media_extract import EmbeddedMedia
from verl_modality.data.converters.records import InvalidRow, Record

_MISSING = object()


def get(record: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    """The value of the first of ``names`` present (and not None) in ``record``; without ``default`` a missing
    field raises :class:`InvalidRow` ``missing field``."""
    for name in names:
        value = record.get(name)
        if value is not None:
            return value
    if default is _MISSING:
        raise InvalidRow("missing field", " / ".join(repr(n) for n in names))
    return default


def media_path(record: Mapping[str, Any], *names: str) -> str:
    """The media file of a record from the first of ``names`` that gives one: a file written from embedded bytes
    (:class:`EmbeddedMedia`) wins, then a path string or the ``path`` of a ``{"path": ...}`` struct. Raises
    :class:`InvalidRow` ``missing field`` when none does."""
    for name in names:
        if isinstance(record.get(name), EmbeddedMedia):
            return record[name]
    for name in names:
        value = record.get(name)
        if isinstance(value, Mapping):
            value = value.get("path")
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise InvalidRow("missing field", " / ".join(repr(n) for n in names) + " (no media path or embedded bytes)")


def text(record: Mapping[str, Any], *names: str, default: Any = _MISSING) -> str:
    """A required (or defaulted) string field, stripped; numbers are turned into text, empty strings are missing."""
    value = get(record, *names, default=default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRow("bad field", f"{names[0]!r} must be text, got {type(value).__name__}")
    value = value.strip()
    if not value and default is _MISSING:
        raise InvalidRow("missing field", f"{names[0]!r} is empty")
    return value


_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]\s*")


def strip_letter(option: str, index: int) -> str:
    """``"B. a dog"`` -> ``"a dog"`` when the prefix letter is the option's own letter (Daily-Omni style lists)."""
    m = _LETTER_PREFIX.match(option)
    if m and m.group(1).upper() == chr(ord("A") + index):
        return option[m.end() :].strip()
    return option.strip()


def options(value: Any, strip_letters: bool = False) -> list[str]:
    """Option texts from a list, a ``{"A": text, ...}`` dict or a JSON string of either; empty entries dropped."""
    if isinstance(value, str):  # a JSON list, or a Python list repr (lmms-lab/mmau's choices column)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise InvalidRow("bad field", f"choices is a string, not a list: {value[:60]!r}") from None
    if isinstance(value, Mapping):
        value = [value[k] for k in sorted(value, key=str)]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise InvalidRow("bad field", f"choices must be a list, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if v is None:
            continue
        s = str(v).strip()
        if strip_letters:
            s = strip_letter(s, i)
        if s:
            out.append(s)
    return out


def dedupe(choices: Sequence[str]) -> tuple[list[str], int]:
    """The choices without repeats (first occurrence kept, order kept) and how many were dropped."""
    out: list[str] = []
    for c in choices:
        if c not in out:
            out.append(c)
    return out, len(choices) - len(out)


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def answer_letter(choices: Sequence[str], answer: Any) -> str:
    """The letter of ``answer`` among ``choices``: ``answer`` may be the option text (exact, then case- and
    space-insensitive) or a letter (``"B"``, ``"(B)"``, ``"B."``, ``"B. text"``). Raises :class:`InvalidRow`."""
    if answer is None:
        raise InvalidRow("missing field", "'answer'")
    answer = str(answer).strip()
    if not answer:
        raise InvalidRow("missing field", "'answer' is empty")
    if answer in choices:
        return vocabulary.LETTERS[list(choices).index(answer)]
    lowered = [_norm(c) for c in choices]
    if _norm(answer) in lowered:
        return vocabulary.LETTERS[lowered.index(_norm(answer))]
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.):]?(?:\s+(.*))?", answer, flags=re.S)
    if m:
        index = ord(m.group(1).upper()) - ord("A")
        rest = (m.group(2) or "").strip()
        if 0 <= index < len(choices) and (not rest or _norm(strip_letter(answer, index)) == lowered[index]):
            return vocabulary.LETTERS[index]
    raise InvalidRow("answer not among choices", f"{answer[:80]!r}")


def check_choices(choices: list[str]) -> None:
    if len(choices) < schema.MIN_CHOICES:
        raise InvalidRow("too few choices", f"{len(choices)} option(s)")
    if len(choices) > schema.MAX_CHOICES:
        raise InvalidRow("too many choices", f"{len(choices)} options; the schema allows {schema.MAX_CHOICES}")


def mcq(choices: Sequence[str], answer: Any) -> tuple[list[str], str, dict[str, Any]]:
    """Common multiple-choice mapping: drop repeated options, check the count, map the answer to its letter.
    Returns ``(choices, letter, extra_info)``; extra_info keeps the answer text and how many repeats went."""
    kept, dropped = dedupe([c for c in choices if c])
    check_choices(kept)
    letter = answer_letter(kept, answer)
    info: dict[str, Any] = {protocol.INFO_ANSWER_TEXT: kept[vocabulary.LETTERS.index(letter)]}
    if dropped:
        info["duplicate_choices_dropped"] = str(dropped)
    return kept, letter, info


def info_value(value: Any) -> str | None:
    """Source metadata as extra_info text (one type per key across rows, so parquet columns stay uniform)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple | Mapping):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def audio_mcq(
    record: Mapping[str, Any],
    choices: Sequence[str],
    answer: Any,
    audio: str,
    meta: Iterable[str],
    split: str | None = None,
) -> Record:
    """The record of an audio-only multiple-choice item (tag A): ``mcq`` mapping, the source's ``id`` and
    ``question``, one audio file, the ``meta`` fields as extra_info, and the source ``split`` (else ``split``)."""
    kept, letter, info = mcq(choices, answer)
    kwargs = {} if split is None else {"split": text(record, "split", default=split) or split}
    return Record(
        id=text(record, "id"),
        question=text(record, "question"),
        choices=kept,
        answer=letter,
        modality_tag="A",
        audios=[audio],
        extra_info={**info, **extra_info(record, meta)},
        **kwargs,
    )


def extra_info(record: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Selected source fields as extra_info (``sub-category`` becomes ``sub_category``); absent ones are left out."""
    reserved = {"index", "split", "modality_tag", "id"}
    out = {}
    for name in names:
        if record.get(name) is not None:
            key = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_").lower()
            out[key if key not in reserved else f"source_{key}"] = info_value(record[name])
    return out


def parse_streams(value: Any, what: str = "modality tag") -> str:
    """A stream set in any of the spellings seen in the wild -> canonical tag: ``"VA"``, ``"AV"``, ``["V", "A"]``,
    ``"video+audio"``, ``"Video, Subtitle"``, ``"v_a_s"``. Raises :class:`InvalidRow` ``bad <what>``."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    parts = value if isinstance(value, list | tuple | set) else re.split(r"[\s,+/&_|;-]+", str(value or "").strip())
    words = {"video": "V", "visual": "V", "vision": "V", "v": "V", "audio": "A", "a": "A", "sound": "A"}
    words.update({"subtitle": "S", "subtitles": "S", "s": "S", "text": "S", "transcript": "S", "speech_text": "S"})
    letters: list[str] = []
    for part in parts:
        p = str(part).strip().lower()
        if not p:
            continue
        if p in words:
            letters.append(words[p])
        elif set(p) <= {"v", "a", "s"}:
            letters += list(p.upper())
        else:
            raise InvalidRow(f"bad {what}", f"{value!r}")
    try:
        return vocabulary.canonical_tag(letters)
    except ValueError:
        raise InvalidRow(f"bad {what}", f"{value!r}") from None
