"""Step time at world size 1 and 2 on the CPU, side by side in one run: the same recipe, model, data and seeds.

    .venv/bin/python bench/bench_world_size.py [--batch 8] [--n 4] [--steps 4]

``examples/mapo_cpu_demo.yaml`` (MAPO, exact streams, the static curriculum) through verl's ``main_ppo`` with the
``hf`` rollout, on the tiny Qwen2.5-Omni thinker and demo data built here: once with one FSDP2 rank, once with two
(``trainer.n_gpus_per_node=2``, one ``hf`` server per rank). Reported: the mean ``timing_s/step`` over steps 2..
(step 1 holds one-off warm-up), verl's phase timings (generation, old log-prob, actor update), and the start-up (the
run's wall time minus its steps). On a 2-core machine the two ranks share the cores, so world size 2 shows what the
collectives and the second process cost, not a speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

PHASES = ("timing_s/gen", "timing_s/old_log_prob", "timing_s/update_actor")


def _run(world: int, root: Path, model: Path, data: Path, args: argparse.Namespace) -> dict[str, float]:
    from verl_modality.trainer.launch import run_main_ppo

    work = root / f"ws{world}"
    overrides = [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"trainer.default_local_dir={work / 'ckpt'}",
        f"data.train_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.batch * args.n // world}",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"trainer.total_training_steps={args.steps}",
        f"trainer.n_gpus_per_node={world}",
        f"ray_kwargs.ray_init.num_gpus={world}",
        "data.curriculum.order=static",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
    ]
    result = run_main_ppo("mapo_cpu_demo", work, overrides, timeout=args.timeout)
    if result.returncode != 0:
        raise SystemExit(f"world size {world} failed (rc {result.returncode}):\n{result.log_tail(60)}")
    steps = result.steps()
    later = [steps[s] for s in sorted(steps) if s > 1] or [steps[1]]
    out = {
        "step_s": statistics.mean(m["timing_s/step"] for m in later),
        "start_s": result.seconds - sum(steps[s]["timing_s/step"] for s in steps if s >= 1),
    }
    for phase in PHASES:
        out[phase.split("/")[1] + "_s"] = statistics.mean(m.get(phase, 0.0) for m in later)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="responses per prompt")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    from verl_modality.cli import select_platform

    select_platform("bench_world_size")  # the cpu platform on a machine without a GPU, as `verl-modality demo` does

    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.models.tiny import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench_world_size_") as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "model", seed=0)
        make_demo_data(root / "data", seed=0, n_train=7 * args.batch, n_test=7, progress=False)
        results = {world: _run(world, root, model, root / "data", args) for world in (1, 2)}
    print(f"{args.batch} prompts x {args.n} responses per step, {args.steps} steps, mean over steps 2..{args.steps}")
    print(f"{'':>18} {'world size 1':>13} {'world size 2':>13} {'2 / 1':>7}")
    for key in results[1]:
        a, b = results[1][key], results[2][key]
        print(f"{key:>18} {a:>12.2f}s {b:>12.2f}s {b / a if a else float('nan'):>6.2f}x")


if __name__ == "__main__":
    main()
