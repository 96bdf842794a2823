"""Media writers and readers: round trips that recover the content, resampling, and errors on bad files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from verl_modality.data import media
from verl_modality.data.synthetic import COLOURS, beep_wave, colour_frames


def _sine(freq: float, sr: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------- audio


def test_wav_round_trip_keeps_samples_and_frequency(tmp_path, decode):
    wave = _sine(1000.0, 16000)
    path = media.write_audio(tmp_path / "sub" / "tone.wav", wave)
    back = media.load_audio(path)
    assert back.dtype == np.float32 and back.ndim == 1
    np.testing.assert_array_equal(back, wave)  # float wav is lossless
    assert abs(decode.frequency(back, 16000) - 1000.0) <= 1.0
    info = media.probe_audio(path)
    assert (info.sample_rate, info.channels, info.frames) == (16000, 1, 16000)


def test_wav_writes_are_byte_identical(tmp_path):
    wave = _sine(440.0, 16000, 0.3)
    first = _md5(media.write_audio(tmp_path / "a.wav", wave))
    second = _md5(media.write_audio(tmp_path / "b.wav", wave))
    assert first == second


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("pitch", ["low", "high"])
def test_beep_count_and_pitch_survive_the_file(tmp_path, decode, count, pitch):
    path = media.write_audio(tmp_path / "beeps.wav", beep_wave(count, pitch))
    back = media.load_audio(path)
    assert decode.bursts(back, 16000) == count
    assert abs(decode.frequency(back, 16000) - {"low": 440.0, "high": 1760.0}[pitch]) < 10.0


def test_resample_8k_mono_to_16k(tmp_path, decode):
    path = media.write_audio(tmp_path / "8k.wav", _sine(500.0, 8000), sr=8000)
    back = media.load_audio(path, sr=16000)
    assert back.shape == (16000,)
    assert abs(decode.frequency(back, 16000) - 500.0) <= 1.0
    assert abs(float(np.abs(back[2000:-2000]).max()) - 0.5) < 0.02  # amplitude kept through the filter


def test_resample_44k1_stereo_is_downmixed_to_16k_mono(tmp_path, decode):
    left = _sine(700.0, 44100)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # right channel silent: the mean halves the amplitude
    path = media.write_audio(tmp_path / "stereo.wav", stereo, sr=44100)
    assert media.probe_audio(path).channels == 2
    back = media.load_audio(path)
    assert back.ndim == 1 and back.shape[0] == 16000
    assert abs(decode.frequency(back, 16000) - 700.0) <= 1.0
    assert abs(float(np.abs(back[2000:-2000]).max()) - 0.25) < 0.02


def test_sr_none_keeps_the_file_rate(tmp_path):
    path = media.write_audio(tmp_path / "22k.wav", _sine(300.0, 22050, 0.5), sr=22050)
    assert media.load_audio(path, sr=None).shape == (11025,)


def test_audio_track_of_an_mp4_falls_back_to_pyav(tmp_path, decode):
    import av

    sr, wave = 16000, _sine(880.0, 16000)
    path = tmp_path / "track.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sr, layout="mono")
        for start in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    back = media.load_audio(path)
    assert abs(back.shape[0] - sr) < 2048  # codec priming/padding
    assert abs(decode.frequency(back, sr) - 880.0) <= 2.0


# --------------------------------------------------------------------------------------------------------- video


def test_video_round_trip_recovers_colours(tmp_path, decode):
    path = media.write_video(tmp_path / "clip.mp4", colour_frames("yellow"), fps=2)
    frames = media.load_video(path)
    assert frames.shape == (4, 56, 56, 3) and frames.dtype == np.uint8
    assert decode.colour(frames, COLOURS) == "yellow"
    assert np.abs(frames.reshape(-1, 3).mean(0) - np.array(COLOURS["yellow"])).max() < 8
    info = media.probe_video(path)
    assert (info.width, info.height, info.fps) == (56, 56, 2.0)


def test_video_writes_are_byte_identical(tmp_path):
    frames = colour_frames("blue")
    assert _md5(media.write_video(tmp_path / "a.mp4", frames)) == _md5(media.write_video(tmp_path / "b.mp4", frames))


@pytest.fixture
def four_colour_clip(tmp_path):
    names = ["red", "green", "blue", "yellow"]
    frames = np.concatenate([colour_frames(n, n_frames=1, size=64) for n in names])
    return names, media.write_video(tmp_path / "four.mp4", frames, fps=2)


def test_load_video_fps_drops_frames(four_colour_clip, decode):
    names, path = four_colour_clip
    frames = media.load_video(path, fps=1)
    assert [decode.colour(f, COLOURS) for f in frames] == ["red", "blue"]
    assert len(media.load_video(path, fps=2)) == 4
    assert len(media.load_video(path, fps=10)) == 4  # never duplicated


def test_load_video_max_frames_and_size(four_colour_clip, decode):
    names, path = four_colour_clip
    frames = media.load_video(path, max_frames=2)
    assert [decode.colour(f, COLOURS) for f in frames] == ["red", "yellow"]
    assert media.load_video(path, size=28).shape == (4, 28, 28, 3)
    resized = media.load_video(path, size=(32, 48), max_frames=3)
    assert resized.shape == (3, 32, 48, 3)
    assert [decode.colour(f, COLOURS) for f in resized] == ["red", "blue", "yellow"]  # indices 0, 2, 3


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="even"):
        media.write_video(tmp_path / "odd.mp4", np.zeros((2, 55, 56, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        media.write_video(tmp_path / "f.mp4", np.zeros((2, 56, 56, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        media.write_video(tmp_path / "g.mp4", np.zeros((56, 56, 3), np.uint8))


# --------------------------------------------------------------------------------------------------------- errors


@pytest.fixture
def garbage(tmp_path):
    rng = np.random.default_rng(0)

    def make(name: str):
        path = tmp_path / name
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return path

    return make


@pytest.mark.parametrize("reader", [media.load_audio, media.probe_audio])
def test_corrupt_wav_raises_media_error_naming_the_path(garbage, reader):
    path = garbage("broken.wav")
    with pytest.raises(media.MediaError, match="broken.wav") as info:
        reader(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("reader", [media.load_video, media.probe_video])
def test_corrupt_mp4_raises_media_error_naming_the_path(garbage, reader):
    path = garbage("broken.mp4")
    with pytest.raises(media.MediaError) as info:
        reader(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("reader", [media.load_audio, media.probe_audio, media.load_video, media.probe_video])
def test_missing_file_raises_media_error_naming_the_path(tmp_path, reader):
    path = tmp_path / "nowhere" / "missing.bin"
    with pytest.raises(media.MediaError, match="not found") as info:
        reader(path)
    assert str(path) in str(info.value)


def test_audio_file_is_not_a_video(tmp_path):
    path = media.write_audio(tmp_path / "tone.wav", _sine(440.0, 16000, 0.2))
    with pytest.raises(media.MediaError, match="no video stream"):
        media.load_video(path)
    with pytest.raises(media.MediaError, match="no video stream"):
        media.probe_video(path)


def test_video_without_audio_track_is_not_audio(tmp_path):
    path = media.write_video(tmp_path / "silent.mp4", colour_frames("red"))
    with pytest.raises(media.MediaError, match="silent.mp4"):
        media.load_audio(path)


# --------------------------------------------------------------------------------------------------------- context


CONTEXT = "row 12 (id mmau/3)"


@pytest.mark.parametrize("reader", [media.load_audio, media.probe_audio, media.load_video, media.probe_video])
def test_missing_file_error_names_the_callers_row(tmp_path, reader):
    path = tmp_path / "missing.bin"
    with pytest.raises(media.MediaError) as info:
        reader(path, context=CONTEXT)
    assert str(info.value) == f"{CONTEXT}: {path}: {'audio' if 'audio' in reader.__name__ else 'video'} file not found"
    assert (info.value.path, info.value.context) == (str(path), CONTEXT)
    assert info.value.problem.endswith("file not found")


@pytest.mark.parametrize(
    ("name", "reader"),
    [
        ("bad.wav", media.load_audio),
        ("bad.wav", media.probe_audio),
        ("bad.mp4", media.load_video),
        ("bad.mp4", media.probe_video),
    ],
)
def test_corrupt_file_error_names_the_callers_row(garbage, name, reader):
    path = garbage(name)
    with pytest.raises(media.MediaError) as info:
        reader(path, context=CONTEXT)
    assert str(info.value).startswith(f"{CONTEXT}: {path}: unreadable ")


def test_truncated_mp4_raises_media_error(tmp_path):
    path = media.write_video(tmp_path / "clip.mp4", colour_frames("red", n_frames=8))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:200])
    for reader in (media.load_video, media.probe_video):
        with pytest.raises(media.MediaError, match="cut.mp4"):
            reader(cut)


# --------------------------------------------------------------------------------------------------------- empty


@pytest.mark.parametrize("reader", [media.load_audio, media.probe_audio, media.load_video, media.probe_video])
def test_zero_byte_file_raises_media_error(tmp_path, reader):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(media.MediaError, match="empty") as info:
        reader(path, context=CONTEXT)
    assert str(path) in str(info.value) and CONTEXT in str(info.value)


@pytest.mark.parametrize("reader", [media.load_audio, media.probe_audio])
def test_zero_length_wav_raises_instead_of_returning_nothing(tmp_path, reader):
    import soundfile as sf

    path = tmp_path / "zero.wav"
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="FLOAT", format="WAV"):
        pass  # a valid header with no samples
    assert path.stat().st_size > 0
    with pytest.raises(media.MediaError, match="no samples") as info:
        reader(path, context=CONTEXT)
    assert str(path) in str(info.value) and CONTEXT in str(info.value)


@pytest.mark.parametrize("reader", [media.load_audio, media.probe_audio])
def test_non_finite_audio_raises(tmp_path, reader):
    wave = _sine(440.0, 16000, 0.2)
    wave[100] = np.nan
    path = media.write_audio(tmp_path / "nan.wav", wave)
    with pytest.raises(media.MediaError, match="non-finite"):
        reader(path)


def _late_nan_wav(tmp_path, seconds: float = 3.0, bad_from: float = 2.5):
    wave = _sine(440.0, 16000, seconds)
    wave[int(bad_from * 16000) :] = np.nan
    return media.write_audio(tmp_path / "late.wav", wave)


def test_full_audio_probe_reads_past_the_first_second(tmp_path):
    path = _late_nan_wav(tmp_path)
    with pytest.raises(media.MediaError, match=r"non-finite samples \(first at sample 40000, 2\.50 s\)") as info:
        media.probe_audio(path, context=CONTEXT, full=True)
    assert str(info.value).startswith(f"{CONTEXT}: {path}: ")
    assert media.probe_audio(path).frames == 48000  # the default, quick probe reads the first second only


def test_probe_depth_sets_the_default_for_a_block_only(tmp_path):
    path = _late_nan_wav(tmp_path)
    with media.probe_depth(full=True):
        with pytest.raises(media.MediaError, match="non-finite"):
            media.probe_audio(path)
        assert media.probe_audio(path, full=False).frames == 48000  # an explicit depth wins
    with pytest.raises(RuntimeError), media.probe_depth(full=True):
        raise RuntimeError("the block failed")
    assert media.FULL_PROBE is False
    assert media.probe_audio(path).frames == 48000


def test_full_video_probe_decodes_every_frame(tmp_path):
    import av

    frames = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)  # noise: one packet each
    path = media.write_video(tmp_path / "noise.mp4", frames, fps=4)
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = packets[6]
    data[pos : pos + size] = b"\xff" * size  # a corrupt packet in the middle of the clip
    bad = tmp_path / "bad_middle.mp4"
    bad.write_bytes(bytes(data))
    assert media.probe_video(bad).frames == 12  # the default, quick probe: the first frame decodes
    with pytest.raises(media.MediaError, match="bad_middle.mp4: unreadable video"):
        media.probe_video(bad, full=True)
    assert media.probe_video(path, full=True).frames == 12


# --------------------------------------------------------------------------------------------------------- resampling


def test_stereo_44k1_ten_seconds_gives_160000_mono_samples(tmp_path):
    n = 441000
    stereo = np.stack([_sine(300.0, 44100, 10.0), _sine(300.0, 44100, 10.0)], axis=1)
    assert stereo.shape == (n, 2)
    back = media.load_audio(media.write_audio(tmp_path / "st.wav", stereo, sr=44100))
    assert back.shape == (160000,) and back.dtype == np.float32


@pytest.mark.parametrize(("orig", "n"), [(44100, 44100), (8000, 8000), (22050, 11025), (48000, 4801)])
def test_pyav_resampler_fallback_matches_length_and_pitch(decode, orig, n):
    wave = _sine(500.0, orig, n / orig)
    out = media._resample_av(wave, orig, 16000)
    assert out.dtype == np.float32 and out.shape == (int(round(n * 16000 / orig)),)
    if n >= orig:
        assert abs(decode.frequency(out, 16000) - 500.0) <= 2.0
        np.testing.assert_allclose(out[2000:-2000], media.resample(wave, orig, 16000)[2000:-2000], atol=0.02)


def test_resample_rejects_bad_rates():
    with pytest.raises(ValueError, match="positive"):
        media.resample(np.zeros(10, np.float32), 0, 16000)


# --------------------------------------------------------------------------------------------------------- blanks


def test_blank_audio_like_keeps_length_and_dtype():
    wave = _sine(440.0, 16000, 0.5)
    blank = media.blank_audio_like(wave)
    assert blank.shape == wave.shape and blank.dtype == np.float32 and not blank.any()
    assert blank is not wave and wave.any()  # the input is untouched
    assert media.blank_audio_like(wave.astype(np.float64)).dtype == np.float64
    with pytest.raises(ValueError, match="empty"):
        media.blank_audio_like(np.zeros(0, np.float32))


def test_black_frames_like_keeps_shape_as_uint8():
    frames = colour_frames("green", n_frames=3, size=28)
    black = media.black_frames_like(frames)
    assert black.shape == frames.shape and black.dtype == np.uint8 and not black.any()
    assert media.black_frames_like(frames.astype(np.float32)).dtype == np.uint8
    assert media.black_frames_like(frames[0]).shape == (28, 28, 3)
    with pytest.raises(ValueError, match="shape"):
        media.black_frames_like(np.zeros((4, 28, 28), np.uint8))


# --------------------------------------------------------------------------------------------------------- streaming


@pytest.fixture
def ramp_clip(tmp_path):
    """60 flat grey frames at 10 fps whose level encodes the frame index (4 * i)."""
    frames = np.repeat((4 * np.arange(60, dtype=np.uint8))[:, None, None, None], 64, axis=1)
    frames = np.ascontiguousarray(np.broadcast_to(frames[:, :, :1, :], (60, 64, 64, 1)).repeat(3, axis=3))
    return media.write_video(tmp_path / "ramp.mp4", frames, fps=10, bit_rate=4_000_000)


def _indices(frames: np.ndarray) -> list[int]:
    return [int(round(float(f.mean()) / 4)) for f in frames]


def test_load_video_max_frames_picks_evenly_spread_frames(ramp_clip):
    assert _indices(media.load_video(ramp_clip)) == list(range(60))
    assert _indices(media.load_video(ramp_clip, max_frames=5)) == np.linspace(0, 59, 5).round().astype(int).tolist()
    assert _indices(media.load_video(ramp_clip, max_frames=1)) == [0]
    assert len(media.load_video(ramp_clip, max_frames=100)) == 60
    with pytest.raises(ValueError, match="max_frames"):
        media.load_video(ramp_clip, max_frames=0)


def test_load_video_fps_then_max_frames_then_size(ramp_clip):
    at_5 = media.load_video(ramp_clip, fps=5)
    assert _indices(at_5) == list(range(0, 60, 2))  # 10 fps clip sampled at 5 fps
    picked = media.load_video(ramp_clip, fps=5, max_frames=4, size=(32, 48))
    assert picked.shape == (4, 32, 48, 3) and picked.dtype == np.uint8
    assert _indices(picked) == [2 * i for i in np.linspace(0, 29, 4).round().astype(int)]  # 0, 20, 38, 58
    assert media.load_video(ramp_clip, fps=2.5, max_frames=8).shape == (8, 64, 64, 3)
    with pytest.raises(ValueError, match="fps"):
        media.load_video(ramp_clip, fps=0)


def test_load_video_with_max_frames_holds_only_the_kept_frames(tmp_path):
    import tracemalloc

    frames = np.zeros((90, 240, 320, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(90, dtype=np.uint8)[:, None, None]
    path = media.write_video(tmp_path / "long.mp4", frames, fps=30)
    frame_bytes = 240 * 320 * 3
    peaks = {}
    for max_frames in (None, 4):
        tracemalloc.start()
        out = media.load_video(path, max_frames=max_frames)
        peaks[max_frames] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del out
    assert peaks[None] > 80 * frame_bytes  # holding every frame
    assert peaks[4] < 12 * frame_bytes  # the 4 kept frames, their stack, and a few in flight
