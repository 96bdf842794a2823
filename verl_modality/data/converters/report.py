"""The report of a conversion: every record read is counted as written or skipped, by reason, tag, task and
source category, and :meth:`ConvertReport.check` refuses counts that do not add up."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from verl_modality import vocabulary
from verl_modality.data import schema
from verl_modality.data.converters.records import BadRow, ConvertError, list_rows

#: Tag / task / category key of a skipped row the layout could not map (so its tag or task is unknown).
UNKNOWN = "?"


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
        lines.append(f"  per tag       {counts(self.per_tag, vocabulary.TAGS)}")
        if self.rows_skipped:
            lines.append(f"    skipped     {counts(self.skipped_per_tag, vocabulary.TAGS)}")
        lines.append(f"  per stratum   {counts(self.per_stratum, vocabulary.STRATA)}")
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
            lines += ["  " + line for line in list_rows(sorted(self.skipped_rows, key=lambda b: b.row), 5)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
