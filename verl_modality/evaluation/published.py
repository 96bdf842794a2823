"""Published per-tag tables (accuracy in % with sample counts, as papers print them), read and recomputed.

:func:`read_published_table` reads a table from CSV or JSON; :func:`published_section` recomputes every row's pooled
average, levels and modality gap with the code that reports evaluation results (:mod:`verl_modality.evaluation.
metrics`), next to the values the paper reports, so that its averages and gap columns can be compared.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_modality.evaluation import metrics as M
from verl_modality.vocabulary import TAGS

#: Reported columns a published table may carry next to the per-tag accuracies (values in %).
REPORTED_KEYS = ("avg", "u_b", "u_t", "b_t", "gap")
_REPORTED_ALIASES = {
    "avg": "avg",
    "average": "avg",
    "pooled": "avg",
    "u-b": "u_b",
    "u_b": "u_b",
    "u-t": "u_t",
    "u_t": "u_t",
    "b-t": "b_t",
    "b_t": "b_t",
    "gap": "gap",
    "gap avg": "gap",
    "gap_avg": "gap",
}
_NAME_COLUMNS = ("row", "model", "method", "name", "variant")
_SAMPLE_ROW_NAMES = ("samples", "# samples", "#samples", "n", "count", "counts")
_MISSING_CELLS = ("", "-", "–", "—", "n/a", "na")


@dataclass(frozen=True)
class PublishedTable:
    """Per-tag accuracies (fractions) with sample counts, one entry per table row, and reported columns."""

    source: str
    rows: dict[str, dict[str, tuple[float, int]]]
    reported: dict[str, dict[str, float]] = field(default_factory=dict)  # row -> {avg/u_b/u_t/b_t/gap: fraction}
    ignored_columns: list[str] = field(default_factory=list)


def _number(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in _MISSING_CELLS):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a number")
    try:
        x = float(str(value).strip().rstrip("%").replace("*", "")) if isinstance(value, str) else float(value)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: {value!r} is not a finite number")
    return x


def _percent(value: Any, where: str) -> float | None:
    x = _number(value, where)
    if x is not None and not 0.0 <= x <= 100.0:
        raise ValueError(f"{where}: {value!r} is not a percentage in [0, 100]")
    return None if x is None else x / 100.0


def _count(value: Any, where: str) -> int:
    x = _number(value, where)
    if x is None or x != int(x) or x <= 0:
        raise ValueError(f"{where}: sample count {value!r} is not a positive integer")
    return int(x)


def _key(name: str) -> str:
    return " ".join(str(name).strip().lower().replace("%", "").split())


def _from_wide(source: str, header: list[str], lines: list[tuple[str, dict[str, Any]]]) -> PublishedTable:
    """Wide form: a name column, one column per tag, optional reported columns, and a sample-count row."""
    tag_cols = [c for c in header if c.strip() in TAGS]
    if not tag_cols:
        raise ValueError(f"{source}: no tag column ({', '.join(TAGS)}) in header {header}")
    name_col = next((c for c in header if _key(c) in _NAME_COLUMNS), header[0])
    reported_cols = {c: _REPORTED_ALIASES[_key(c)] for c in header if _key(c) in _REPORTED_ALIASES}
    ignored = [c for c in header if c not in tag_cols and c != name_col and c not in reported_cols]
    samples: dict[str, int] | None = None
    samples_where = source
    acc_rows: list[tuple[str, str, dict[str, Any]]] = []
    for where, line in lines:
        name = str(line.get(name_col, "")).strip()
        if _key(name).strip("<>/i ") in _SAMPLE_ROW_NAMES:
            samples_where = where
            samples = {
                c.strip(): _count(line[c], f"{where}: column {c!r}")
                for c in tag_cols
                if _number(line.get(c), f"{where}: column {c!r}") is not None
            }
        else:
            acc_rows.append((where, name, line))
    if samples is None:
        raise ValueError(f"{source}: no sample-count row (a row named 'samples' with the count of every tag)")
    rows: dict[str, dict[str, tuple[float, int]]] = {}
    reported: dict[str, dict[str, float]] = {}
    for where, name, line in acc_rows:
        if not name:
            raise ValueError(f"{where}: column {name_col!r} is empty (every row needs a name)")
        if name in rows:
            raise ValueError(f"{where}: row {name!r} appears twice")
        per_tag = {}
        for c in tag_cols:
            acc = _percent(line.get(c), f"{where}: row {name!r} column {c!r}")
            if acc is not None:
                if c.strip() not in samples:
                    raise ValueError(
                        f"{where}: row {name!r} has an accuracy in column {c.strip()!r} but the samples row "
                        f"({samples_where}) has no count for it"
                    )
                per_tag[c.strip()] = (acc, samples[c.strip()])
        if not per_tag:
            continue  # a section heading of the paper's table (no numbers); it has nothing to recompute
        rows[name] = per_tag
        rep = {}
        for c, key in reported_cols.items():
            x = _percent(line.get(c), f"{where}: row {name!r} column {c!r}")
            if x is not None:
                rep[key] = x
        if rep:
            reported[name] = rep
    if not rows:
        raise ValueError(f"{source}: no row with per-tag accuracies")
    return PublishedTable(source, rows, reported, ignored)


def _from_long(source: str, lines: list[tuple[str, dict[str, Any]]]) -> PublishedTable:
    """Long form: one line per (row, tag) with ``tag``, ``accuracy`` (%), ``samples`` and an optional row name."""
    rows: dict[str, dict[str, tuple[float, int]]] = {}
    for where, line in lines:
        keys = {_key(k): k for k in line}
        name_key = next((keys[k] for k in _NAME_COLUMNS if k in keys), None)
        name = str(line[name_key]).strip() if name_key else "table"
        tag = str(line.get(keys.get("tag", "tag"), "")).strip()
        if tag not in TAGS:
            raise ValueError(f"{where}: tag {tag!r} is not one of {', '.join(TAGS)}")
        for needed in ("accuracy", "samples"):
            if needed not in keys:
                raise ValueError(f"{where}: missing field {needed!r}")
        acc = _percent(line[keys["accuracy"]], f"{where}: field 'accuracy'")
        if acc is None:
            raise ValueError(f"{where}: field 'accuracy' is empty")
        row = rows.setdefault(name, {})
        if tag in row:
            raise ValueError(f"{where}: tag {tag!r} of row {name!r} appears twice")
        row[tag] = (acc, _count(line[keys["samples"]], f"{where}: field 'samples'"))
    if not rows:
        raise ValueError(f"{source}: no rows")
    return PublishedTable(source, rows)


def read_published_table(path: str | os.PathLike) -> PublishedTable:
    """Read a published per-tag table (accuracies in %, sample counts) from CSV or JSON.

    CSV, wide (as papers print it): a name column (``row``/``model``/``method``/first column), one column per tag,
    optional ``Avg``, ``U-B``, ``U-T``, ``B-T``, ``Gap`` columns (the reported values, %), and one row named
    ``samples`` with the tag sample counts. CSV, long: columns ``tag``, ``accuracy``, ``samples`` and optionally
    ``row``. JSON: ``{"samples": {tag: n}, "rows": {name: {tag: acc, "avg": ..., ...}}}`` or a list of long-form
    objects. Empty cells or ``-`` mean "not reported".
    """
    source = str(path)
    text = Path(path).read_text(encoding="utf-8")
    if source.lower().endswith(".json"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not JSON ({err})") from None
        if isinstance(obj, list):
            return _from_long(source, [(f"{source}: item {i}", dict(x)) for i, x in enumerate(obj)])
        if not isinstance(obj, dict) or "samples" not in obj or "rows" not in obj:
            raise ValueError(f"{source}: expected {{'samples': {{tag: n}}, 'rows': {{name: {{tag: acc}}}}}} or a list")
        header = ["row", *obj["samples"].keys()]
        lines = [(f"{source}: samples", {"row": "samples", **obj["samples"]})]
        for name, cells in obj["rows"].items():
            header += [k for k in cells if k not in header]
            lines.append((f"{source}: rows.{name}", {"row": name, **cells}))
        return _from_wide(source, header, lines)
    reader = csv.DictReader(text.splitlines())
    header = list(reader.fieldnames or [])
    lines = [(f"{source}:{i + 2}", row) for i, row in enumerate(reader)]
    if "tag" in {_key(h) for h in header}:
        return _from_long(source, lines)
    return _from_wide(source, header, lines)


def published_row(per_tag: Mapping[str, tuple[float, int]]) -> dict[str, Any]:
    """Pooled average, tag mean, levels and modality gap of ``{tag: (accuracy, samples)}``."""
    levels = M.pool_levels(per_tag)
    return {
        "per_tag": {t: {"accuracy": a, "samples": n} for t, (a, n) in per_tag.items()},
        "pooled": M.pooled(per_tag),
        "tag_mean": math.fsum(a for a, _ in per_tag.values()) / len(per_tag) if per_tag else None,
        "levels": {lvl: (v.as_dict() if v else None) for lvl, v in levels.items()},
        "modality_gap": M.gap_from_levels(levels).as_dict(),
    }


def published_section(
    table: PublishedTable, extra_rows: Mapping[str, Mapping[str, tuple[float, int]]] | None = None
) -> dict[str, Any]:
    """The ``published`` block: every table row recomputed, its reported values and the differences."""
    rows = []
    for name, per_tag in [*table.rows.items(), *(extra_rows or {}).items()]:
        row = {
            "name": name,
            "from_table": name in table.rows,
            **published_row({t: per_tag[t] for t in M.order_tags(per_tag)}),
        }
        reported = table.reported.get(name, {}) if name in table.rows else {}
        recomputed = {"avg": row["pooled"], **{k: row["modality_gap"][k] for k in ("u_b", "u_t", "b_t", "gap")}}
        row["reported"] = reported
        row["difference"] = {k: (recomputed[k] - v if recomputed[k] is not None else None) for k, v in reported.items()}
        rows.append(row)
    return {"source": table.source, "rows": rows, "ignored_columns": list(table.ignored_columns)}
