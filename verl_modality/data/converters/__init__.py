"""Converters from public benchmark layouts to the tagged-sample schema (``docs/converters.md``).

``convert(name, source, out)`` reads ``source`` in the layout ``name`` (one of :data:`CONVERTERS`), checks that
every referenced media file opens, and writes a schema parquet to ``out``; it returns a
:class:`~verl_modality.data.converters.report.ConvertReport` and raises
:class:`~verl_modality.data.converters.records.ConvertError` for what it cannot convert.
"""

from __future__ import annotations

import os

from verl_modality.data.converters.audiomcq import AudioMCQConverter
from verl_modality.data.converters.base import Converter, run_conversion
from verl_modality.data.converters.daily_omni import DailyOmniConverter
from verl_modality.data.converters.maple_bench import (
    MapleCaptionConverter,
    MapleQAAllConverter,
    MapleQAExactConverter,
)
from verl_modality.data.converters.mmar import MMARConverter
from verl_modality.data.converters.mmau import MMAUConverter
from verl_modality.data.converters.mmsu import MMSUConverter
from verl_modality.data.converters.report import ConvertReport

#: Layout name -> converter.
CONVERTERS: dict[str, Converter] = {
    c.name: c
    for c in (
        MMAUConverter(),
        MMSUConverter(),
        MMARConverter(),
        AudioMCQConverter(),
        DailyOmniConverter(),
        MapleQAExactConverter(),
        MapleQAAllConverter(),
        MapleCaptionConverter(),
    )
}


def layouts() -> str:
    """One line per layout: name and description."""
    width = max(len(n) for n in CONVERTERS)
    return "\n".join(f"{name:<{width}}  {c.description}" for name, c in CONVERTERS.items())


def convert(
    name: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    on_missing: str = "fail",
    limit: int | None = None,
    progress: bool = True,
) -> ConvertReport:
    """Convert ``source`` (layout ``name``: a file, or a folder of parquet / arrow shards) to the schema parquet
    ``out``; media embedded in the source are written under ``<out folder>/media/<name>/``.

    ``media_root``: where the source's media paths start (default: the source file's directory, or the source
    folder); leading-slash paths missing as given are found there too. ``on_missing``: ``"fail"`` raises one
    :class:`~verl_modality.data.converters.records.ConvertError` listing every row with a missing or unreadable media
    file; ``"skip"`` drops those rows and
    counts them in the report. ``limit``: convert the first N records (N >= 1).
    """
    if name not in CONVERTERS:
        raise KeyError(f"unknown layout {name!r}; known layouts:\n{layouts()}")
    return run_conversion(CONVERTERS[name], source, out, media_root, on_missing, limit, progress)


__all__ = ["CONVERTERS", "convert", "layouts"]
