"""Media I/O for tagged samples: 16 kHz mono float32 wav audio and short mp4 videos as uint8 frame arrays.

Audio goes through ``soundfile`` (with PyAV as a fallback for containers libsndfile does not read, such as the
audio track of an mp4); videos through PyAV. Every reader raises :class:`MediaError` with the path in the message
when a file is missing, corrupt or has no stream of the wanted kind.
"""

from __future__ import annotations

import math
import os
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


class MediaError(ValueError):
    """A media file is missing, corrupt, or lacks the expected stream."""


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


def _require_file(path: str | os.PathLike, kind: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"{path}: {kind} file not found")
    if not os.path.isfile(path):
        raise MediaError(f"{path}: {kind} path is not a regular file")
    return path


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


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Open an audio file and decode its first samples; returns its header facts or raises :class:`MediaError`."""
    import soundfile as sf

    path = _require_file(path, "audio")
    try:
        with sf.SoundFile(path) as f:
            info = AudioInfo(int(f.samplerate), int(f.channels), int(f.frames))
            head = f.read(min(info.frames, info.sample_rate), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        try:
            wave = _decode_audio_av(path, None)
        except MediaError:
            raise MediaError(f"{path}: unreadable audio ({exc})") from exc
        return AudioInfo(SAMPLE_RATE, 1, int(wave.shape[0]))
    if info.frames <= 0 or head.shape[0] == 0:
        raise MediaError(f"{path}: audio file holds no samples")
    if not np.all(np.isfinite(head)):
        raise MediaError(f"{path}: audio holds non-finite samples")
    return info


def load_audio(path: str | os.PathLike, sr: int | None = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file to a 1-D float32 array, down-mixed to mono and resampled to ``sr`` (None: keep)."""
    import soundfile as sf

    path = _require_file(path, "audio")
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        try:
            return _decode_audio_av(path, sr)
        except MediaError:
            raise MediaError(f"{path}: unreadable audio ({exc})") from exc
    if data.shape[0] == 0:
        raise MediaError(f"{path}: audio file holds no samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr is not None and int(file_sr) != int(sr):
        wave = resample(wave, int(file_sr), int(sr))
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal (scipy); linear interpolation when scipy is unavailable."""
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    try:
        from scipy.signal import resample_poly
    except ImportError:
        n_out = int(round(len(wave) * target_sr / orig_sr))
        t_out = np.arange(n_out) * (orig_sr / target_sr)
        return np.interp(t_out, np.arange(len(wave)), wave).astype(np.float32)
    g = math.gcd(orig_sr, target_sr)
    return resample_poly(wave, target_sr // g, orig_sr // g).astype(np.float32)


def _decode_audio_av(path: str, sr: int | None) -> np.ndarray:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
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
        raise MediaError(f"{path}: unreadable audio ({exc})") from exc
    if not chunks:
        raise MediaError(f"{path}: audio stream holds no samples")
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


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


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video and decode its first frame; returns its header facts or raises :class:`MediaError`."""
    import av

    path = _require_file(path, "video")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            first = next(iter(container.decode(stream)), None)
            if first is None:
                raise MediaError(f"{path}: video stream holds no frames")
            rate = stream.average_rate
            return VideoInfo(first.width, first.height, float(rate) if rate else None, int(stream.frames) or None)
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: unreadable video ({exc})") from exc


def load_video(
    path: str | os.PathLike,
    fps: float | None = None,
    max_frames: int | None = None,
    size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode a video to uint8 RGB frames ``(T, H, W, 3)``.

    ``fps`` keeps frames at most that often (frames are dropped, never duplicated); ``max_frames`` then picks that
    many frames evenly spread over the clip; ``size`` (an int for a square, or ``(H, W)``) resizes each frame.
    """
    import av

    path = _require_file(path, "video")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    step = 1.0 / float(fps) if fps else None
    arrays = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            next_time = None
            for index, frame in enumerate(container.decode(stream)):
                if step is not None:
                    t = frame.time if frame.time is not None else index / (rate or 1.0)
                    if next_time is not None and t < next_time - 1e-3:
                        continue
                    next_time = (next_time if next_time is not None else t) + step
                    while next_time <= t + 1e-3:
                        next_time += step
                if size is not None:
                    frame = frame.reformat(width=width, height=height, format="rgb24")
                arrays.append(frame.to_ndarray(format="rgb24"))
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: unreadable video ({exc})") from exc
    if not arrays:
        raise MediaError(f"{path}: video stream holds no frames")
    if max_frames is not None and len(arrays) > max_frames:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        keep = np.linspace(0, len(arrays) - 1, max_frames).round().astype(int)
        arrays = [arrays[i] for i in keep]
    return np.stack(arrays).astype(np.uint8, copy=False)
