"""Time ``mapo_stratified`` against verl's ``grpo`` (looped) and ``grpo_vectorized`` on the same batches.

    .venv/bin/python bench/bench_mapo_advantage.py [--sizes 4096 65536] [--repeats 5]

Batches: N responses in groups of G=8 (verl's uid), 7 tags spread over the groups, binary rewards on the last
response token, responses of --length tokens. mapo_stratified runs with stratum balance and adaptive weights on and a
warm history. Prints the median wall time per call and the ratio to grpo_vectorized, all measured in this one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import torch

from verl_modality.vocabulary import TAGS


def make_batch(n: int, group: int, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n_groups = n // group
    uid = np.array([f"{i:08x}" for i in range(n_groups) for _ in range(group)], dtype=object)
    tags = np.array([TAGS[i % len(TAGS)] for i in range(n_groups) for _ in range(group)], dtype=object)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(n, length)
    rewards[torch.arange(n), lengths - 1] = torch.randint(0, 2, (n,), generator=g).float()
    return rewards, mask, uid, tags


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--looped-repeats", type=int, default=3, help="repeats for verl's slow looped grpo")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos

    from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState
    from verl_modality.algorithms.advantage import mapo_stratified_advantage
    from verl_modality.algorithms.config import MapoConfig

    algo = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "mapo": {"balance": True, "adaptive_weights": True}})
    cfg = MapoConfig.from_algorithm_config(algo)
    print(f"torch threads {torch.get_num_threads()}, group size {args.group}, {len(TAGS)} tags, length {args.length}")
    header = f"{'responses':>10} {'estimator':>18} {'median s':>10} {'x grpo_vectorized':>18}"
    print(header)
    print("-" * len(header))
    ratios = {}
    for n in args.sizes:
        rewards, mask, uid, tags = make_batch(n, args.group, args.length, seed=n)
        state = AdaptiveWeightState(cfg, window=50)
        for step in range(20):  # a warm history, as in training
            state.weights({t: 0.1 * ((step + i) % 5) for i, t in enumerate(TAGS)}, step=step + 1)
        batch = {"token_level_rewards": rewards, "response_mask": mask, "index": uid}
        runs = {
            "grpo": (partial(core_algos.compute_grpo_outcome_advantage, **batch), args.looped_repeats),
            "grpo_vectorized": (partial(core_algos.compute_grpo_vectorized_outcome_advantage, **batch), args.repeats),
            "mapo_stratified": (
                partial(mapo_stratified_advantage, **batch, config=algo, modality_tags=tags, state=state),
                args.repeats,
            ),
        }
        times = {name: timed(fn, reps) for name, (fn, reps) in runs.items()}
        for name, t in times.items():
            print(f"{n:>10} {name:>18} {t:>10.4f} {t / times['grpo_vectorized']:>18.2f}")
        ratios[n] = times["mapo_stratified"] / times["grpo_vectorized"]
    biggest = max(ratios)
    verdict = "met" if ratios[biggest] <= 1.5 else "NOT met"
    print(f"target mapo_stratified <= 1.5x grpo_vectorized at {biggest} responses: {ratios[biggest]:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
