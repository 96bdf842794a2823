"""The project's vocabulary: streams, required-modality tags, levels, strata, option letters, ablations.

The readings behind them are in docs/method.md §1.

The bottom of the import graph: plain Python, imported by every layer, and the one home of these names (no other
module re-exports them).
"""

from __future__ import annotations

from collections.abc import Iterable

#: Canonical stream order: video, audio, subtitle.
STREAMS = ("V", "A", "S")
#: The seven required-modality tags, in canonical order.
TAGS = ("V", "A", "S", "VA", "VS", "AS", "VAS")
#: Tag levels by number of streams.
LEVELS = ("uni", "bi", "tri")
#: How the streams shown relate to the streams required (docs/method.md §1).
STRATA = ("exact", "superset", "deficit")
#: Option letters of multiple-choice rows (2-6 options).
LETTERS = "ABCDEF"
#: How a stream is taken away: left out of the prompt, or kept as silence / black frames / an empty subtitle.
ABLATIONS = ("remove", "blank")
#: Media placeholders of prompt text, one per entry of a row's ``videos`` / ``audios``.
VIDEO_PLACEHOLDER = "<video>"
AUDIO_PLACEHOLDER = "<audio>"
IMAGE_PLACEHOLDER = "<image>"


def canonical_tag(streams: str | Iterable[str], allow_empty: bool = False) -> str:
    """Normalise a set of streams (``"AV"``, ``{"S", "V"}``, ``"vas"``) to canonical order (``"VA"``, ``"VS"``...).

    Raises ``ValueError`` naming the value when it holds anything but V, A, S, or is empty (unless ``allow_empty``).
    """
    if isinstance(streams, str):
        letters = list(streams.upper())
    else:
        try:
            letters = [str(s).upper() for s in streams]
        except TypeError:
            raise ValueError(f"{streams!r} is not a set of streams (V, A, S)") from None
    bad = [s for s in letters if s not in STREAMS]
    if bad:
        raise ValueError(f"{streams!r} is not a set of streams: {bad[0]!r} is not one of {', '.join(STREAMS)}")
    tag = "".join(s for s in STREAMS if s in letters)
    if not tag and not allow_empty:
        raise ValueError(f"{streams!r} is an empty set of streams; a tag needs at least one of {', '.join(STREAMS)}")
    return tag


def level(tag: str | Iterable[str]) -> str:
    """``"uni"``, ``"bi"`` or ``"tri"`` by the number of streams of ``tag``."""
    return LEVELS[len(canonical_tag(tag)) - 1]


def stratum_of(tag: str | Iterable[str], available: str | Iterable[str]) -> str:
    """``"exact"`` (available == tag), ``"superset"`` (strictly more) or ``"deficit"`` (a tag stream missing)."""
    need, shown = set(canonical_tag(tag)), set(canonical_tag(available, allow_empty=True))
    if need == shown:
        return "exact"
    return "superset" if need < shown else "deficit"


def letter(index: int) -> str:
    """Option letter of the 0-based ``index``."""
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"option index {index} is outside 0..{len(LETTERS) - 1}")
    return LETTERS[index]
