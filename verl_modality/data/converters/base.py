"""The conversion pipeline of the benchmark converters: :class:`Converter`, :class:`Context`, :func:`run_conversion`.

A layout module only maps one source record to a :class:`~verl_modality.data.converters.records.Record` (field
mapping, tag, answer letter, with the helpers of :mod:`~verl_modality.data.converters.fields`); everything else
happens here in :func:`run_conversion`:

1. read the source (:mod:`~verl_modality.data.converters.source`), keeping the first ``limit`` records. Media
   embedded in the layout's :attr:`Converter.media_fields` (a ``{"bytes", "path"}`` struct, as Hugging Face
   ``Audio`` / ``Video`` columns store them, or raw bytes) are written to ``<out folder>/media/<layout>/`` as they
   are read and the field then holds the written file's path
   (:mod:`~verl_modality.data.converters.media_extract`);
2. map every record (a record that cannot be represented raises ``InvalidRow`` and is skipped, counted under
   ``invalid: <reason>``);
3. open every referenced media file (``media.probe_audio`` / ``media.probe_video``) resolved against the media root
   (default: the source file's directory) by :meth:`Context.resolve`. ``on_missing="fail"`` raises one
   ``ConvertError`` listing every bad row (row number, id, path, reason); ``"skip"`` drops those rows and
   counts them (``missing media`` / ``unreadable media``);
4. build the schema rows (media paths rewritten relative to the output file's directory, so that
   ``validate_file(out)`` finds them), check them with ``validate.validate_rows`` and write them with
   ``schema.write_rows``.

Nothing is dropped silently: every skipped row is counted by reason, tag, task and source category in the
:class:`~verl_modality.data.converters.report.ConvertReport`, which refuses counts that do not add up to the rows
read.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from verl_modality import vocabulary
from verl_modality.data import media as media_io
from verl_modality.data import schema, validate
from verl_modality.data.converters.fields import info_value
from verl_modality.data.converters.media_extract import MediaExtractor
from verl_modality.data.converters.records import BadRow, ConvertError, InvalidRow, Record, list_rows
from verl_modality.data.converters.report import UNKNOWN, ConvertReport
from verl_modality.data.converters.source import RecordHook, read_records

ON_MISSING = ("fail", "skip")
MISSING = "missing media"
UNREADABLE = "unreadable media"
#: Category of a record without the layout's category field.
NO_CATEGORY = "(none)"


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
        return vocabulary.canonical_tag(tag) if tag else UNKNOWN
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
            *list_rows(listed),
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
        validate.validate_rows(rows, check_media=False, source=str(out))  # media were opened above
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
            validate.validate_row(row, len(rows), check_media=False, source=str(out))
        except (ValueError, validate.SchemaError) as exc:
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
    have = vocabulary.canonical_tag(
        ("V" if videos else "") + ("A" if audios else "") + ("S" if rec.subtitle else ""), allow_empty=True
    )
    tag = vocabulary.canonical_tag(rec.modality_tag)
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
