"""A small synthetic multiple-choice set in the spirit of MAPLE-QA, with real media files.

Every clip has all three streams: a video of solid frames in one colour (V), an audio track of 1-4 short beeps at a
low or a high pitch (A), and a subtitle line naming an animal (S). A record's question asks about the streams of
its tag only, and the other streams hold random distractor content. In bi- and tri-modal questions each wrong
option differs from the truth in exactly one stream's fact where possible, so every tagged stream is needed to
single out the answer.

``families="balanced"`` (the learnable set of the CPU demo) also asks the pitch of the beeps, not only their number,
in every tag that holds A, so each of the four question families (colour, beep count, pitch, subtitle animal) has
enough rows for a tiny model to learn it; the default ``"classic"`` asks pitch only in some A-only questions.
"""

from __future__ import annotations

import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verl_modality import protocol, vocabulary
from verl_modality.data import media, prompts, schema, validate
from verl_modality.vocabulary import TAGS

DATA_SOURCE = "verl_modality/demo"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 50),
    "purple": (140, 60, 190),
}
PITCHES: dict[str, float] = {"low": 440.0, "high": 1760.0}
BEEP_COUNTS = (1, 2, 3, 4)
ANIMALS = ("cat", "dog", "horse", "owl", "fox", "frog", "goat", "duck")
SUBTITLE_TEMPLATES = (
    "Look, a {w} is sitting by the window.",
    "I am fairly sure that was a {w} outside.",
    "The next part of the story is about a {w}.",
    "Nobody expected a {w} to turn up today.",
)

FRAME_SIZE = 56  # two 28-pixel Qwen2.5-VL patches per side after merging
N_FRAMES = 4
FPS = 2
AUDIO_SECONDS = 1.5
BEEP_SECONDS = 0.15
GAP_SECONDS = 0.15
ONSET_SECONDS = 0.1
N_OPTIONS = 4

_FACT_OF_STREAM = {"V": "colour", "A": "beeps", "S": "animal"}
_FACET = {
    "V": "the colour of the video",
    "A": "the number of beeps in the audio",
    "A-pitch": "the pitch of the beeps in the audio",
    "S": "the animal named in the subtitles",
}
#: question families of :func:`make_demo_data`: ``classic`` asks pitch in about half of the A-only questions,
#: ``balanced`` in about half of every tag holding A (the learnable demo set)
FAMILIES = ("classic", "balanced")


@dataclass(frozen=True)
class MediaSize:
    """How long and how large each clip's media are. The default is the demo's tiny clips; :data:`REALISTIC` has
    seconds of 16 kHz audio and 2 fps video at a Qwen2.5-Omni processor's default resolution, so that audio and
    video tokens dominate a prompt as they do on MAPLE-bench."""

    audio_seconds: float = AUDIO_SECONDS
    n_frames: int = N_FRAMES
    frame_size: int = FRAME_SIZE  # pixels per side, even
    fps: float = FPS

    def __post_init__(self) -> None:
        if not (self.audio_seconds >= 1.0 and self.n_frames >= 1 and self.frame_size >= 2 and self.fps > 0):
            raise ValueError(f"{self}: expected audio_seconds >= 1, n_frames >= 1, frame_size >= 2 and fps > 0")
        if self.frame_size % 2:
            raise ValueError(f"frame_size={self.frame_size}: video frames need even sides")


#: 10 s of 16 kHz audio and 10 s of 2 fps video, 448 x 448 frames (256 video tokens per two frames on Qwen2.5-Omni)
REALISTIC = MediaSize(audio_seconds=10.0, n_frames=20, frame_size=448, fps=2)


# ---------------------------------------------------------------------------------------------------------------
# media content


def colour_frames(colour: str, n_frames: int = N_FRAMES, size: int = FRAME_SIZE) -> np.ndarray:
    """``(n_frames, size, size, 3)`` uint8 frames filled with the named colour."""
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    frames[...] = COLOURS[colour]
    return frames


def beep_wave(
    count: int, pitch: str, sr: int = media.SAMPLE_RATE, seconds: float = AUDIO_SECONDS, amplitude: float = 0.5
) -> np.ndarray:
    """``count`` sine beeps at the named pitch, with short fades against clicks, over ``seconds`` of silence."""
    n_beep = int(round(BEEP_SECONDS * sr))
    t = np.arange(n_beep) / sr
    envelope = np.ones(n_beep)
    ramp = min(n_beep // 4, int(0.005 * sr))
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    beep = amplitude * envelope * np.sin(2 * np.pi * PITCHES[pitch] * t)
    wave = np.zeros(int(round(seconds * sr)), dtype=np.float64)
    for k in range(count):
        start = int(round((ONSET_SECONDS + k * (BEEP_SECONDS + GAP_SECONDS)) * sr))
        if start + n_beep > len(wave):
            raise ValueError(f"{count} beeps do not fit into {seconds} s")
        wave[start : start + n_beep] += beep
    return wave.astype(np.float32)


def subtitle_for(animal: str, template: int = 0) -> str:
    return SUBTITLE_TEMPLATES[template % len(SUBTITLE_TEMPLATES)].format(w=animal)


# ---------------------------------------------------------------------------------------------------------------
# option wording: one phrase per stream fact, options join the phrases of the tag's streams


def fact_text(stream: str, value: Any) -> str:
    """Wording of one fact inside an option: ``"red video"``, ``"3 beeps"``, ``"fox"``, ``"high-pitched"``."""
    if stream == "V":
        return f"{value} video"
    if stream == "A":
        if isinstance(value, str):
            return f"{value}-pitched"
        return f"{value} beep" + ("" if value == 1 else "s")
    if stream == "S":
        return str(value)
    raise ValueError(f"unknown stream {stream!r}")


def option_text(facts: dict[str, Any]) -> str:
    """An option from per-stream facts (in canonical stream order)."""
    return "; ".join(fact_text(s, facts[s]) for s in "VAS" if s in facts)


def option_facts(option: str) -> list[str]:
    """The fact phrases an option is made of (inverse of :func:`option_text`)."""
    return option.split("; ")


def _domain(stream: str, a_kind: str) -> list[Any]:
    if stream == "V":
        return list(COLOURS)
    if stream == "A":
        return list(PITCHES) if a_kind == "pitch" else list(BEEP_COUNTS)
    return list(ANIMALS)


def _options(rng: np.random.Generator, tag: str, truth: dict[str, Any], a_kind: str) -> list[dict[str, Any]]:
    """The true fact set, one near miss per tagged stream (differs in that stream only), then random fillers."""
    domains = {s: _domain(s, a_kind) for s in tag}
    n_total = int(np.prod([len(d) for d in domains.values()]))
    n_options = min(N_OPTIONS, n_total)
    options = [dict(truth)]

    def pick_other(stream: str, current: Any) -> Any:
        others = [v for v in domains[stream] if v != current]
        return others[int(rng.integers(len(others)))]

    for stream in tag:
        if len(options) >= n_options:
            break
        options.append({**truth, stream: pick_other(stream, truth[stream])})
    while len(options) < n_options:
        candidate = {s: domains[s][int(rng.integers(len(domains[s])))] for s in tag}
        if candidate not in options:
            options.append(candidate)
    order = rng.permutation(len(options))
    return [options[i] for i in order]


def _question(tag: str, a_kind: str) -> str:
    if tag == "V":
        return "Which colour fills the frames of the video?"
    if tag == "A":
        if a_kind == "pitch":
            return "Are the beeps in the audio low-pitched or high-pitched?"
        return "How many beeps can be heard in the audio?"
    if tag == "S":
        return "Which animal is named in the subtitles?"
    aspects = [_FACET["A-pitch" if s == "A" and a_kind == "pitch" else s] for s in tag]
    joined = aspects[0] + " and " + aspects[1] if len(aspects) == 2 else ", ".join(aspects[:-1]) + " and " + aspects[-1]
    return f"Which option gives both {joined}?" if len(aspects) == 2 else f"Which option gives all of {joined}?"


# ---------------------------------------------------------------------------------------------------------------
# records


def _balanced_tags(n: int, rng: np.random.Generator) -> list[str]:
    per_tag = [n // len(TAGS) + (1 if i < n % len(TAGS) else 0) for i in range(len(TAGS))]
    tags = [tag for tag, k in zip(TAGS, per_tag, strict=True) for _ in range(k)]
    return [tags[i] for i in rng.permutation(len(tags))]


def _draw_clip(rng: np.random.Generator) -> tuple[str, int, str, str, str]:
    """A clip's facts: colour, beep count, pitch, animal and its subtitle (five draws, always in this order)."""
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    beeps = int(BEEP_COUNTS[int(rng.integers(len(BEEP_COUNTS)))])
    pitch = list(PITCHES)[int(rng.integers(len(PITCHES)))]
    animal = ANIMALS[int(rng.integers(len(ANIMALS)))]
    return colour, beeps, pitch, animal, subtitle_for(animal, int(rng.integers(len(SUBTITLE_TEMPLATES))))


def _write_clip(
    root: Path, split: str, rid: str, colour: str, beeps: int, pitch: str, size: MediaSize = MediaSize()
) -> tuple[str, str]:
    """Write the clip's video and audio; their paths relative to ``root``."""
    video_rel = f"media/{split}/{rid}.mp4"
    audio_rel = f"media/{split}/{rid}.wav"
    media.write_video(root / video_rel, colour_frames(colour, size.n_frames, size.frame_size), fps=size.fps)
    media.write_audio(root / audio_rel, beep_wave(beeps, pitch, seconds=size.audio_seconds))
    return video_rel, audio_rel


def question_family(tag: str, stream: str, question: str) -> str:
    """The family a question's fact about ``stream`` belongs to: ``colour``, ``count``, ``pitch`` or ``animal``."""
    if stream == "A":
        return "pitch" if "pitch" in question else "count"
    return {"V": "colour", "S": "animal"}[stream]


def _make_record(
    rng: np.random.Generator,
    root: Path,
    split: str,
    index: int,
    tag: str,
    families: str = "classic",
    size: MediaSize = MediaSize(),
) -> schema.Sample:
    colour, beeps, pitch, animal, subtitle = _draw_clip(rng)
    asks_pitch = tag == "A" if families == "classic" else "A" in tag
    a_kind = "pitch" if asks_pitch and rng.random() < 0.5 else "count"

    truth = {"V": colour, "A": pitch if a_kind == "pitch" else beeps, "S": animal}
    truth = {s: truth[s] for s in tag}
    options = _options(rng, tag, truth, a_kind)
    answer = vocabulary.letter(options.index(truth))

    rid = f"demo-{split}-{index:04d}"
    video_rel, audio_rel = _write_clip(root, split, rid, colour, beeps, pitch, size)
    return schema.Sample.create(
        id=rid,
        question=_question(tag, a_kind),
        choices=[option_text(o) for o in options],
        answer=answer,
        modality_tag=tag,
        videos=[video_rel],
        audios=[audio_rel],
        subtitle=subtitle,
        data_source=DATA_SOURCE,
        task="qa",
        index=index,
        split=split,
    )


def caption_facts(tag: str, colour: str, beeps: int, pitch: str, animal: str) -> dict[str, str]:
    """Uni-modal reference captions of a clip's streams (only the tag's)."""
    facts = {
        "V": f"The screen shows a plain {colour} picture.",
        "A": f"There {'is' if beeps == 1 else 'are'} {beeps} {pitch}-pitched beep{'' if beeps == 1 else 's'}.",
        "S": f"The subtitle talks about a {animal}.",
    }
    return {s: facts[s] for s in tag}


def _make_caption_record(
    rng: np.random.Generator, root: Path, split: str, index: int, tag: str, size: MediaSize = MediaSize()
) -> schema.Sample:
    colour, beeps, pitch, animal, subtitle = _draw_clip(rng)
    references = caption_facts(tag, colour, beeps, pitch, animal)
    rid = f"demo-{split}-{index:04d}"
    video_rel, audio_rel = _write_clip(root, split, rid, colour, beeps, pitch, size)
    return schema.Sample.create(
        id=rid,
        question=prompts.CAPTION_INSTRUCTION,
        choices=[],
        answer=" ".join(references.values()),
        modality_tag=tag,
        videos=[video_rel],
        audios=[audio_rel],
        subtitle=subtitle,
        data_source=DATA_SOURCE,
        task="caption",
        index=index,
        split=split,
        extra_info={protocol.INFO_REFERENCE_CAPTIONS: references},
    )


def _remove_stale_media(media_dir: Path, split: str, keep: set[str]) -> None:
    """Drop media of an earlier, larger run so the folder matches the parquet."""
    if not media_dir.is_dir():
        return
    for path in media_dir.glob(f"demo-{split}-*"):
        if path.suffix in (".mp4", ".wav") and path.name not in keep:
            path.unlink()


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a path that is not a folder, or a folder whose parquet files a run would replace (without
    ``overwrite``), before anything is written."""
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{parent} is a file, not a folder: cannot write the demo data to {out}")
    held = [name for name in ("train.parquet", "test.parquet") if (out / name).exists()]
    if held and not overwrite:
        raise FileExistsError(f"{out} already holds {' and '.join(held)}: pass overwrite=True to replace them")


def make_demo_data(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 56,
    n_test: int = 28,
    progress: bool = True,
    caption_every: int = 0,
    families: str = "classic",
    overwrite: bool = False,
    media_size: MediaSize = MediaSize(),
) -> dict[str, Any]:
    """Write ``train.parquet``, ``test.parquet`` and their media under ``out_dir/media/``; returns a summary.

    All seven tags appear in equal numbers when a split's size is a multiple of seven (otherwise the first tags
    get one more). The same seed gives identical rows and media. With ``caption_every=k > 0`` every k-th record
    (indices k-1, 2k-1, ...) is a caption row (``task="caption"``, the reference caption as its answer and
    per-stream ``extra_info["reference_captions"]``) instead of a QA row. ``families`` is ``classic`` or
    ``balanced`` (pitch questions in every tag that holds A; the learnable set of the CPU demo). A folder that
    already holds ``train.parquet`` or ``test.parquet`` is refused (``FileExistsError``) unless ``overwrite``:
    a run replaces the one and, with ``n_test=0``, deletes the other. ``media_size`` sets the clips' length and
    resolution (:class:`MediaSize`; :data:`REALISTIC` for benchmarks at MAPLE-bench-like prompt lengths).
    """
    if families not in FAMILIES:
        raise ValueError(f"families must be one of {', '.join(FAMILIES)}, got {families!r}")
    for name, value, least in (
        ("seed", seed, 0),
        ("n_train", n_train, 1),
        ("n_test", n_test, 0),
        ("caption_every", caption_every, 0),
    ):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name}={value!r}: expected an integer >= {least}")
    _check_out_dir(Path(out_dir), overwrite)
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "seed": seed,
        "data_source": DATA_SOURCE,
        "families": families,
        "splits": {},
    }
    with tqdm(total=n_train + n_test, desc="demo data", unit="record", disable=not progress) as bar:
        for split_no, (split, n) in enumerate((("train", n_train), ("test", n_test))):
            media_dir = out / "media" / split
            if n == 0:
                _remove_stale_media(media_dir, split, set())
                (out / f"{split}.parquet").unlink(missing_ok=True)
                continue
            rng = np.random.default_rng([seed, split_no])
            rows = []
            for index, tag in enumerate(_balanced_tags(n, rng)):
                caption = caption_every > 0 and index % caption_every == caption_every - 1
                if caption:
                    rows.append(_make_caption_record(rng, out, split, index, tag, media_size).to_row())
                else:
                    rows.append(_make_record(rng, out, split, index, tag, families, media_size).to_row())
                bar.update()
            written = {Path(f).name for r in rows for files in r[schema.MEDIA].values() for f in files}
            _remove_stale_media(media_dir, split, written)
            path = schema.write_rows(rows, out / f"{split}.parquet")
            validate.validate_file(path)
            summary["splits"][split] = {
                "path": str(path),
                "rows": len(rows),
                "tags": dict(
                    sorted(Counter(r["modality_tag"] for r in rows).items(), key=lambda kv: TAGS.index(kv[0]))
                ),
                "captions": sum(r[schema.TASK] == "caption" for r in rows),
                "questions_per_family": dict(
                    Counter(
                        question_family(r["modality_tag"], s, r[schema.QUESTION])
                        for r in rows
                        if r[schema.TASK] == "qa"
                        for s in r["modality_tag"]
                    )
                ),
                "media_dir": str(media_dir),
                "media_files": 2 * len(rows),
            }
    return summary
