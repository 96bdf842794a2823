"""Shared machinery of the benchmark converters: reading sources, resolving and checking media, the report.

A layout module only maps one source record to a :class:`Record` (field mapping, tag, answer letter); everything
else happens here in :func:`run_conversion`:

1. read the source (``.json`` list or ``{key: record}`` dict, ``.jsonl``, ``.parquet``), keep the first ``limit``;
2. map every record (a record that cannot be represented raises :class:`InvalidRow` and is skipped, counted under
   ``invalid: <reason>``);
3. open every referenced media file (``media.probe_audio`` / ``media.probe_video``) resolved against the media root
   (default: the source file's directory). ``on_missing="fail"`` raises one :class:`ConvertError` listing every bad
   row (row number, id, path, reason); ``"skip"`` drops those rows and counts them (``missing media`` /
   ``unreadable media``);
4. build the schema rows (media paths rewritten relative to the output file's directory, so that
   ``validate_file(out)`` finds them), check them with ``schema.validate_rows`` and write them with
   ``schema.write_rows``.

Nothing is dropped silently: every skipped row is counted by reason in the :class:`ConvertReport`.
"""

from __future__ import annotations

import abc
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from verl_modality.data import media as media_io
from verl_modality.data import schema

ON_MISSING = ("fail", "skip")
MISSING = "missing media"
UNREADABLE = "unreadable media"
#: How many bad rows an error message or a report lists before summarising the rest.
MAX_LISTED = 20


# ---------------------------------------------------------------------------------------------------------------
# records and errors


class InvalidRow(ValueError):
    """A source record that cannot be represented in the schema; ``reason`` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Record:
    """One converted item before media checks. ``videos``/``audios`` are every media file of the item as the
    source names them (relative to the media root, or absolute); ``available`` defaults to the tag's streams that
    the record has media for."""

    id: str
    question: str
    answer: str  # the option letter (qa) or the reference caption (caption)
    modality_tag: str
    choices: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    audios: list[str] = field(default_factory=list)
    subtitle: str = ""
    available: str | None = None
    task: str = "qa"
    split: str = "test"
    extra_info: dict[str, Any] = field(default_factory=dict)
    #: Short notes counted in the report (e.g. "no separate audio track"); they do not drop the row.
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BadRow:
    """A row dropped (or failing the conversion) because of one of its media files or its content."""

    row: int
    id: str | None
    path: str | None
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"row {self.row} (id {self.id if self.id is not None else '?'})"
        what = f"{self.path}: {self.reason}" if self.path else self.reason
        return f"{where}: {what}" + (f" ({self.detail})" if self.detail else "")


class ConvertError(ValueError):
    """The conversion cannot go on; ``bad_rows`` lists every offending row (for media problems)."""

    def __init__(self, message: str, bad_rows: Sequence[BadRow] = ()):
        self.bad_rows = list(bad_rows)
        super().__init__(message)


def _list_rows(bad: Sequence[BadRow], limit: int = MAX_LISTED) -> list[str]:
    lines = [f"  - {b}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# the report


@dataclass
class ConvertReport:
    layout: str
    source: str
    out: str | None = None
    media_root: str = ""
    on_missing: str = "fail"
    rows_read: int = 0
    rows_written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    per_tag: Counter = field(default_factory=Counter)
    per_stratum: Counter = field(default_factory=Counter)
    per_task: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)  # note -> rows (written or not)
    skipped_rows: list[BadRow] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "source": self.source,
            "out": self.out,
            "media_root": self.media_root,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_skipped": self.rows_skipped,
            "skipped": dict(self.skipped),
            "per_tag": dict(self.per_tag),
            "per_stratum": dict(self.per_stratum),
            "per_task": dict(self.per_task),
            "notes": dict(self.notes),
        }

    def format(self) -> str:
        def counts(c: Counter, order: Iterable[str] = ()) -> str:
            keys = [k for k in order if k in c] + sorted(k for k in c if k not in set(order))
            return ", ".join(f"{k} {c[k]}" for k in keys) or "-"

        lines = [
            f"convert {self.layout}: {self.source} -> {self.out or '(nothing written)'}",
            f"  media root    {self.media_root}",
            f"  rows read     {self.rows_read}",
            f"  rows written  {self.rows_written}",
            f"  rows skipped  {self.rows_skipped}" + ("" if self.rows_skipped else " (none)"),
        ]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason}: {n}")
        lines.append(f"  per tag       {counts(self.per_tag, schema.TAGS)}")
        lines.append(f"  per stratum   {counts(self.per_stratum, schema.STRATA)}")
        if set(self.per_task) - {"qa"}:
            lines.append(f"  per task      {counts(self.per_task, schema.TASKS)}")
        for note, n in sorted(self.notes.items()):
            lines.append(f"  note: {note}: {n} rows")
        if self.skipped_rows:
            lines.append("  skipped rows:")
            lines += ["  " + line for line in _list_rows(sorted(self.skipped_rows, key=lambda b: b.row), 5)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# ---------------------------------------------------------------------------------------------------------------
# reading sources


def read_records(source: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``.json`` (a list, a ``{key: record}`` dict, or a dict holding one such list under
    ``data``/``items``/``questions``/``samples``), ``.jsonl`` or ``.parquet`` file, as plain dicts."""
    path = Path(source)
    if not path.is_file():
        raise ConvertError(f"{path}: source file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            records = pq.read_table(path).to_pylist()
        elif suffix == ".jsonl":
            records = []
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise ConvertError(f"{path}: line {n} is not JSON ({exc})") from exc
        else:
            with path.open(encoding="utf-8") as f:
                data = json.load(f)
            records = _records_of(data, path)
    except ConvertError:
        raise
    except Exception as exc:  # noqa: BLE001 - json/pyarrow raise many types for unreadable files
        raise ConvertError(f"{path}: cannot read ({exc})") from exc
    bad = [i for i, r in enumerate(records) if not isinstance(r, Mapping)]
    if bad:
        raise ConvertError(f"{path}: record {bad[0]} is a {type(records[bad[0]]).__name__}, not an object")
    return [dict(r) for r in records]


def _records_of(data: Any, path: Path) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        for key in ("data", "items", "questions", "samples"):
            if isinstance(data.get(key), list):
                return data[key]
        if data and all(isinstance(v, Mapping) for v in data.values()):  # {id: record}
            return [{"id": k, **v} if "id" not in v else dict(v) for k, v in data.items()]
    raise ConvertError(f"{path}: expected a JSON list of records, got {type(data).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# field helpers for the layout modules


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
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
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
        return schema.LETTERS[list(choices).index(answer)]
    lowered = [_norm(c) for c in choices]
    if _norm(answer) in lowered:
        return schema.LETTERS[lowered.index(_norm(answer))]
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.):]?(?:\s+(.*))?", answer, flags=re.S)
    if m:
        index = ord(m.group(1).upper()) - ord("A")
        rest = (m.group(2) or "").strip()
        if 0 <= index < len(choices) and (not rest or _norm(strip_letter(answer, index)) == lowered[index]):
            return schema.LETTERS[index]
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
    info: dict[str, Any] = {"answer_text": kept[schema.LETTERS.index(letter)]}
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
        return schema.canonical_tag(letters)
    except ValueError:
        raise InvalidRow(f"bad {what}", f"{value!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# converters


@dataclass
class Context:
    """What a layout module may look at besides the record: the media root."""

    media_root: Path

    def resolve(self, path: str) -> Path:
        return schema.resolve_path(path, self.media_root)

    def exists(self, path: str) -> bool:
        return self.resolve(path).is_file()

    def first_existing(self, *candidates: str) -> str | None:
        """The first candidate path (as given) whose file exists under the media root, else None."""
        return next((c for c in candidates if c and self.exists(c)), None)


class Converter(abc.ABC):
    """One public layout. Subclasses set ``name``/``data_source``/``description`` and implement :meth:`convert`."""

    name: ClassVar[str] = ""
    data_source: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def read(self, source: str | os.PathLike) -> list[dict[str, Any]]:
        return read_records(source)

    @abc.abstractmethod
    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        """Map one source record (row ``index``) to a :class:`Record`."""


def _probe(path: Path, kind: str) -> tuple[str, str] | None:
    """None when the file opens; else (reason, detail)."""
    if not path.exists():
        return MISSING, "file not found"
    try:
        (media_io.probe_video if kind == "video" else media_io.probe_audio)(path)
    except media_io.MediaError as exc:
        detail = str(exc)
        prefix = f"{path}: "
        return UNREADABLE, detail[len(prefix) :] if detail.startswith(prefix) else detail
    return None


def _relative(path: Path, out_dir: Path) -> str:
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:  # another drive (Windows): keep it absolute
        return str(path)


def run_conversion(
    converter: Converter,
    source: str | os.PathLike,
    out: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    on_missing: str = "fail",
    limit: int | None = None,
    progress: bool = True,
) -> ConvertReport:
    """Convert ``source`` to the schema parquet ``out``; see the module docstring. Returns the report."""
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    source = Path(source)
    out = Path(out)
    root = Path(os.path.abspath(Path(media_root) if media_root is not None else source.parent))
    report = ConvertReport(converter.name, str(source), media_root=str(root), on_missing=on_missing)

    records = converter.read(source)
    if limit is not None:
        records = records[:limit]
    report.rows_read = len(records)
    converted, media_bad = _convert_records(converter, records, Context(root), out, report, progress)

    if media_bad and on_missing == "fail":
        rows = sorted({b.row for b in media_bad})
        lines = [
            f"{converter.name}: {len(rows)} of {report.rows_read} rows of {source} reference missing or unreadable "
            f"media (media root {root}):",
            *_list_rows(media_bad),
            "Fix the media root (--media-root) or rerun with on_missing='skip' (--on-missing skip) to drop and count "
            "these rows.",
        ]
        raise ConvertError("\n".join(lines), media_bad)
    for row in sorted({b.row for b in media_bad}):
        _skip(report, next(b for b in media_bad if b.row == row))

    rows = _schema_rows(converter, converted, out, report)
    report.rows_written = len(rows)
    if rows:
        schema.validate_rows(rows, check_media=False, source=str(out))  # media were opened above
        schema.write_rows(rows, out)
        report.out = str(out)
    return report


def _convert_records(
    converter: Converter, records: list[dict], ctx: Context, out: Path, report: ConvertReport, progress: bool
) -> tuple[list[tuple[int, Record, dict[str, str]]], list[BadRow]]:
    """Each source record through the converter, its media opened once per file: ``(converted, media_bad)``, the
    records with their media mapping (source path -> path relative to ``out``'s folder) and the media problems.
    Invalid records and duplicate ids are skipped into ``report``."""
    from tqdm.auto import tqdm

    out_dir = Path(os.path.abspath(out.parent))
    media_bad: list[BadRow] = []
    converted: list[tuple[int, Record, dict[str, str]]] = []
    probed: dict[Path, tuple[str, str] | None] = {}
    seen_ids: dict[str, int] = {}
    for i, record in enumerate(tqdm(records, desc=f"convert {converter.name}", unit="row", disable=not progress)):
        rid = record.get("id")
        try:
            rec = converter.convert(record, i, ctx)
            if rec.id in seen_ids:
                raise InvalidRow("duplicate id", f"{rec.id!r} first used by row {seen_ids[rec.id]}")
        except InvalidRow as exc:
            _skip(report, BadRow(i, str(rid) if rid is not None else None, None, f"invalid: {exc.reason}", exc.detail))
            continue
        seen_ids[rec.id] = i
        bad_here = []
        mapping = {}
        for kind, paths in (("video", rec.videos), ("audio", rec.audios)):
            for p in paths:
                full = Path(os.path.abspath(ctx.resolve(p)))
                if full not in probed:
                    probed[full] = _probe(full, kind)
                if probed[full] is not None:
                    reason, detail = probed[full]
                    bad_here.append(BadRow(i, rec.id, p, reason, detail))
                mapping[p] = _relative(full, out_dir)
        for note in rec.notes:
            report.notes[note] += 1
        if bad_here:
            media_bad += bad_here
            continue
        converted.append((i, rec, mapping))
    return converted, media_bad


def _schema_rows(
    converter: Converter, converted: list[tuple[int, Record, dict[str, str]]], out: Path, report: ConvertReport
) -> list[dict]:
    """The converted records as schema rows, counted per tag, stratum and task; rows the schema refuses are skipped
    into ``report``."""
    rows: list[dict] = []
    for i, rec, mapping in converted:
        try:
            row = _to_row(converter, rec, mapping, index=len(rows))
            schema.validate_row(row, len(rows), check_media=False, source=str(out))
        except (ValueError, schema.SchemaError) as exc:
            _skip(report, BadRow(i, rec.id, None, "invalid: schema", str(exc).splitlines()[0]))
            continue
        rows.append(row)
        report.per_tag[row[schema.MODALITY_TAG]] += 1
        report.per_stratum[row[schema.STRATUM]] += 1
        report.per_task[row[schema.TASK]] += 1
    return rows


def _skip(report: ConvertReport, bad: BadRow) -> None:
    report.skipped[bad.reason] += 1
    report.skipped_rows.append(bad)


def _to_row(converter: Converter, rec: Record, mapping: Mapping[str, str], index: int) -> dict[str, Any]:
    videos = [mapping[p] for p in rec.videos]
    audios = [mapping[p] for p in rec.audios]
    have = schema.canonical_tag(
        ("V" if videos else "") + ("A" if audios else "") + ("S" if rec.subtitle else ""), allow_empty=True
    )
    tag = schema.canonical_tag(rec.modality_tag)
    available = rec.available if rec.available is not None else "".join(s for s in tag if s in have)
    sample = schema.Sample.create(
        rec.id,
        rec.question,
        rec.choices,
        rec.answer,
        tag,
        videos=videos,
        audios=audios,
        subtitle=rec.subtitle,
        available=available,
        data_source=converter.data_source or converter.name,
        task=rec.task,
        split=rec.split,
        index=index,
        extra_info={k: v for k, v in rec.extra_info.items() if v is not None},
    )
    return sample.to_row()
