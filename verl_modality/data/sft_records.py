"""SFT records for verl's SFT trainer: ``messages`` plus ``videos`` / ``audios`` columns, the layout
:class:`verl_modality.data.omni_sft_dataset.OmniSFTDataset` reads (Weak-to-Strong SFT and the demo's warm start)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_sft(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write SFT records with fixed column types; ``videos`` / ``audios`` only when some record has one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"{os.fspath(path)}: no SFT rows to write")
    types = {
        "messages": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
        "videos": pa.list_(pa.struct([("video", pa.string())])),
        "audios": pa.list_(pa.struct([("audio", pa.string())])),
    }
    names = ["messages"]
    names += [k for k in ("videos", "audios") if any(r[k] for r in rows)]
    names += ["id", "data_source", "modality_tag", "answer", "acf_split"]
    columns = [pa.array([r[n] for r in rows], type=types.get(n, pa.string())) for n in names]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(columns, names=names), path)
    return path
