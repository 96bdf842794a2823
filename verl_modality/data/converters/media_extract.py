"""Media embedded in a converter's source (Hugging Face ``Audio`` / ``Video`` structs or raw bytes), written out as
files while the source is read (:class:`MediaExtractor`)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
