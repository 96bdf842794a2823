"""Shared machinery of the benchmark converters: reading sources, resolving and checking media, the report.

A layout module only maps one source record to a :class:`Record` (field mapping, tag, answer letter); everything
else happens here in :func:`run_conversion`:

1. read the source (``.json`` list, ``{key: record}`` dict or JSON lines, ``.jsonl``, ``.parquet``, ``.arrow``, or
   a folder of ``.parquet`` / ``.arrow`` shards), keeping the first ``limit`` records. Media embedded in the
   layout's :attr:`Converter.media_fields` (a ``{"bytes", "path"}`` struct, as Hugging Face ``Audio`` / ``Video``
   columns store them, or raw bytes) are written to ``<out folder>/media/<layout>/`` as they are read and the field
   then holds the written file's path (:class:`EmbeddedMedia`);
2. map every record (a record that cannot be represented raises :class:`InvalidRow` and is skipped, counted under
   ``invalid: <reason>``);
3. open every referenced media file (``media.probe_audio`` / ``media.probe_video``) resolved against the media root
   (default: the source file's directory) by :meth:`Context.resolve`. ``on_missing="fail"`` raises one
   :class:`ConvertError` listing every bad row (row number, id, path, reason); ``"skip"`` drops those rows and
   counts them (``missing media`` / ``unreadable media``);
4. build the schema rows (media paths rewritten relative to the output file's directory, so that
   ``validate_file(out)`` finds them), check them with ``schema.validate_rows`` and write them with
   ``schema.write_rows``.

Nothing is dropped silently: every skipped row is counted by reason, tag, task and source category in the
:class:`ConvertReport`, and :meth:`ConvertReport.check` refuses a report whose counts do not add up to the rows read.
"""

from __future__ import annotations

import abc
import ast
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from verl_modality.data import media as media_io
from verl_modality.data import schema

ON_MISSING = ("fail", "skip")
MISSING = "missing media"
UNREADABLE = "unreadable media"
#: Tag / task / category key of a skipped row the layout could not map (so its tag or task is unknown).
UNKNOWN = "?"
#: Category of a record without the layout's category field.
NO_CATEGORY = "(none)"
#: How many bad rows an error message or a report lists before summarising the rest.
MAX_LISTED = 20
#: Source files a folder source is made of, by preference.
SHARD_SUFFIXES = (".parquet", ".arrow")
#: Records per batch when reading parquet / arrow (bounds the embedded bytes held in memory at once).
BATCH_ROWS = 64


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
    source names them (resolved by :meth:`Context.resolve`); ``available`` defaults to the tag's streams that the
    record has media for."""

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
    """What a conversion did. Every record read is either written or skipped: ``per_tag`` / ``per_task`` /
    ``per_category`` count the written rows, ``skipped_per_tag`` / ``skipped_per_task`` / ``skipped_per_category``
    the skipped ones (tag and task :data:`UNKNOWN` when the layout could not map the record), ``read_per_category``
    the records read; :meth:`check` verifies that these add up."""

    layout: str
    source: str
    out: str | None = None
    media_root: str = ""
    on_missing: str = "fail"
    #: The source field the layout reports by (``task`` for MMAU, ``Type`` for Daily-Omni, ...); None: no such field.
    category_field: str | None = None
    rows_read: int = 0
    rows_written: int = 0
    #: Media files written from bytes embedded in the source.
    media_extracted: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    per_tag: Counter = field(default_factory=Counter)
    per_stratum: Counter = field(default_factory=Counter)
    per_task: Counter = field(default_factory=Counter)
    per_category: Counter = field(default_factory=Counter)
    skipped_per_tag: Counter = field(default_factory=Counter)
    skipped_per_task: Counter = field(default_factory=Counter)
    skipped_per_category: Counter = field(default_factory=Counter)
    read_per_category: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)  # note -> rows (written or not)
    skipped_rows: list[BadRow] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, bad: BadRow, category: str, tag: str = UNKNOWN, task: str = UNKNOWN) -> None:
        """Count one skipped row under its reason, tag, task and source category."""
        self.skipped[bad.reason] += 1
        self.skipped_rows.append(bad)
        self.skipped_per_tag[tag] += 1
        self.skipped_per_task[task] += 1
        self.skipped_per_category[category] += 1

    def check(self) -> None:
        """Raise :class:`ConvertError` unless written + skipped = read, overall, per tag, per task and per
        category (a failure here is a bug of the converter, never of the source)."""
        problems = []
        if self.rows_written + self.rows_skipped != self.rows_read:
            problems.append(f"{self.rows_written} written + {self.rows_skipped} skipped != {self.rows_read} read")
        if len(self.skipped_rows) != self.rows_skipped:
            problems.append(f"{len(self.skipped_rows)} skipped rows listed but {self.rows_skipped} counted")
        for what, written, skipped in (
            ("tag", self.per_tag, self.skipped_per_tag),
            ("task", self.per_task, self.skipped_per_task),
            ("category", self.per_category, self.skipped_per_category),
        ):
            total = sum(written.values()) + sum(skipped.values())
            if total != self.rows_read:
                problems.append(f"per {what}: written + skipped = {total} != {self.rows_read} read")
        if sum(self.per_stratum.values()) != self.rows_written:
            problems.append(f"per stratum: {sum(self.per_stratum.values())} != {self.rows_written} written")
        for category in sorted(set(self.read_per_category) | set(self.per_category) | set(self.skipped_per_category)):
            read, written = self.read_per_category[category], self.per_category[category]
            skipped = self.skipped_per_category[category]
            if written + skipped != read:
                problems.append(f"{self.category_field} {category!r}: {written} written + {skipped} skipped != {read}")
        if problems:
            raise ConvertError(
                f"convert {self.layout}: the report does not add up (a converter bug): " + "; ".join(problems)
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "source": self.source,
            "out": self.out,
            "media_root": self.media_root,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_skipped": self.rows_skipped,
            "media_extracted": self.media_extracted,
            "skipped": dict(self.skipped),
            "per_tag": dict(self.per_tag),
            "per_stratum": dict(self.per_stratum),
            "per_task": dict(self.per_task),
            "skipped_per_tag": dict(self.skipped_per_tag),
            "skipped_per_task": dict(self.skipped_per_task),
            "category_field": self.category_field,
            "per_category": {
                c: {"read": n, "written": self.per_category[c], "skipped": self.skipped_per_category[c]}
                for c, n in sorted(self.read_per_category.items())
            },
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
        if self.media_extracted:
            lines.append(f"  media files extracted from the source: {self.media_extracted}")
        lines.append(f"  per tag       {counts(self.per_tag, schema.TAGS)}")
        if self.rows_skipped:
            lines.append(f"    skipped     {counts(self.skipped_per_tag, schema.TAGS)}")
        lines.append(f"  per stratum   {counts(self.per_stratum, schema.STRATA)}")
        if (set(self.per_task) | set(self.skipped_per_task)) - {"qa", UNKNOWN}:
            lines.append(f"  per task      {counts(self.per_task, schema.TASKS)}")
            if self.rows_skipped:
                lines.append(f"    skipped     {counts(self.skipped_per_task, schema.TASKS)}")
        if self.category_field and self.read_per_category:
            lines.append(f"  per source {self.category_field!r} (written / skipped / read):")
            width = max(len(c) for c in self.read_per_category)
            for c, n in sorted(self.read_per_category.items()):
                lines.append(f"    {c:<{width}}  {self.per_category[c]} / {self.skipped_per_category[c]} / {n}")
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

#: Called on every record as it is read (with its row number); returns the record to keep.
RecordHook = Callable[[dict[str, Any], int], dict[str, Any]]


def source_files(source: str | os.PathLike) -> list[Path]:
    """The file(s) of a source: the file itself, or a folder's ``.parquet`` shards (else its ``.arrow`` shards,
    as ``datasets.save_to_disk`` writes them) in name order."""
    path = Path(source)
    if path.is_dir():
        for suffix in SHARD_SUFFIXES:
            shards = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == suffix)
            if shards:
                return shards
        raise ConvertError(f"{path}: source folder holds no {' or '.join(SHARD_SUFFIXES)} files")
    if not path.is_file():
        raise ConvertError(f"{path}: source file not found")
    return [path]


def read_records(
    source: str | os.PathLike, limit: int | None = None, hook: RecordHook | None = None
) -> list[dict[str, Any]]:
    """The first ``limit`` records (all when None) of ``source`` as plain dicts, each passed through ``hook``.

    ``source``: a ``.json`` file (a list, a ``{key: record}`` dict, a dict holding one such list under
    ``data``/``items``/``questions``/``samples``, or JSON lines as ``datasets.Dataset.to_json`` writes them),
    ``.jsonl``, ``.parquet``, ``.arrow`` (Arrow IPC stream or file), or a folder of ``.parquet`` / ``.arrow``
    shards. Parquet and Arrow are read in batches, so with a ``hook`` that replaces embedded media bytes by a path,
    only one batch of bytes is in memory at a time."""
    records: list[dict[str, Any]] = []
    for path in source_files(source):
        for record in _iter_file(path):
            if limit is not None and len(records) >= limit:
                return records
            if not isinstance(record, Mapping):
                raise ConvertError(f"{path}: record {len(records)} is a {type(record).__name__}, not an object")
            record = dict(record)
            records.append(hook(record, len(records)) if hook else record)
    return records


def _iter_file(path: Path) -> Iterator[Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                yield from batch.to_pylist()
        elif suffix in (".arrow", ".feather", ".ipc"):
            yield from _iter_arrow(path)
        elif suffix in (".jsonl", ".ndjson"):
            yield from _json_lines(path)
        else:
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                if exc.msg != "Extra data":  # one object per line under a .json name (datasets' to_json)
                    raise ConvertError(f"{path}: not JSON ({exc})") from exc
                yield from _json_lines(path)
                return
            yield from _records_of(data, path)
    except ConvertError:
        raise
    except Exception as exc:  # noqa: BLE001 - json/pyarrow raise many types for unreadable files
        raise ConvertError(f"{path}: cannot read ({exc})") from exc


def _iter_arrow(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_file(path)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:  # not the file format: the stream format of datasets' cache and save_to_disk
        batches = iter(pa.ipc.open_stream(path))
    for batch in batches:
        for start in range(0, batch.num_rows, BATCH_ROWS):
            yield from batch.slice(start, BATCH_ROWS).to_pylist()


def _json_lines(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConvertError(f"{path}: line {n} is not JSON ({exc})") from exc


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
# media embedded in the source


class EmbeddedMedia(str):
    """The path of a media file written from bytes embedded in the source (so a layout can prefer it)."""


#: Leading bytes -> file suffix, for embedded media whose struct names no file.
_MAGIC = (
    (b"fLaC", ".flac"),
    (b"OggS", ".ogg"),
    (b"ID3", ".mp3"),
    (b"\x1a\x45\xdf\xa3", ".mkv"),
)
MEDIA_SUFFIXES = frozenset(".wav .flac .mp3 .ogg .oga .opus .m4a .aac .mp4 .m4v .mov .mkv .webm .avi".split())


def _sniff_suffix(data: bytes) -> str:
    if data[:4] == b"RIFF":
        return ".avi" if data[8:12] == b"AVI " else ".wav"
    if data[4:8] == b"ftyp":
        return ".mp4"
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return ".mp3"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".bin")


def embedded_bytes(value: Any) -> tuple[bytes, str | None] | None:
    """``(bytes, file name or None)`` of an embedded media value: raw bytes, or a ``{"bytes", "path"}`` struct with
    non-empty bytes; None for anything else (a path, a struct holding only a path, empty bytes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return (bytes(value), None) if len(value) else None
    if isinstance(value, Mapping):
        data, name = value.get("bytes"), value.get("path")
        if isinstance(data, bytes | bytearray | memoryview) and len(data):
            return bytes(data), name if isinstance(name, str) and name.strip() else None
    return None


@dataclass
class MediaExtractor:
    """Writes the media embedded in ``fields`` of each record to ``folder`` (a :data:`RecordHook`).

    A file is named ``<stem of the struct's path>-<sha256 prefix><suffix>`` (``<sha256 prefix><suffix>`` without a
    path), so different contents never collide and identical contents are written once. Empty raw bytes become
    None: the layout falls back on its other media fields, or skips the record as ``invalid: missing field``."""

    folder: Path
    fields: tuple[str, ...]
    #: Every file a record was pointed to (written now or by an earlier run).
    files: set[str] = field(default_factory=set)

    def __call__(self, record: dict[str, Any], index: int) -> dict[str, Any]:
        for name in self.fields:
            value = record.get(name)
            found = embedded_bytes(value)
            if found is not None:
                record[name] = EmbeddedMedia(self.write(*found))
            elif isinstance(value, bytes | bytearray | memoryview):
                record[name] = None
        return record

    def write(self, data: bytes, name: str | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest()[:16]
        suffix = Path(name).suffix.lower() if name else ""
        suffix = suffix if suffix in MEDIA_SUFFIXES else _sniff_suffix(data)
        stem = re.sub(r"[^0-9A-Za-z_.-]+", "_", Path(name).stem).strip("._")[:80] if name else ""
        path = self.folder / (f"{stem}-{digest}{suffix}" if stem else f"{digest}{suffix}")
        if not (path.is_file() and path.stat().st_size == len(data)):
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self.files.add(str(path))
        return str(path)


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

    def candidates(self, path: str) -> list[Path]:
        """Where a source's media path may point: a relative path under the media root; an absolute one as given,
        then under the media root (published metadata writes root-relative paths with a leading slash, e.g. MMSU's
        ``/audio/<task>_<uuid>.wav``)."""
        p = Path(path)
        if not p.is_absolute():
            return [self.media_root / p]
        under_root = self.media_root / p.relative_to(p.anchor)
        return [p] if under_root == p else [p, under_root]

    def resolve(self, path: str) -> Path:
        """The first of :meth:`candidates` that is a file, else the last one (where the file is reported missing)."""
        found = self.candidates(path)
        return next((c for c in found if c.is_file()), found[-1])

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
    #: Source fields that may hold embedded media bytes; :func:`run_conversion` writes them out as they are read.
    media_fields: ClassVar[tuple[str, ...]] = ()
    #: Source fields naming the category the benchmark reports by (first present wins); counted in the report.
    category_fields: ClassVar[tuple[str, ...]] = ()
    #: The tag / task every record of the layout has, if fixed: counts the records skipped before being mapped.
    fixed_tag: ClassVar[str | None] = None
    fixed_task: ClassVar[str | None] = "qa"

    def read(
        self, source: str | os.PathLike, limit: int | None = None, hook: RecordHook | None = None
    ) -> list[dict[str, Any]]:
        return read_records(source, limit, hook)

    def category(self, record: Mapping[str, Any]) -> str:
        """The record's value of the first present :attr:`category_fields`, else :data:`NO_CATEGORY`."""
        for name in self.category_fields:
            value = info_value(record.get(name))
            if value is not None and value.strip():
                return value.strip()
        return NO_CATEGORY

    @abc.abstractmethod
    def convert(self, record: Mapping[str, Any], index: int, ctx: Context) -> Record:
        """Map one source record (row ``index``) to a :class:`Record`."""


def _probe(path: Path, kind: str, tried: Sequence[Path]) -> tuple[str, str] | None:
    """None when the file opens; else (reason, detail)."""
    if not path.is_file():
        return MISSING, "no file at " + " or ".join(str(p) for p in tried)
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


def _tag_or_unknown(tag: str | None) -> str:
    try:
        return schema.canonical_tag(tag) if tag else UNKNOWN
    except ValueError:
        return UNKNOWN


def run_conversion(
    converter: Converter,
    source: str | os.PathLike,
    out: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    on_missing: str = "fail",
    limit: int | None = None,
    progress: bool = True,
) -> ConvertReport:
    """Convert ``source`` to the schema parquet ``out``; see the module docstring. Returns the report.

    Raises :class:`ConvertError` (a ValueError) for a bad option, an unreadable source, or, with
    ``on_missing="fail"``, rows with missing or unreadable media."""
    if on_missing not in ON_MISSING:
        raise ConvertError(f"on_missing (--on-missing) must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConvertError(f"limit (--limit) must be a whole number of records, 1 or more; got {limit!r}")
    source = Path(source)
    out = Path(out)
    if media_root is not None and not Path(media_root).is_dir():
        raise ConvertError(f"media root (--media-root) {media_root} is not a folder")
    root = Path(os.path.abspath(media_root if media_root is not None else source if source.is_dir() else source.parent))
    out_dir = Path(os.path.abspath(out.parent))
    category_field = converter.category_fields[0] if converter.category_fields else None
    report = ConvertReport(
        converter.name, str(source), media_root=str(root), on_missing=on_missing, category_field=category_field
    )

    extractor = MediaExtractor(out_dir / "media" / converter.name, converter.media_fields)
    records = converter.read(source, limit, extractor if converter.media_fields else None)
    report.rows_read = len(records)
    report.media_extracted = len(extractor.files)
    categories = [converter.category(r) for r in records]
    report.read_per_category.update(categories)
    converted, media_bad = _convert_records(converter, records, categories, Context(root), out_dir, report, progress)

    if media_bad and on_missing == "fail":
        listed = [b for _, bad in media_bad for b in bad]
        lines = [
            f"{converter.name}: {len(media_bad)} of {report.rows_read} rows of {source} reference missing or "
            f"unreadable media (media root {root}):",
            *_list_rows(listed),
            "Fix the media root (--media-root) or rerun with on_missing='skip' (--on-missing skip) to drop and count "
            "these rows.",
        ]
        raise ConvertError("\n".join(lines), listed)
    for rec, bad in media_bad:
        report.skip(bad[0], categories[bad[0].row], _tag_or_unknown(rec.modality_tag), rec.task)

    rows = _schema_rows(converter, converted, categories, out, report)
    report.rows_written = len(rows)
    report.check()
    if rows:
        schema.validate_rows(rows, check_media=False, source=str(out))  # media were opened above
        schema.write_rows(rows, out)
        report.out = str(out)
    return report


def _convert_records(
    converter: Converter,
    records: list[dict],
    categories: list[str],
    ctx: Context,
    out_dir: Path,
    report: ConvertReport,
    progress: bool,
) -> tuple[list[tuple[int, Record, dict[str, str]]], list[tuple[Record, list[BadRow]]]]:
    """Each source record through the converter, its media opened once per file: ``(converted, media_bad)``, the
    records with their media mapping (source path -> path relative to ``out_dir``) and the records with media
    problems. Invalid records and duplicate ids are skipped into ``report``."""
    from tqdm.auto import tqdm

    media_bad: list[tuple[Record, list[BadRow]]] = []
    converted: list[tuple[int, Record, dict[str, str]]] = []
    probed: dict[Path, tuple[str, str] | None] = {}
    seen_ids: dict[str, int] = {}
    for i, record in enumerate(tqdm(records, desc=f"convert {converter.name}", unit="row", disable=not progress)):
        rid = record.get("id")
        rec = None
        try:
            rec = converter.convert(record, i, ctx)
            if rec.id in seen_ids:
                raise InvalidRow("duplicate id", f"{rec.id!r} first used by row {seen_ids[rec.id]}")
        except InvalidRow as exc:
            bad = BadRow(i, str(rid) if rid is not None else None, None, f"invalid: {exc.reason}", exc.detail)
            tag = _tag_or_unknown(rec.modality_tag if rec else converter.fixed_tag)
            report.skip(bad, categories[i], tag, rec.task if rec else converter.fixed_task or UNKNOWN)
            continue
        seen_ids[rec.id] = i
        bad_here = []
        mapping = {}
        for kind, paths in (("video", rec.videos), ("audio", rec.audios)):
            for p in paths:
                full = Path(os.path.abspath(ctx.resolve(p)))
                if full not in probed:
                    probed[full] = _probe(full, kind, ctx.candidates(p))
                if probed[full] is not None:
                    reason, detail = probed[full]
                    bad_here.append(BadRow(i, rec.id, p, reason, detail))
                mapping[p] = _relative(full, out_dir)
        for note in rec.notes:
            report.notes[note] += 1
        if bad_here:
            media_bad.append((rec, bad_here))
            continue
        converted.append((i, rec, mapping))
    return converted, media_bad


def _schema_rows(
    converter: Converter,
    converted: list[tuple[int, Record, dict[str, str]]],
    categories: list[str],
    out: Path,
    report: ConvertReport,
) -> list[dict]:
    """The converted records as schema rows, counted per tag, stratum, task and category; rows the schema refuses
    are skipped into ``report``."""
    rows: list[dict] = []
    for i, rec, mapping in converted:
        try:
            row = _to_row(converter, rec, mapping, index=len(rows))
            schema.validate_row(row, len(rows), check_media=False, source=str(out))
        except (ValueError, schema.SchemaError) as exc:
            bad = BadRow(i, rec.id, None, "invalid: schema", str(exc).splitlines()[0])
            report.skip(bad, categories[i], _tag_or_unknown(rec.modality_tag), rec.task)
            continue
        rows.append(row)
        report.per_tag[row[schema.MODALITY_TAG]] += 1
        report.per_stratum[row[schema.STRATUM]] += 1
        report.per_task[row[schema.TASK]] += 1
        report.per_category[categories[i]] += 1
    return rows


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
