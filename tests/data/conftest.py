"""Fixtures for the data tests: one demo set per session, and decoders that read facts back out of media."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def dominant_frequency(wave: np.ndarray, sr: int) -> float:
    """Frequency (Hz) of the largest FFT magnitude of a real signal."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1.0 / sr)[int(np.argmax(spectrum))])


def count_bursts(wave: np.ndarray, sr: int, threshold: float = 0.1) -> int:
    """Number of separate loud stretches: 10 ms RMS windows above ``threshold``, counted at rising edges."""
    hop = sr // 100
    n = len(wave) // hop
    rms = np.sqrt((wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    loud = np.concatenate([[False], rms > threshold])
    return int(np.count_nonzero(loud[1:] & ~loud[:-1]))


def nearest_colour(frames: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    """Palette name closest (Euclidean RGB) to the mean colour of the frames."""
    mean = frames.reshape(-1, 3).astype(np.float64).mean(axis=0)
    return min(palette, key=lambda name: float(np.linalg.norm(mean - np.asarray(palette[name]))))


@pytest.fixture(scope="session")
def decode() -> SimpleNamespace:
    """The media decoders above, for tests in this folder."""
    return SimpleNamespace(frequency=dominant_frequency, bursts=count_bursts, colour=nearest_colour)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The default-size demo set (seed 0), written once per session: ``(directory, summary)``."""
    from verl_modality.data.synthetic import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    return out, make_demo_data(out, seed=0, progress=False)
