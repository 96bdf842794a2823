"""``verl-modality validate-data FILE...``: counts per tag, stratum and level, and every problem of a dataset.

Unlike :func:`~verl_modality.data.validate.validate_file`, which stops at a
:class:`~verl_modality.data.validate.SchemaError`, the report lists all schema issues
(:func:`~verl_modality.data.validate.validate_rows`) and all media problems: each media file a row references
(shown in ``videos``/``audios`` or listed in ``media``) is probed once with :func:`media.probe_video` /
:func:`media.probe_audio`, and a missing, empty, unreadable or corrupt file becomes one issue per row that uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_modality import vocabulary
from verl_modality.data import media, schema, validate
from verl_modality.data.validate import SchemaIssue
from verl_modality.vocabulary import TAGS

_KINDS = {"video": (schema.VIDEOS, "video", media.probe_video), "audio": (schema.AUDIOS, "audio", media.probe_audio)}


@dataclass
class DataReport:
    """Counts and problems of one parquet file."""

    path: str
    rows: int = 0
    by_tag: Counter = field(default_factory=Counter)
    by_stratum: Counter = field(default_factory=Counter)
    by_level: Counter = field(default_factory=Counter)
    by_task: Counter = field(default_factory=Counter)
    by_tag_stratum: Counter = field(default_factory=Counter)  # (tag, stratum) -> rows
    media_files: int = 0  # distinct files probed
    bad_media_files: int = 0
    media_checked: bool = True
    issues: list[SchemaIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "ok": self.ok,
            "by_tag": dict(self.by_tag),
            "by_stratum": dict(self.by_stratum),
            "by_level": dict(self.by_level),
            "by_task": dict(self.by_task),
            "by_tag_stratum": {f"{t}/{s}": n for (t, s), n in self.by_tag_stratum.items()},
            "media_checked": self.media_checked,
            "media_files": self.media_files,
            "bad_media_files": self.bad_media_files,
            "problems": [
                {"file": i.file, "row": i.row, "id": i.id, "field": i.field, "problem": i.problem, "text": str(i)}
                for i in self.issues
            ],
        }

    def render(self) -> str:
        """Plain-text report: a tag x stratum table with totals, levels, tasks, then every problem."""
        media_note = (
            f"{self.media_files} media files probed ({self.bad_media_files} bad)"
            if self.media_checked
            else "media not checked"
        )
        lines = [f"{self.path}: {self.rows} rows, {media_note}, {len(self.issues)} problem(s)"]
        if self.rows:
            tags = _ordered(self.by_tag, TAGS)
            strata = _ordered(self.by_stratum, vocabulary.STRATA)
            width = max([len("total"), len("tag"), *(len(t) for t in tags)])
            cols = [max(len(s), 6) for s in strata]
            head = f"  {'tag':<{width}} " + " ".join(f"{s:>{w}}" for s, w in zip(strata, cols, strict=True))
            lines.append(head + f" {'total':>6}  level")
            for tag in tags:
                cells = " ".join(f"{self.by_tag_stratum[(tag, s)]:>{w}}" for s, w in zip(strata, cols, strict=True))
                lines.append(f"  {tag:<{width}} {cells} {self.by_tag[tag]:>6}  {_level(tag)}")
            cells = " ".join(f"{self.by_stratum[s]:>{w}}" for s, w in zip(strata, cols, strict=True))
            lines.append(f"  {'total':<{width}} {cells} {self.rows:>6}")
            levels = _ordered(self.by_level, vocabulary.LEVELS)
            lines.append("  by level: " + ", ".join(f"{lv} {self.by_level[lv]}" for lv in levels))
            lines.append("  by task: " + ", ".join(f"{t} {n}" for t, n in sorted(self.by_task.items(), key=str)))
        if self.issues:
            lines.append(f"problems ({len(self.issues)}):")
            lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)


def _ordered(counter: Mapping, canonical: Sequence[str]) -> list:
    """Keys of ``counter``: the canonical ones (all of them, even at zero) first, then the others."""
    rest = sorted((k for k in counter if k not in canonical), key=str)
    return [*canonical, *rest]


def _level(tag: Any) -> str:
    try:
        return vocabulary.level(tag) if isinstance(tag, str) and tag == vocabulary.canonical_tag(tag) else "?"
    except ValueError:
        return "?"


def _label(value: Any) -> str:
    """A count key for a field value: the string itself, else a marker naming the bad value."""
    return value if isinstance(value, str) and value else f"<{value!r}>"


def media_references(row: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(field, kind, path)`` of every media file a row references, once each; tolerates malformed rows.

    ``field`` is ``videos``/``audios`` for shown files and ``media`` for files listed only in the ``media`` column.
    """
    refs: dict[tuple[str, str], str] = {}
    for kind, (column, key, _) in _KINDS.items():
        for item in _list(row.get(column)):
            path = item.get(key) if isinstance(item, Mapping) else None
            if isinstance(path, str) and path:
                refs.setdefault((kind, path), column)
    extra = row.get(schema.MEDIA)
    if isinstance(extra, Mapping):
        for kind, key in (("video", "videos"), ("audio", "audios")):
            for path in _list(extra.get(key)):
                if isinstance(path, str) and path:
                    refs.setdefault((kind, path), schema.MEDIA)
    return [(column, kind, path) for (kind, path), column in refs.items()]


def _list(value: Any) -> list:
    if value is None or isinstance(value, str | bytes | Mapping):
        return []
    try:
        return list(value)
    except TypeError:
        return []


def build_report(
    path: str | os.PathLike,
    check_media: bool = True,
    media_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> DataReport:
    """Read a parquet file and collect its counts, schema issues and (unless ``check_media`` is false) media problems.

    Relative media paths resolve against ``media_root``, default the file's directory. Never raises for bad data.
    """
    source = os.fspath(path)
    report = DataReport(source, media_checked=check_media)
    try:
        rows = schema.read_rows(source)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for missing or corrupt files
        report.issues.append(SchemaIssue(source, None, None, None, f"cannot read parquet ({exc})"))
        return report
    report.rows = len(rows)
    if not rows:
        report.issues.append(SchemaIssue(source, None, None, None, "holds no rows"))
        return report

    for row in rows:
        row = row if isinstance(row, Mapping) else {}
        tag, stratum = _label(row.get(schema.MODALITY_TAG)), _label(row.get(schema.STRATUM))
        report.by_tag[tag] += 1
        report.by_stratum[stratum] += 1
        report.by_level[_level(tag)] += 1
        report.by_task[_label(row.get(schema.TASK))] += 1
        report.by_tag_stratum[(tag, stratum)] += 1

    try:
        validate.validate_rows(rows, check_media=False, source=source)
    except validate.SchemaError as exc:
        report.issues += exc.issues

    if check_media:
        root = Path(media_root) if media_root is not None else Path(source).resolve().parent
        report.issues += _media_issues(rows, root, source, report, progress)
    report.issues.sort(key=lambda i: -1 if i.row is None else i.row)  # stable: schema before media within a row
    return report


def _media_issues(
    rows: Sequence[Mapping[str, Any]], root: Path, source: str, report: DataReport, progress: bool
) -> list[SchemaIssue]:
    from tqdm.auto import tqdm

    users: dict[tuple[str, str], list[tuple[int, str | None, str]]] = {}  # (kind, full path) -> (row, id, field)
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            continue
        rid = row.get(schema.ID)
        rid = rid if isinstance(rid, str) and rid else None
        for column, kind, p in media_references(row):
            users.setdefault((kind, str(schema.resolve_path(p, root))), []).append((index, rid, column))

    problems: dict[tuple[str, str], str] = {}
    for kind, full in tqdm(users, desc=f"probing media of {Path(source).name}", unit="file", disable=not progress):
        row, rid, _ = users[(kind, full)][0]
        try:
            _KINDS[kind][2](full, context=f"row {row} (id {rid if rid is not None else '?'})")
        except media.MediaError as exc:
            problems[(kind, full)] = exc.problem
    report.media_files, report.bad_media_files = len(users), len(problems)

    issues = []
    for key, problem in problems.items():
        for row, rid, column in users[key]:
            issues.append(SchemaIssue(source, row, rid, column, f"{key[1]}: {problem}"))
    issues.sort(key=lambda i: i.row)
    return issues


def build_reports(
    paths: Iterable[str | os.PathLike],
    check_media: bool = True,
    media_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[DataReport]:
    return [build_report(p, check_media=check_media, media_root=media_root, progress=progress) for p in paths]


# ---------------------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``validate-data`` options; sets :func:`run` as the handler."""
    parser.add_argument("files", nargs="+", help="parquet files of tagged samples")
    parser.add_argument("--no-media", action="store_true", help="skip probing the media files")
    parser.add_argument(
        "--media-root", default=None, help="directory relative media paths resolve against (default: each file's)"
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON instead of text")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while probing media")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Report on every file; exit status 1 when any file has a problem."""
    reports = build_reports(
        args.files,
        check_media=not getattr(args, "no_media", False),
        media_root=getattr(args, "media_root", None),
        progress=not getattr(args, "no_progress", False),
    )
    if getattr(args, "json", False):
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n\n".join(r.render() for r in reports))
    bad = [r for r in reports if not r.ok]
    for r in bad:
        print(f"INVALID {r.path}: {len(r.issues)} problem(s)", file=sys.stderr)
    return 1 if bad else 0
