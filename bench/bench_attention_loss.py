"""Cost of the MAPO-AT attention loss on the tiny Qwen2.5-Omni thinker (CPU): chunked vs materialised.

    .venv/bin/python bench/bench_attention_loss.py [--lengths 1024 2048 4096] [--repeats 3] [--quick]

Per sequence length L, one forward+backward (batch 1, sdpa attention, train mode) of
  (a) plain: the LM loss (next-token cross-entropy over the whole sequence);
  (b) chunked: (a) + 0.05 * L_attn, audio mass from q/k captured on the last three (here: both) decoder layers
      and :func:`audio_attention_mass` (chunked, recomputing backward);
  (c) naive: (a) + 0.05 * L_attn with :func:`naive_audio_attention_mass` (materialises the probabilities).
Input: random text token ids; positions 16 .. 16 + --audio-tokens are *treated* as the audio keys (an explicit key
mask; no audio features are built, so the audio encoder is not run: it costs the same in all three modes); the last
L/2 positions are the response (queries), all of them content tokens, random dh, a failed sequence with |A| = 1.

Memory: peak RSS during the step above the RSS just before it (VmHWM reset through /proc/self/clear_refs; glibc's
mmap threshold is pinned to 64 KiB in that worker so freed tensors leave RSS at once). Time: a second worker with the
default allocator (the pinned threshold makes every step pay page faults). In each worker (fresh per length) the
three modes alternate, after one warm-up step each, so the ratios come from the same process. Prints the best time of
the repeats (other load on a shared machine only ever adds time) and the median
peak memory per mode, the ratios to (a), and the growth of the extra
memory of (b) and (c) over (a) from the shortest to the longest length (linear: ~4x for 1k -> 4k; quadratic ~16x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("plain", "chunked", "naive")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(model_dir: str, length: int, audio_tokens: int, repeats: int, query_chunk: int, threads: int) -> dict:
    import gc

    import torch

    from verl_modality.algorithms.attention_loss import attention_loss
    from verl_modality.algorithms.audio_mass import reduce_heads_layers
    from verl_modality.models.attention_capture import AudioAttentionCapture
    from verl_modality.models.omni import load_thinker

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_thinker(model_dir, attn_implementation="sdpa").train()
    n_text = 256  # plain BPE ids, well below the added tokens
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, n_text, (1, length), generator=g)
    audio = torch.zeros((1, length), dtype=torch.bool)
    audio[0, 16 : 16 + audio_tokens] = True
    r = length // 2
    resp = torch.ones((1, r))
    dh = torch.randn((1, r), generator=g)
    reward, adv = torch.zeros(1), torch.ones(1)

    def step(mode: str) -> None:
        model.zero_grad(set_to_none=True)
        if mode == "plain":
            logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
        else:
            with AudioAttentionCapture(model) as cap:
                logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
            masses = cap.audio_mass(audio, response_length=r, query_chunk=query_chunk, naive=mode == "naive")
            l_attn, _ = attention_loss(reduce_heads_layers(masses), resp, resp.bool(), dh, reward, adv)
            loss = loss + 0.05 * l_attn
            cap.clear()
        loss.backward()
        model.zero_grad(set_to_none=True)

    for mode in MODES:
        step(mode)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in MODES}
    mems: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(repeats):
        for mode in MODES:
            gc.collect()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _rss_kib("VmRSS")
            t0 = time.perf_counter()
            step(mode)
            times[mode].append(time.perf_counter() - t0)
            mems[mode].append((_rss_kib("VmHWM") - base) / 1024.0)
    # time: best of the repeats (least disturbed by other load on the machine); memory: median
    return {m: {"s": min(times[m]), "mib": statistics.median(mems[m])} for m in MODES}


def run_worker(args: argparse.Namespace, model_dir: str, length: int, for_memory: bool) -> dict:
    env = dict(os.environ)
    if for_memory:  # every tensor gets its own mapping, returned on free: RSS follows the live tensors
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_ARENA_MAX="1")
    cmd = [sys.executable, __file__, "--worker", model_dir, str(length)]
    cmd += ["--audio-tokens", str(args.audio_tokens), "--repeats", str(args.repeats)]
    cmd += ["--query-chunk", str(args.query_chunk), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--audio-tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--query-chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="lengths 256 512, one repeat, 64 audio tokens")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL_DIR", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        res = worker(
            args.worker[0], int(args.worker[1]), args.audio_tokens, args.repeats, args.query_chunk, args.threads
        )
        print(json.dumps(res))
        return
    if args.quick:
        args.lengths, args.repeats, args.audio_tokens = [256, 512], 1, 64

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from verl_modality.models.tiny import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench_attn_") as tmp:
        model_dir = str(make_tiny_model(Path(tmp) / "model", seed=0))
        print(
            f"tiny Qwen2.5-Omni thinker (2 layers, 4 heads / 2 kv heads, head dim 16), CPU, {args.threads} threads, "
            f"{args.audio_tokens} audio keys, response = last L/2 positions, query chunk {args.query_chunk}, "
            f"time: best of {args.repeats}, memory: median"
        )
        header = (
            f"{'L':>6} {'mode':>8} {'fwd+bwd s':>10} {'x plain':>8} {'peak MiB':>9} {'x plain':>8} {'extra MiB':>10}"
        )
        print(header)
        print("-" * len(header))
        results = {}
        for length in args.lengths:
            mem = run_worker(args, model_dir, length, for_memory=True)
            res = run_worker(args, model_dir, length, for_memory=False)
            for mode in MODES:
                res[mode]["mib"] = mem[mode]["mib"]
            results[length] = res
            plain = res["plain"]
            for mode in MODES:
                r = res[mode]
                extra = r["mib"] - plain["mib"]
                print(
                    f"{length:>6} {mode:>8} {r['s']:>10.3f} {r['s'] / plain['s']:>8.2f} {r['mib']:>9.1f} "
                    f"{r['mib'] / plain['mib']:>8.2f} {extra:>10.1f}"
                )
    lo, hi = min(results), max(results)
    print(f"extra peak memory over plain, L={lo} -> L={hi} ({hi / lo:.0f}x tokens):")
    for mode in ("chunked", "naive"):
        e_lo = results[lo][mode]["mib"] - results[lo]["plain"]["mib"]
        e_hi = results[hi][mode]["mib"] - results[hi]["plain"]["mib"]
        growth = e_hi / e_lo if e_lo > 0 else float("nan")
        print(f"  {mode:>8}: {e_lo:8.1f} MiB -> {e_hi:8.1f} MiB  ({growth:.1f}x)")


if __name__ == "__main__":
    main()
