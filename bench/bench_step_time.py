"""MAPLE's Table 1 rows on the CPU at realistic prompt length: step time of MUPO, MAPO, MAPO with early filtering and
MAPO's full recipe, side by side in one run per seed, from the same checkpoint, prompts and reward.

    .venv/bin/python bench/bench_step_time.py [--seeds 0 1] [--steps 5] [--batch 4] [--n 4]

Media at realistic length (:data:`verl_modality.data.synthetic.REALISTIC`: 10 s of 16 kHz audio, 10 s of 2 fps video at
448 x 448, with the tiny model's processor set to Qwen2.5-Omni's default video pixel range), so that audio and video
tokens dominate the prompt as on MAPLE-bench. Each run is verl's ``main_ppo`` with the ``hf`` rollout:

* **MUPO**: ``examples/mupo_cpu_demo.yaml`` (every stream shown, verl's GRPO, mixed batches);
* **MAPO**: ``examples/mapo_full_cpu_demo.yaml`` without filtering and with mixed batches (exact streams, stratified
  advantages);
* **MAPO + early filtering**: the same with ``algorithm.zero_variance.drop=true`` (zero-variance groups dropped,
  never regenerated);
* **full recipe**: ``examples/mapo_full_cpu_demo.yaml`` as it is (early filtering, the static curriculum,
  sample-level loss, asymmetric clipping).

All runs start from the same tiny random-weight checkpoint: a warm start at this prompt length is beyond the CPU's
budget. The reward is therefore synthetic (``bench/step_time_reward.py``): a quarter of the prompts is always right,
a quarter always wrong (their groups have zero variance, as saturated and hopeless prompts do), the rest a coin per
response. Reported per run: the mean ``timing_s/step`` over steps 2.. (step 1 holds one-off warm-up), verl's phase
timings (generation, old log-prob, actor update), prompt tokens per response, samples per update; then the ratios
MAPLE reports (MUPO over each row). verl's ``timing_s/gen`` includes the agent loop's 2 s replay-buffer poll.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

PHASES = ("timing_s/gen", "timing_s/old_log_prob", "timing_s/update_actor")
#: Qwen2.5-Omni's default video pixel range (its processor's min_pixels / max_pixels for video)
VIDEO_PIXELS = (128 * 28 * 28, 768 * 28 * 28)
#: row -> (recipe, overrides)
ROWS = {
    "MUPO": ("mupo_cpu_demo", []),
    "MAPO": ("mapo_full_cpu_demo", ["algorithm.zero_variance.drop=false", "data.curriculum.order=mixed"]),
    "MAPO + early filtering": (
        "mapo_full_cpu_demo",
        ["algorithm.zero_variance.drop=true", "data.curriculum.order=mixed"],
    ),
    "full recipe": ("mapo_full_cpu_demo", []),
}
#: MAPLE Table 1, seconds per step on H100s
MAPLE = {"MUPO": 523.28, "MAPO": 389.11, "MAPO + early filtering": 197.02, "full recipe": 164.72}


def realistic_processor(model: Path) -> None:
    """Give the tiny checkpoint's processor Qwen2.5-Omni's default video pixel range (the tiny one caps frames at
    112 x 112, so that the tests stay fast)."""
    low, high = VIDEO_PIXELS
    proc = json.loads((model / "processor_config.json").read_text())
    for section in proc.values():
        if isinstance(section, dict) and "size" in section and "longest_edge" in section["size"]:
            section["size"] = {"longest_edge": high, "shortest_edge": low}
    (model / "processor_config.json").write_text(json.dumps(proc, indent=2))
    tok = json.loads((model / "tokenizer_config.json").read_text())
    tok.update(min_pixels=low, max_pixels=high)
    (model / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))


def _run(row: str, seed: int, root: Path, model: Path, data: Path, args: argparse.Namespace) -> dict[str, float]:
    from verl_modality.trainer.demo import samples_per_update
    from verl_modality.trainer.launch import run_main_ppo

    recipe, extra = ROWS[row]
    work = root / f"seed{seed}" / row.replace(" ", "_").replace("+", "and")
    overrides = [
        "cpu_rollout=hf",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"trainer.default_local_dir={work / 'ckpt'}",
        f"data.train_batch_size={args.batch}",
        f"data.seed={seed}",
        f"++data.curriculum.seed={seed}",  # the plugin's sampler draws the batches (mixed or static order)
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.n}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={args.n}",
        f"actor_rollout_ref.rollout.n={args.n}",
        "data.max_prompt_length=8192",
        f"trainer.total_training_steps={args.steps}",
        f"trainer.total_epochs={args.steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"reward.custom_reward_function.path={Path(__file__).with_name('step_time_reward.py')}",
        *extra,
    ]
    result = run_main_ppo(recipe, work, overrides, timeout=args.timeout, env={"STEP_TIME_REWARD_SALT": str(seed)})
    if result.returncode != 0:
        raise SystemExit(f"{row} (seed {seed}) failed (rc {result.returncode}):\n{result.log_tail(60)}")
    steps = result.steps()
    later = [steps[s] for s in sorted(steps) if s > 1] or [steps[1]]
    trained = [m for m in later if not m.get("zero_variance/skipped_step")]
    out = {
        "step_s": statistics.mean(m["timing_s/step"] for m in later),
        "prompt_tokens": statistics.mean(m["prompt_length/mean"] for m in trained) if trained else float("nan"),
        "samples_per_update": statistics.mean(samples_per_update(m) for m in trained) if trained else 0.0,
        "skipped_steps": float(sum(m.get("zero_variance/skipped_step", 0.0) for m in later)),
    }
    for phase in PHASES:
        out[phase.split("/")[1] + "_s"] = statistics.mean(m.get(phase, 0.0) for m in later)
    print(f"[bench] seed {seed} {row}: " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="responses per prompt")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--work-dir", default=None, help="keep the runs (logs, metrics) here; default: a temp folder")
    args = parser.parse_args()
    from verl_modality.cli import select_platform

    select_platform("bench_step_time")  # the cpu platform on a machine without a GPU, as `verl-modality demo` does

    from verl_modality.data.synthetic import REALISTIC, make_demo_data
    from verl_modality.models.tiny import make_tiny_model

    print("$ " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), flush=True)
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_step_time_") as tmp:
        root = Path(args.work_dir or tmp).resolve()
        model = make_tiny_model(root / "model", seed=0)
        realistic_processor(model)
        make_demo_data(root / "data", seed=0, n_train=7 * args.batch, n_test=7, progress=False, media_size=REALISTIC)
        for seed in args.seeds:
            results[seed] = {row: _run(row, seed, root, model, root / "data", args) for row in args.rows}
    keys = list(next(iter(next(iter(results.values())).values())))
    print(f"\n{args.batch} prompts x {args.n} responses per step, {args.steps} steps, mean over steps 2..{args.steps}")
    for seed, rows in results.items():
        print(f"seed {seed}")
        print(f"{'':>24}" + "".join(f"{k:>20}" for k in keys))
        for row, values in rows.items():
            print(f"{row:>24}" + "".join(f"{values[k]:>20.2f}" for k in keys))
    if "MUPO" in args.rows:
        print("\nMUPO step time over each row (mean over seeds; MAPLE Table 1 on H100s in brackets)")
        for row in args.rows:
            ratio = statistics.mean(results[s]["MUPO"]["step_s"] / results[s][row]["step_s"] for s in results)
            print(f"{row:>24} {ratio:6.2f}x   ({MAPLE['MUPO'] / MAPLE[row]:.2f}x)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
