"""Data preparation: decode audio + video from disk (and build the prompt) per sample; memory at N and 4N samples;
prompt tokens of ``exact`` (only the tag's streams) against ``full`` (every stream the record has).

    .venv/bin/python bench/bench_data_prep.py [--n 32] [--seconds 10] [--frames 8] [--size 224] [--quick]

1. Writes 4N samples into a temp dir with media.write_audio / media.write_video: a --seconds 16 kHz mono wav and
   a --frames mp4 (--size square, mpeg4) each. Decodes N of them the way the dataset does (load_audio to 16 kHz
   mono float32, load_video with max_frames) and renders the prompt with the tiny Qwen2.5-Omni processor
   (omni_inputs.encode_prompt: chat template, Whisper features, video patches); prints samples/s.
2. Runs the same loop over N and over 4N samples in fresh child processes and prints peak RSS (resource), its
   growth during the loop, and the tracemalloc peak: streamed (each sample dropped after use) against held (all
   decoded arrays kept, what a non-streaming pipeline does); streamed must stay flat from N to 4N.
3. Tokenises each sample of the demo set twice, as ``exact`` (Sample.with_available(tag)) and as ``full``
   (with_available(media_streams)), and prints the total token ratio; the tokens of the dropped streams (their media
   tokens, labels and subtitle text), counted inside the full prompts, must be the same share of the full total.

All numbers come from this one run. Files are read from disk through the page cache (they were just written).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from verl_modality.data import media, prompts, schema  # noqa: E402

_SPLIT = re.compile(r"(<video>|<audio>)")
# Paragraph breaks of a rendered prompt: blank lines, and the start of the user turn (so its first paragraph is one).
_PARAGRAPHS = re.compile(r"(\n\n|<\|im_start\|>user\n)")
_MEDIA_TOKENS = {"V": "<|VIDEO|>", "A": "<|AUDIO|>"}  # placeholders the processor expands


# ---------------------------------------------------------------------------------------------------------------
# inputs


def make_media(root: Path, n: int, seconds: float, n_frames: int, size: int, seed: int = 0) -> list[tuple[Path, Path]]:
    """``n`` (wav, mp4) pairs: a tone with noise, and a moving gradient (compresses like real footage, not noise)."""
    rng = np.random.default_rng(seed)
    sr = media.SAMPLE_RATE
    t = np.arange(int(seconds * sr)) / sr
    yy, xx = np.mgrid[0:size, 0:size]
    pairs = []
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t) + 0.05 * rng.standard_normal(len(t))
        frames = np.empty((n_frames, size, size, 3), np.uint8)
        for k in range(n_frames):
            frames[k, ..., 0] = (xx + 8 * k + i) % 256
            frames[k, ..., 1] = (yy + 4 * k) % 256
            frames[k, ..., 2] = (xx + yy + 16 * k) // 2 % 256
        wav = media.write_audio(root / f"{i:05d}.wav", wave.astype(np.float32))
        mp4 = media.write_video(root / f"{i:05d}.mp4", frames, fps=n_frames / seconds)
        pairs.append((wav, mp4))
    return pairs


def load_tiny_processor(model_dir: str | None, work: Path):
    """The tiny Qwen2.5-Omni processor: from ``model_dir``, or built without the model weights (tokenizer +
    processor of ``verl_modality.models.tiny``, saved and reloaded as a checkpoint's would be)."""
    from verl_modality.models import omni, tiny

    if model_dir is None:
        model_dir = str(work / "processor")
        if not Path(model_dir, "processor_config.json").exists() and not Path(model_dir, "tokenizer.json").exists():
            spec = tiny.builder("qwen2_5_omni")
            vocab = 1024 - len(spec.ADDED_TOKENS) - spec.RESERVED_TAIL
            spec.build_processor(tiny.build_tokenizer(vocab, spec)).save_pretrained(model_dir)
    return omni.load_processor(model_dir)


def structured(messages: list[dict]) -> list[dict]:
    """verl's RLHFDataset._build_messages: split ``<video>``/``<audio>`` placeholders into content items."""
    out = []
    for m in messages:
        parts = [p for p in _SPLIT.split(m["content"]) if p]
        content = [{"type": p[1:-1]} if p in ("<video>", "<audio>") else {"type": "text", "text": p} for p in parts]
        out.append({"role": m["role"], "content": content})
    return out


def bench_messages() -> list[dict]:
    prompt = prompts.build_prompt(
        "What happens in the clip?", ["a dog barks", "a bell rings", "a car passes", "nothing"], 1, 1, "Listen."
    )
    return structured(prompt)


# ---------------------------------------------------------------------------------------------------------------
# the per-sample loop


def prepare(pair, args, processor, messages):
    """Decode one sample (and render its prompt); returns (wave, frames, prompt or None, seconds per stage)."""
    from verl_modality.models.omni_inputs import encode_prompt

    wav, mp4 = pair
    t0 = time.perf_counter()
    wave = media.load_audio(wav)
    t1 = time.perf_counter()
    frames = media.load_video(mp4, max_frames=args.frames)
    t2 = time.perf_counter()
    enc = encode_prompt(processor, messages, videos=[frames], audios=[wave]) if processor is not None else None
    t3 = time.perf_counter()
    if wave.size == 0 or frames.shape[0] != args.frames:
        raise RuntimeError(f"decoded {wave.shape} audio and {frames.shape} frames from {wav}, {mp4}")
    return wave, frames, enc, (t1 - t0, t2 - t1, t3 - t2)


def run_child(args) -> None:
    """--child: loop over the first --count samples of --dir, report memory as one JSON line."""
    import tracemalloc

    work = Path(args.dir)
    pairs = [(work / "media" / f"{i:05d}.wav", work / "media" / f"{i:05d}.mp4") for i in range(args.count)]
    processor = None if args.no_prompt else load_tiny_processor(args.model_dir, work)
    messages = bench_messages()
    prepare(pairs[0], args, processor, messages)  # warm-up: lazy imports, first allocations
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    held = []
    tracemalloc.start()
    t0 = time.perf_counter()
    for pair in pairs:
        wave, frames, enc, _ = prepare(pair, args, processor, messages)
        if args.mode == "held":
            held.append((wave, frames, enc))
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {"peak_rss_mb": rss / 1024, "growth_mb": (rss - base) / 1024, "traced_mb": peak / 2**20, "s": seconds}
        )
    )


def child_memory(args, work: Path, count: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--dir", str(work), "--count", str(count), "--mode", mode]
    cmd += ["--frames", str(args.frames)] + (["--no-prompt"] if args.no_prompt else [])
    cmd += ["--model-dir", args.model_dir] if args.model_dir else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# exact vs full prompt tokens on the demo set


def dropped_tokens(full, exact, dropped: str, tokenizer) -> int:
    """Tokens of the ``dropped`` streams inside the full prompt, counted in the full prompt's own tokenisation.

    The exact prompt is the full one with whole paragraphs (``Audio: <audio>``, ``Subtitles: "..."``) removed;
    every token of the full rendered text that starts inside a removed paragraph (or one blank line next to it) is
    attributed to it, and each dropped media placeholder adds the tokens the processor expanded it to."""
    ids = full.input_ids.tolist()
    pieces = _PARAGRAPHS.split(full.text)  # paragraph, separator, paragraph, ...
    paragraphs, kept = pieces[::2], _PARAGRAPHS.split(exact.text)[::2]
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])[::2]
    ranges = []
    for op, i1, i2, _, _ in difflib.SequenceMatcher(None, paragraphs, kept, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if op != "delete":
            raise RuntimeError(f"the exact prompt is not the full prompt with paragraphs removed: {paragraphs[i1]!r}")
        for k in range(i1, i2):
            lo, hi = int(starts[k]), int(starts[k]) + len(paragraphs[k])
            after = pieces[2 * k + 1] if 2 * k + 1 < len(pieces) else ""
            ranges.append((lo, hi + 2) if after == "\n\n" else (lo - 2, hi))  # with one blank-line separator
    text = tokenizer(full.text, add_special_tokens=False, return_offsets_mapping=True)
    n = sum(1 for a, _ in text["offset_mapping"] if any(lo <= a < hi for lo, hi in ranges))
    expanded = len(ids) - len(text["input_ids"])  # tokens the processor added when expanding placeholders
    added = {s: ids.count(tokenizer.convert_tokens_to_ids(t)) - full.text.count(t) for s, t in _MEDIA_TOKENS.items()}
    if expanded != sum(added.values()):
        raise RuntimeError("the processor changed more than the media placeholders")
    return n + sum(added[s] for s in dropped if s in added)


def token_savings(processor, work: Path) -> dict:
    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.models.omni_inputs import encode_prompt

    demo = work / "demo"
    make_demo_data(demo, seed=0, progress=False)
    rows = schema.read_rows(demo / "train.parquet") + schema.read_rows(demo / "test.parquet")
    per_tag: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # samples, exact, full, dropped
    for row in rows:
        sample = schema.Sample.from_row(row)
        video = media.load_video(schema.resolve_path(sample.all_videos[0], demo)) if sample.all_videos else None
        audio = media.load_audio(schema.resolve_path(sample.all_audios[0], demo)) if sample.all_audios else None
        encoded = {}
        for name, shown in (("exact", sample.modality_tag), ("full", sample.media_streams)):
            view = sample.with_available(shown)
            encoded[name] = encode_prompt(
                processor,
                structured(view.prompt),
                videos=[video] if view.videos else None,
                audios=[audio] if view.audios else None,
            )
        dropped = "".join(s for s in sample.media_streams if s not in sample.modality_tag)
        counts = per_tag[sample.modality_tag]
        counts[0] += 1
        counts[1] += int(encoded["exact"].input_ids.numel())
        counts[2] += int(encoded["full"].input_ids.numel())
        counts[3] += dropped_tokens(encoded["full"], encoded["exact"], dropped, processor.tokenizer)
    return dict(per_tag)


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="samples timed; memory is measured at N and 4N")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio clip length")
    parser.add_argument("--frames", type=int, default=8, help="video frames per clip (all kept: max_frames)")
    parser.add_argument("--size", type=int, default=224, help="video frame side in pixels")
    parser.add_argument("--no-prompt", action="store_true", help="decode only, no processor")
    parser.add_argument("--no-tokens", action="store_true", help="skip the exact-vs-full token count")
    parser.add_argument("--model-dir", default=None, help="tiny model checkpoint to take the processor from")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny run: N=4, 2 s clips")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("streamed", "held"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        run_child(args)
        return
    if args.quick:
        args.n, args.seconds = 4, 2.0

    import torch

    from verl_modality.vocabulary import TAGS

    print(
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; samples: {args.seconds:g} s 16 kHz wav + "
        f"{args.frames}-frame {args.size}x{args.size} mp4 ({media.available_video_codec()}), N={args.n}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        pairs = make_media(work / "media", 4 * args.n, args.seconds, args.frames, args.size)
        mb = sum(p.stat().st_size for pair in pairs for p in pair) / 2**20
        print(f"wrote {len(pairs)} samples ({mb:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        processor = None if args.no_prompt else load_tiny_processor(args.model_dir, work)
        messages = bench_messages()

        # 1. throughput
        for pair in pairs[:2]:
            prepare(pair, args, processor, messages)
        stages = np.zeros(3)
        t0 = time.perf_counter()
        for pair in pairs[: args.n]:
            *_, enc, times = prepare(pair, args, processor, messages)
            stages += times
        wall = time.perf_counter() - t0
        per = stages / args.n * 1000
        decode_rate = args.n / stages[:2].sum()
        print()
        header = f"{'stage':>22} {'ms/sample':>10} {'samples/s':>10}"
        print(header)
        print("-" * len(header))
        print(f"{'load_audio':>22} {per[0]:>10.2f} {1000 / per[0]:>10.1f}")
        print(f"{'load_video':>22} {per[1]:>10.2f} {1000 / per[1]:>10.1f}")
        print(f"{'decode (audio+video)':>22} {per[0] + per[1]:>10.2f} {decode_rate:>10.1f}")
        if processor is not None:
            tokens = int(enc.input_ids.numel())
            print(f"{'encode_prompt':>22} {per[2]:>10.2f} {1000 / per[2]:>10.1f}   ({tokens} prompt tokens)")
            print(f"{'decode + prompt':>22} {per.sum():>10.2f} {args.n / wall:>10.1f}")
        verdict = "met" if decode_rate >= 20 else "NOT met"
        print(
            f"target >= 20 samples/s decoding {args.seconds:g} s clips with {args.frames} frames: {decode_rate:.1f}, {verdict}"
        )

        # 2. memory, fresh processes
        print()
        header = f"{'mode':>9} {'samples':>8} {'peak RSS MiB':>13} {'RSS growth MiB':>15} {'traced peak MiB':>16}"
        print(header)
        print("-" * len(header))
        mem = {}
        for mode in ("streamed", "held"):
            for count in (args.n, 4 * args.n):
                m = mem[(mode, count)] = child_memory(args, work, count, mode)
                print(f"{mode:>9} {count:>8} {m['peak_rss_mb']:>13.1f} {m['growth_mb']:>15.1f} {m['traced_mb']:>16.1f}")
        s1, s4 = mem[("streamed", args.n)], mem[("streamed", 4 * args.n)]
        h1, h4 = mem[("held", args.n)], mem[("held", 4 * args.n)]
        print(
            f"4N/N: streamed peak RSS x{s4['peak_rss_mb'] / s1['peak_rss_mb']:.2f}, traced peak "
            f"x{s4['traced_mb'] / s1['traced_mb']:.2f}; held peak RSS x{h4['peak_rss_mb'] / h1['peak_rss_mb']:.2f}, "
            f"traced peak x{h4['traced_mb'] / h1['traced_mb']:.2f}"
        )
        flat = s4["traced_mb"] <= 1.25 * s1["traced_mb"] and s4["growth_mb"] <= s1["growth_mb"] + 32
        print(
            f"target flat memory (streamed 4N traced peak <= 1.25x N, RSS growth within 32 MiB): {'met' if flat else 'NOT met'}"
        )

        # 3. exact vs full prompt tokens
        if processor is not None and not args.no_tokens:
            per_tag = token_savings(processor, work)
            print()
            header = (
                f"{'tag':>5} {'samples':>8} {'full tok':>9} {'exact tok':>10} {'exact/full':>11} {'dropped share':>14}"
            )
            print(header)
            print("-" * len(header))
            total = np.zeros(4, dtype=np.int64)
            for tag in [t for t in TAGS if t in per_tag]:
                n, exact, full, dropped = per_tag[tag]
                total += per_tag[tag]
                print(
                    f"{tag:>5} {n:>8} {full / n:>9.1f} {exact / n:>10.1f} {exact / full:>11.3f} {dropped / full:>14.3f}"
                )
            n, exact, full, dropped = total.tolist()
            print(
                f"{'all':>5} {n:>8} {full / n:>9.1f} {exact / n:>10.1f} {exact / full:>11.3f} {dropped / full:>14.3f}"
            )
            savings, share = 1 - exact / full, dropped / full
            agree = "agree" if full - exact == dropped else f"DIFFER by {full - exact - dropped} tokens"
            print(
                f"exact uses {exact / full:.3f}x the tokens of full: savings {savings:.1%}; dropped streams' share "
                f"of the full prompts {share:.1%} ({agree})"
            )


if __name__ == "__main__":
    main()
