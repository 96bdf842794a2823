"""Per-tag summary of a training run, read from verl's file logger (``trainer.logger=[...,file]``).

verl's ``FileLogger`` writes one JSON object per logged step, ``{"step": int, "data": {metric: value}}``, to
``$VERL_FILE_LOGGER_PATH``. The trainer logs per-tag statistics as ``mapo/<tag>/<stat>`` and validation accuracy as
``val-core/tag/<tag>/acc``; this module turns them into a table.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

from verl_modality.vocabulary import TAGS

#: (metric suffix, column title, aggregation over steps) for the training columns.
TRAIN_COLUMNS = (
    ("count", "responses", "sum"),
    ("reward_mean", "reward", "weighted"),
    ("zero_var_frac", "zero-var", "weighted"),
    ("difficulty", "D_M", "last"),
    ("weight", "w_M", "last"),
    ("adv_abs_mean", "|A|", "weighted"),
)


def read_metrics(path: str | os.PathLike) -> list[tuple[int, dict[str, float]]]:
    """``[(step, metrics)]`` in file order; a line that is not valid JSON raises with its line number."""
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({err})") from err
            records.append((int(obj["step"]), dict(obj["data"])))
    return records


def _tag_order(tags: set[str]) -> list[str]:
    known = [t for t in TAGS if t in tags]
    return known + sorted(tags - set(known))


def summarize(records: list[tuple[int, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per tag: training columns aggregated over steps, plus ``val_first``/``val_last`` accuracy when logged.

    Counts are summed, means are weighted by each step's response count, ``D_M`` and ``w_M`` are the last step's.
    """
    per_tag: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    val: dict[str, list[float]] = defaultdict(list)
    for _, data in records:
        for key, value in data.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "mapo":
                tag, stat = parts[1], parts[2]
                count = float(data.get(f"mapo/{tag}/count", 1.0))
                per_tag[tag][stat].append((float(value), count))
            elif len(parts) == 4 and parts[:2] == ["val-core", "tag"] and parts[3] == "acc":
                val[parts[2]].append(float(value))
    out: dict[str, dict[str, float]] = {}
    for tag in set(per_tag) | set(val):
        row: dict[str, float] = {}
        for stat, _, how in TRAIN_COLUMNS:
            series = per_tag.get(tag, {}).get(stat, [])
            if not series:
                continue
            if how == "sum":
                row[stat] = sum(v for v, _ in series)
            elif how == "last":
                row[stat] = series[-1][0]
            else:
                total = sum(c for _, c in series)
                row[stat] = sum(v * c for v, c in series) / total if total else math.nan
        if val.get(tag):
            row["val_first"], row["val_last"] = val[tag][0], val[tag][-1]
        out[tag] = row
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """Plain-text table, one row per tag in canonical order, then the pooled and tag-mean validation rows."""
    header = ["tag"] + [title for _, title, _ in TRAIN_COLUMNS] + ["val acc first", "val acc last"]
    rows = []

    def cell(row: dict[str, float], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row and not math.isnan(row[key]) else "-"

    for tag in _tag_order(set(summary)):
        row = summary[tag]
        rows.append(
            [tag]
            + [cell(row, stat, ".0f" if stat == "count" else ".3f") for stat, _, _ in TRAIN_COLUMNS]
            + [cell(row, "val_first", ".3f"), cell(row, "val_last", ".3f")]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
