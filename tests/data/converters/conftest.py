"""Helpers for the converter tests: tiny real media files, a corrupt one, and the vendored MMAU fixture."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def write_wav(path: Path) -> Path:
    from verl_modality.data.media import write_audio

    t = np.arange(1600, dtype=np.float32) / 16000
    return write_audio(path, 0.3 * np.sin(2 * np.pi * 440 * t))


def write_mp4(path: Path) -> Path:
    from verl_modality.data.media import write_video

    return write_video(path, np.full((2, 16, 16, 3), 120, dtype=np.uint8), fps=2)


def write_junk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not audio or video at all" * 8)
    return path


def write_json(path: Path, records, jsonl: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="session")
def media() -> SimpleNamespace:
    """``media.wav(path)``, ``media.mp4(path)``, ``media.junk(path)``, ``media.json(path, records, jsonl=False)``."""
    return SimpleNamespace(wav=write_wav, mp4=write_mp4, junk=write_junk, json=write_json)


@pytest.fixture(scope="session")
def mmau_fixture() -> Path:
    from helpers import MMAU_FIXTURE

    if not MMAU_FIXTURE.is_file():
        pytest.fail(f"the vendored MMAU fixture is missing: {MMAU_FIXTURE}")
    return MMAU_FIXTURE
