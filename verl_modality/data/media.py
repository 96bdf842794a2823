"""Media I/O for tagged samples: 16 kHz mono float32 wav audio and short mp4 videos as uint8 frame arrays.

Audio goes through ``soundfile`` (with PyAV as a fallback for containers libsndfile does not read, such as the
audio track of an mp4); videos through PyAV. Every reader raises :class:`MediaError` naming the file (and the
caller's ``context``, e.g. ``"row 12 (id mmau/3)"``, when given) when a file is missing, empty, corrupt or has no
stream of the wanted kind; no reader returns an empty array.

:func:`load_video` streams through the container: with ``max_frames`` it first reads the packet timestamps (no
decoding) to learn which frames it will keep, then decodes and converts only those, so memory is bounded by the
frames returned, not by the length of the clip. :func:`blank_audio_like` and :func:`black_frames_like` give the
silence/blank form of dropping a stream (docs/method.md §1): same shapes, so token positions stay identical.

:func:`probe_audio` and :func:`probe_video` probe the first second / frame by default, so that loading a large
training or test set stays quick; ``full=True``, or :func:`probe_depth` around a block, checks whole files (every
sample finite, every frame decodable), as ``verl-modality validate-data`` does unless given ``--quick``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

#: Sampling rate of every audio array handed to the model.
SAMPLE_RATE = 16000
#: Video codecs tried by :func:`write_video`, first available wins.
VIDEO_CODECS = ("mpeg4", "libx264")

# libsndfile's SFC_SET_ADD_PEAK_CHUNK: float wavs otherwise get a PEAK chunk stamped with the write time, which
# makes two writes of the same samples differ byte-wise.
_SFC_SET_ADD_PEAK_CHUNK = 0x1050
# Frame times closer than this (seconds) count as equal when sampling at a given fps.
_TIME_EPS = 1e-3
# Samples read per block by a full audio probe (bounded memory for long files).
_PROBE_BLOCK = 1 << 16
#: Default depth of :func:`probe_audio` / :func:`probe_video` when ``full`` is not given (see :func:`probe_depth`).
FULL_PROBE = False


class MediaError(ValueError):
    """A media file is missing, empty, corrupt, or lacks the expected stream.

    ``str()`` reads ``"[context: ]path: problem"``; the parts are kept as ``path``, ``problem`` and ``context``.
    """

    def __init__(
        self, message: str, *, path: str | None = None, problem: str | None = None, context: str | None = None
    ):
        super().__init__(message)
        self.path, self.problem, self.context = path, problem if problem is not None else message, context


def _error(path: str, problem: str, context: str | None) -> MediaError:
    head = f"{context}: {path}" if context else path
    return MediaError(f"{head}: {problem}", path=path, problem=problem, context=context)


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float | None
    frames: int | None  # as declared by the container; None when it does not say


def _require_file(path: str | os.PathLike, kind: str, context: str | None = None) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _error(path, f"{kind} file not found", context)
    if not os.path.isfile(path):
        raise _error(path, f"{kind} path is not a regular file", context)
    if os.path.getsize(path) == 0:
        raise _error(path, f"{kind} file is empty (0 bytes)", context)
    return path


# ---------------------------------------------------------------------------------------------------------------
# blanks: the silence form of dropping a stream


def blank_audio_like(wave: np.ndarray) -> np.ndarray:
    """Silence of the same length (and shape) and dtype as ``wave``."""
    wave = np.asarray(wave)
    if wave.size == 0:
        raise ValueError("cannot blank an empty audio array")
    return np.zeros_like(wave)


def black_frames_like(frames: np.ndarray) -> np.ndarray:
    """Black uint8 frames of the same shape as ``frames`` (``(T, H, W, 3)`` or one ``(H, W, 3)`` frame)."""
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[-1] != 3 or frames.size == 0:
        raise ValueError(f"frames must be a non-empty (T, H, W, 3) or (H, W, 3) array, got shape {frames.shape}")
    return np.zeros(frames.shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# audio


def write_audio(path: str | os.PathLike, wave: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write ``wave`` (``(n,)`` or ``(n, channels)``) as a 32-bit float wav; returns the path."""
    import soundfile as sf

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0:
        raise ValueError(f"audio must be a non-empty (n,) or (n, channels) array, got shape {wave.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 1 if wave.ndim == 1 else wave.shape[1]
    with sf.SoundFile(path, "w", samplerate=int(sr), channels=channels, subtype="FLOAT", format="WAV") as f:
        try:
            sf._snd.sf_command(f._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
        except AttributeError:  # private soundfile API moved: the file is still valid, only not byte-stable
            pass
        f.write(wave)
    return path


@contextmanager
def probe_depth(full: bool) -> Iterator[None]:
    """Within the block, probes that are not given ``full`` check whole files (True) or only their start (False);
    this is how ``validate-data`` (full unless ``--quick``) reaches the probes that
    :func:`~verl_modality.data.validate.validate_rows`
    runs."""
    global FULL_PROBE
    before, FULL_PROBE = FULL_PROBE, bool(full)
    try:
        yield
    finally:
        FULL_PROBE = before


def probe_audio(path: str | os.PathLike, context: str | None = None, full: bool | None = None) -> AudioInfo:
    """Open an audio file and decode its samples (``full=False``: the first second only; None: :data:`FULL_PROBE`);
    returns its header facts or raises :class:`MediaError`."""
    import soundfile as sf

    full = FULL_PROBE if full is None else full
    path = _require_file(path, "audio", context)
    try:
        with sf.SoundFile(path) as f:
            info = AudioInfo(int(f.samplerate), int(f.channels), int(f.frames))
            wanted = info.frames if full else min(info.frames, info.sample_rate)
            read = 0
            while read < wanted:
                block = f.read(min(_PROBE_BLOCK, wanted - read), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
                if bad.size:
                    at = read + int(bad[0])
                    where = f"first at sample {at}, {at / info.sample_rate:.2f} s"
                    raise _error(path, f"audio holds non-finite samples ({where})", context)
                read += block.shape[0]
    except MediaError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        try:
            wave = _decode_audio_av(path, None, context)
        except MediaError:
            raise _error(path, f"unreadable audio ({exc})", context) from exc
        return AudioInfo(SAMPLE_RATE, 1, int(wave.shape[0]))
    if info.frames <= 0 or read == 0:
        raise _error(path, "audio file holds no samples", context)
    if full and read < info.frames:
        raise _error(path, f"audio is truncated: {read} of the {info.frames} samples its header declares", context)
    return info


def load_audio(path: str | os.PathLike, sr: int | None = SAMPLE_RATE, context: str | None = None) -> np.ndarray:
    """Decode an audio file to a 1-D float32 array, down-mixed to mono and resampled to ``sr`` (None: keep)."""
    import soundfile as sf

    path = _require_file(path, "audio", context)
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        try:
            return _decode_audio_av(path, sr, context)
        except MediaError:
            raise _error(path, f"unreadable audio ({exc})", context) from exc
    if data.shape[0] == 0:
        raise _error(path, "audio file holds no samples", context)
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise _error(path, "audio holds non-finite samples", context)
    if sr is not None and int(file_sr) != int(sr):
        wave = resample(wave, int(file_sr), int(sr))
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal to ``round(n * target_sr / orig_sr)`` samples.

    scipy's polyphase filter when scipy is installed, else libswresample through PyAV.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_sr} -> {target_sr}")
    try:
        from scipy.signal import resample_poly
    except ImportError:
        return _resample_av(wave, orig_sr, target_sr)
    g = math.gcd(orig_sr, target_sr)
    return resample_poly(wave, target_sr // g, orig_sr // g).astype(np.float32)


def _resample_av(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    import av

    n_out = int(round(len(wave) * target_sr / orig_sr))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_sr)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None, :]), format="flt", layout="mono")
    frame.sample_rate = orig_sr
    chunks = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    out = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if len(out) < n_out:
        out = np.pad(out, (0, n_out - len(out)))
    return np.ascontiguousarray(out[:n_out], dtype=np.float32)


def _decode_audio_av(path: str, sr: int | None, context: str | None = None) -> np.ndarray:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise _error(path, "no audio stream", context)
            stream = container.streams.audio[0]
            rate = sr or stream.codec_context.sample_rate or SAMPLE_RATE
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _error(path, f"unreadable audio ({exc})", context) from exc
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise _error(path, "audio stream holds no samples", context)
    wave = np.concatenate(chunks)
    if not np.all(np.isfinite(wave)):
        raise _error(path, "audio holds non-finite samples", context)
    return np.ascontiguousarray(wave, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# video


def available_video_codec() -> str:
    """The first encoder of :data:`VIDEO_CODECS` that this PyAV build has."""
    import av

    for name in VIDEO_CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - PyAV raises different types across versions for unknown codecs
            continue
        return name
    raise RuntimeError(f"PyAV has none of the video encoders {', '.join(VIDEO_CODECS)}")


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: float = 2, codec: str | None = None, bit_rate: int | None = None
) -> Path:
    """Encode ``frames`` (uint8 ``(T, H, W, 3)`` RGB, even H and W) as an mp4 at ``fps``; returns the path."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (T, H, W, 3) array, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p video needs even frame sizes, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec or available_video_codec(), rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def probe_video(path: str | os.PathLike, context: str | None = None, full: bool | None = None) -> VideoInfo:
    """Open a video and decode its frames (``full=False``: the first frame only; None: :data:`FULL_PROBE`);
    returns its header facts or raises :class:`MediaError`."""
    import av

    full = FULL_PROBE if full is None else full
    path = _require_file(path, "video", context)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise _error(path, "no video stream", context)
            stream = container.streams.video[0]
            frames = container.decode(stream)
            first = next(iter(frames), None)
            if first is None:
                raise _error(path, "video stream holds no frames", context)
            if full:
                for _ in frames:  # a corrupt packet further in raises here
                    pass
            rate = stream.average_rate
            return VideoInfo(first.width, first.height, float(rate) if rate else None, int(stream.frames) or None)
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _error(path, f"unreadable video ({exc})", context) from exc


class _FpsSampler:
    """Keeps a frame when at least ``1 / fps`` seconds passed since the previous kept one (never duplicates)."""

    def __init__(self, fps: float | None):
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.step = 1.0 / float(fps) if fps else None
        self.next_time: float | None = None

    def keep(self, t: float) -> bool:
        if self.step is None:
            return True
        if self.next_time is not None and t < self.next_time - _TIME_EPS:
            return False
        self.next_time = (self.next_time if self.next_time is not None else t) + self.step
        while self.next_time <= t + _TIME_EPS:
            self.next_time += self.step
        return True


def _count_sampled_frames(path: str, fps: float | None, context: str | None) -> int:
    """Number of frames the fps sampler keeps, from the packet timestamps alone (demuxing, no decoding)."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise _error(path, "no video stream", context)
        stream = container.streams.video[0]
        base = stream.time_base
        rate = float(stream.average_rate) if stream.average_rate else 1.0
        pts = [p.pts for p in container.demux(stream) if p.size]
    if any(p is None for p in pts) or base is None:
        times: Sequence[float] = [i / rate for i in range(len(pts))]
    else:
        times = sorted(float(p * base) for p in pts)
    sampler = _FpsSampler(fps)
    return sum(1 for t in times if sampler.keep(t))


def load_video(
    path: str | os.PathLike,
    fps: float | None = None,
    max_frames: int | None = None,
    size: int | tuple[int, int] | None = None,
    context: str | None = None,
) -> np.ndarray:
    """Decode a video to uint8 RGB frames ``(T, H, W, 3)``.

    ``fps`` keeps frames at most that often (frames are dropped, never duplicated); ``max_frames`` then picks that
    many frames evenly spread over the clip; ``size`` (an int for a square, or ``(H, W)``) resizes each frame. Only
    the frames returned are converted and held; decoding stops after the last of them.
    """
    import av

    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    path = _require_file(path, "video", context)
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if height < 1 or width < 1:
            raise ValueError(f"size must be positive, got {size}")
    sampler = _FpsSampler(fps)
    arrays = []
    try:
        wanted: set[int] | None = None
        if max_frames is not None:
            n_kept = _count_sampled_frames(path, fps, context)
            if n_kept > max_frames:
                wanted = set(np.linspace(0, n_kept - 1, max_frames).round().astype(int).tolist())
        last_wanted = max(wanted) if wanted else None
        with av.open(path) as container:
            if not container.streams.video:
                raise _error(path, "no video stream", context)
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else 1.0
            kept = -1
            for index, frame in enumerate(container.decode(stream)):
                if not sampler.keep(frame.time if frame.time is not None else index / rate):
                    continue
                kept += 1
                if wanted is not None and kept not in wanted:
                    if kept > last_wanted:
                        break
                    continue
                if size is not None:
                    frame = frame.reformat(width=width, height=height, format="rgb24")
                arrays.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(arrays) >= max_frames:
                    break
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _error(path, f"unreadable video ({exc})", context) from exc
    if not arrays:
        raise _error(path, "video stream holds no frames", context)
    return np.stack(arrays).astype(np.uint8, copy=False)
