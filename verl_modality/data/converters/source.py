"""Reading a converter's source: a ``.json`` list, ``{key: record}`` dict or JSON lines, ``.jsonl``, ``.parquet``,
``.arrow``, or a folder of ``.parquet`` / ``.arrow`` shards, as plain dicts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from verl_modality.data.converters.records import ConvertError

#: Source files a folder source is made of, by preference.
SHARD_SUFFIXES = (".parquet", ".arrow")
#: Records per batch when reading parquet / arrow (bounds the embedded bytes held in memory at once).
BATCH_ROWS = 64

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
