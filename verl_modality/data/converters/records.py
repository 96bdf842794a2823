"""What a layout module produces and what a conversion refuses: :class:`Record`, :class:`InvalidRow`,
:class:`BadRow` and :class:`ConvertError`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: How many bad rows an error message or a report lists before summarising the rest.
MAX_LISTED = 20


class InvalidRow(ValueError):
    """A source record that cannot be represented in the schema; ``reason`` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Record:
    """One converted item before media checks. ``videos``/``audios`` are every media file of the item as the
    source names them (resolved by :meth:`Context.resolve`); ``available`` defaults to the tag's streams that the
    record has media for."""

    id: str
    question: str
    answer: str  # the option letter (qa) or the reference caption (caption)
    modality_tag: str
    choices: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    audios: list[str] = field(default_factory=list)
    subtitle: str = ""
    available: str | None = None
    task: str = "qa"
    split: str = "test"
    extra_info: dict[str, Any] = field(default_factory=dict)
    #: Short notes counted in the report (e.g. "no separate audio track"); they do not drop the row.
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BadRow:
    """A row dropped (or failing the conversion) because of one of its media files or its content."""

    row: int
    id: str | None
    path: str | None
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"row {self.row} (id {self.id if self.id is not None else '?'})"
        what = f"{self.path}: {self.reason}" if self.path else self.reason
        return f"{where}: {what}" + (f" ({self.detail})" if self.detail else "")


class ConvertError(ValueError):
    """The conversion cannot go on; ``bad_rows`` lists every offending row (for media problems)."""

    def __init__(self, message: str, bad_rows: Sequence[BadRow] = ()):
        self.bad_rows = list(bad_rows)
        super().__init__(message)


def list_rows(bad: Sequence[BadRow], limit: int = MAX_LISTED) -> list[str]:
    lines = [f"  - {b}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return lines
