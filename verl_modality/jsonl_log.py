"""Append-only JSON-lines logs that survive a crash in the middle of a write (evaluation results, voter answers)."""

from __future__ import annotations

import os
from pathlib import Path


def complete_lines(path: str | os.PathLike) -> tuple[list[str], int]:
    """The complete (newline-terminated) lines of ``path``, and the size in bytes of a half-written last line.

    A crash mid-write leaves at most one unterminated last line; it is cut off the file (truncated and synced) so
    that the next append starts on a line of its own. Parsing the lines is the caller's business.
    """
    path = Path(path)
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    dropped = len(data) - cut
    if dropped:
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    return data[:cut].decode("utf-8").splitlines(), dropped
