"""Policy-gradient variance of modality-aware (stratified, MA) against modality-unaware (pooled, MU) normalisation,
on the same rollouts of the tiny Omni thinker, side by side in one run (MAPLE §4.1 reports -12.89 %).

    .venv/bin/python bench/bench_gradient_variance.py [--seeds 5] [--prompts 2] [--n 8] [--pool 16] [--draws 2000]

Per seed: ``--prompts`` demo prompts per tag (all 7 tags, ``data.modality.policy=exact``), ``--pool`` responses per
prompt sampled from the tiny random-weight thinker (``RowGenerator``, temperature 1, <= ``--response-length``
tokens), and per response the score function g_j = grad_theta of its summed log-prob given the prompt, over all
thinker parameters (teacher forced on the processor's inputs; the tokens the sampler never emits are masked as it
masks them). Rewards are Bernoulli at per-tag rates (``--rates``) and independent of the response, so the score
function's norm is independent of the reward (the cheap estimator's assumption holds by construction).

The batch is the first ``--n`` responses of each prompt with one reward draw (7 x 2 x 8 = 112 by default).
Var(g) for MU (A over the batch, c = 1/N) and MA (A within the tag, c = 1/(K n_M)), with centred advantages
(r - mean) and std-normalised ones (GRPO's default), by:

- ``est``: :func:`~verl_modality.algorithms.gradient_variance.estimator_variance` of the batch's X_j = c_j A_j g_j;
- ``est mean``: the mean of that estimate over the ``--draws`` resampled batches below;
- ``emp``: the empirical Var(g) over ``--draws`` resampled batches (``--n`` responses per prompt drawn with
  replacement from its pool, fresh rewards): what ``est`` estimates;
- ``rwd only``: the empirical Var(g) over ``--draws`` reward draws on the batch's own responses. Responses fixed,
  the between-tag term (mean_M - mean_B) g_j does not vary, so this misses what stratification removes;
- ``cheap``: ``reward_variance_split``'s within / total of the batch's rewards (centred advantages only), and
  ``cheap pop`` the same from the rates themselves.

Reported: Var(MA) / Var(MU) - 1 in percent per seed, then the mean with a 95 % t-interval over seeds.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from verl_modality.algorithms.gradient_variance import (
    contributions,
    estimator_variance,
    estimator_variance_from_gram,
    pooled_advantages,
    pooled_weights,
    reward_variance_split,
    stratified_advantages,
    stratified_weights,
)

TAG_ORDER = ("V", "A", "S", "VA", "VS", "AS", "VAS")
DEFAULT_RATES = "V=0.9,A=0.3,S=0.7,VA=0.5,VS=0.6,AS=0.2,VAS=0.1"
NORMS = {"centred": False, "std": True}


def parse_rates(text: str) -> dict[str, float]:
    rates = {}
    for item in text.split(","):
        tag, _, value = item.partition("=")
        rate = float(value)
        if tag.strip() not in TAG_ORDER or not 0.0 <= rate <= 1.0:
            raise SystemExit(f"--rates: bad entry {item!r} (want TAG=p, TAG one of {' '.join(TAG_ORDER)}, p in [0, 1])")
        rates[tag.strip()] = rate
    missing = [t for t in TAG_ORDER if t not in rates]
    if missing:
        raise SystemExit(f"--rates: no rate for {missing}")
    return rates


def coefficients(scores: np.ndarray, tags: list[str], norm_by_std: bool) -> dict[str, np.ndarray]:
    """c_j A_j, (N,), of both estimators."""
    return {
        "MU": pooled_advantages(scores, norm_by_std=norm_by_std) * pooled_weights(len(scores)),
        "MA": stratified_advantages(scores, tags, norm_by_std=norm_by_std) * stratified_weights(tags),
    }


def score_function(model, gen, prompt, tokens: list[int], params: list[torch.nn.Parameter]) -> torch.Tensor:
    """g = grad of sum_t log pi(y_t | x, y_<t), flattened over ``params`` (P,) float32; unused parameters give 0."""
    from verl_modality.models.omni import compute_position_ids

    inputs = gen.core.model_inputs(prompt.prompt_ids, videos=prompt.videos, audios=prompt.audios)
    n_prompt = len(prompt.prompt_ids)
    # the prompt's multimodal RoPE, then text positions for the response, as generate() continued it; the thinker's
    # own get_rope_index over prompt + response fails on a response ending in <|vision_bos|>
    prompt_pos = compute_position_ids(gen.processor, inputs["input_ids"][0], inputs["attention_mask"][0], inputs)[1:]
    response_pos = prompt_pos.max() + 1 + torch.arange(len(tokens)).expand(3, -1)
    ids = torch.tensor([prompt.prompt_ids + tokens])
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    inputs["position_ids"] = torch.cat([prompt_pos, response_pos], dim=1)[:, None, :]
    logits = model(**inputs, use_cache=False).logits[0, n_prompt - 1 : -1].float()
    if gen.core.suppress_ids:
        logits[:, gen.core.suppress_ids] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, n_prompt:, None]).sum()
    grads = torch.autograd.grad(logp, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def rollout_pool(gen, rows: list[dict], pool: int) -> tuple[torch.Tensor, list[str], list[int], list[int]]:
    """Score functions of ``pool`` sampled responses per row: grads (rows * pool, P), tag and prompt per response,
    response lengths."""
    model = gen.core.model
    params = [p for p in model.parameters() if p.requires_grad]
    grads, tags, prompt_of, lengths = [], [], [], []
    for i, row in enumerate(rows):
        prompt = gen.prompt(row)
        for sample in gen.generate_from_prompt(prompt, n=pool, temperature=1.0):
            grads.append(score_function(model, gen, prompt, sample.token_ids, params))
            tags.append(str(row["modality_tag"]))
            prompt_of.append(i)
            lengths.append(sample.n_tokens)
    return torch.stack(grads), tags, prompt_of, lengths


def gram_matrix(grads: torch.Tensor, chunk: int = 1 << 16) -> np.ndarray:
    """[g_j . g_k] in float64, (N, N), without a float64 copy of all of ``grads``."""
    out = torch.zeros(grads.shape[0], grads.shape[0], dtype=torch.float64)
    for start in range(0, grads.shape[1], chunk):
        block = grads[:, start : start + chunk].double()
        out += block @ block.T
    return out.numpy()


def empirical_variance(weights: np.ndarray, gram: np.ndarray) -> float:
    """Trace of the covariance of g_b = sum_i W_bi g_i over the rows b of ``weights`` (B, N_pool)."""
    dev = weights - weights.mean(axis=0)
    return float(np.sum((dev @ gram) * dev) / (weights.shape[0] - 1))


def one_seed(seed: int, gen, rows: list[dict], rates: dict[str, float], args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    grads, pool_tags, prompt_of, lengths = rollout_pool(gen, rows, args.pool)
    t_grad = time.perf_counter() - t0
    gram = gram_matrix(grads)
    n_pool = grads.shape[0]
    rng = np.random.default_rng(seed)
    prompt_of = np.asarray(prompt_of)
    members = [np.flatnonzero(prompt_of == i) for i in range(len(rows))]
    batch_idx = np.concatenate([m[: args.n] for m in members])
    tags = [pool_tags[i] for i in batch_idx]
    p = np.array([rates[t] for t in tags])

    def draw_rewards() -> np.ndarray:
        return (rng.random(p.size) < p).astype(np.float64)

    scores = draw_rewards()
    out: dict = {"seed": seed, "grad_s": t_grad, "n": len(batch_idx), "pool": n_pool, "P": grads.shape[1]}
    out["tokens"] = float(np.mean(lengths))
    out["cheap"] = reward_variance_split(scores, tags)["ma_over_mu"]
    batch_grads = grads[torch.from_numpy(batch_idx)]
    for name, norm in NORMS.items():
        for est, coef in coefficients(scores, tags, norm).items():
            out[name, est, "est"] = estimator_variance(contributions(batch_grads, coef, np.ones_like(coef)))

    # resampled batches: n responses per prompt with replacement from its pool, fresh rewards
    weights = {(name, est): np.zeros((args.draws, n_pool)) for name in NORMS for est in ("MU", "MA")}
    fixed = {(name, est): np.zeros((args.draws, n_pool)) for name in NORMS for est in ("MU", "MA")}
    est_sum = {(name, est): 0.0 for name in NORMS for est in ("MU", "MA")}
    cheap = []
    for b in range(args.draws):
        idx = np.concatenate([rng.choice(m, size=args.n, replace=True) for m in members])
        r = draw_rewards()
        r_fixed = draw_rewards()
        cheap.append(reward_variance_split(r, tags)["ma_over_mu"])
        sub = gram[np.ix_(idx, idx)]
        for name, norm in NORMS.items():
            for est, coef in coefficients(r, tags, norm).items():
                weights[name, est][b] = np.bincount(idx, weights=coef, minlength=n_pool)
                est_sum[name, est] += estimator_variance_from_gram(sub, coef)
            for est, coef in coefficients(r_fixed, tags, norm).items():
                fixed[name, est][b] = np.bincount(batch_idx, weights=coef, minlength=n_pool)
    for key in weights:
        out[(*key, "emp")] = empirical_variance(weights[key], gram)
        out[(*key, "rwd only")] = empirical_variance(fixed[key], gram)
        out[(*key, "est mean")] = est_sum[key] / args.draws
    out["cheap mean"] = float(np.mean(cheap))
    out["wall_s"] = time.perf_counter() - t0
    return out


def pct(ma: float, mu: float) -> float:
    return 100.0 * (ma / mu - 1.0) if mu > 0 else float("nan")


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval; the interval is NaN for fewer than two values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="independent seeds (prompts, samples, rewards)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per tag in a batch")
    p.add_argument("--n", type=int, default=8, help="responses per prompt in a batch (G)")
    p.add_argument("--pool", type=int, default=16, help="responses sampled per prompt (batches resample from them)")
    p.add_argument("--draws", type=int, default=2000, help="resampled batches / reward draws per seed")
    p.add_argument("--rates", default=DEFAULT_RATES, help="Bernoulli reward rate per tag, TAG=p,...")
    p.add_argument("--response-length", type=int, default=16, help="max response tokens")
    p.add_argument("--model", type=Path, help="model directory (default: the tiny random-weight model, seed 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    if args.pool < args.n or args.n < 2 or args.seeds < 1 or args.prompts < 1 or args.draws < 2:
        raise SystemExit("need --pool >= --n >= 2, --seeds >= 1, --prompts >= 1, --draws >= 2")
    rates = parse_rates(args.rates)
    torch.set_num_threads(args.threads)
    print("$ " + shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])))

    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.evaluation.runner import load_rows
    from verl_modality.models.generation import RowGenerator
    from verl_modality.models.tiny import make_tiny_model

    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_gradvar_") as tmp:
        root = Path(tmp)
        model = args.model or make_tiny_model(root / "model", seed=0)
        per_seed = len(TAG_ORDER) * args.prompts
        make_demo_data(root / "data", n_train=per_seed * args.seeds, n_test=0, families="balanced", progress=False)
        by_tag: dict[str, list[dict]] = {t: [] for t in TAG_ORDER}
        for row in load_rows(str(root / "data" / "train.parquet")):
            by_tag[str(row["modality_tag"])].append(row)
        for seed in range(args.seeds):
            rows = [r for t in TAG_ORDER for r in by_tag[t][seed * args.prompts : (seed + 1) * args.prompts]]
            gen = RowGenerator(
                str(model),
                max_prompt_length=1024,
                max_response_length=args.response_length,
                seed=seed,
                data_config={"modality": {"policy": "exact"}},
            )
            results.append(one_seed(seed, gen, rows, rates, args))
            r = results[-1]
            print(
                f"  seed {seed}: {r['wall_s']:.1f} s ({r['grad_s']:.1f} s sampling + score functions)", file=sys.stderr
            )

    first = results[0]
    print(
        f"Batch: {len(TAG_ORDER)} tags x {args.prompts} prompts x {args.n} responses = {first['n']} "
        f"(pool {args.pool} per prompt), {first['P']} thinker parameters, mean response {first['tokens']:.1f} tokens, "
        f"{args.draws} draws, {args.seeds} seeds"
    )
    print("Rates: " + ", ".join(f"{t} {rates[t]:g}" for t in TAG_ORDER))
    within = statistics.fmean(rates[t] * (1 - rates[t]) for t in TAG_ORDER)
    between = statistics.pvariance([rates[t] for t in TAG_ORDER])
    cheap_pop = within / (within + between)

    cols = ("est", "est mean", "emp", "rwd only")
    for name in NORMS:
        print(f"\nVar(g), {name} advantages" + (" (r - mean)" if name == "centred" else " ((r - mean) / (std + eps))"))
        head = f"{'seed':>4} {'MU est':>10} {'MA est':>10} {'MU emp':>10} {'MA emp':>10}" + "".join(
            f" {'MA/MU-1 ' + c:>18}" for c in cols
        )
        print(head + (f" {'cheap':>8}" if name == "centred" else ""))
        for r in results:
            line = f"{r['seed']:>4}" + "".join(
                f" {r[name, est, kind]:>10.4g}" for kind in ("est", "emp") for est in ("MU", "MA")
            )
            line += "".join(f" {pct(r[name, 'MA', c], r[name, 'MU', c]):>17.2f}%" for c in cols)
            print(line + (f" {100 * (r['cheap'] - 1):>7.2f}%" if name == "centred" else ""))

    print(f"\nVar(MA)/Var(MU) - 1 over {args.seeds} seeds: mean [95 % t-interval]")
    print(f"{'':>22} {'centred':>28} {'std':>28}")

    def row(label: str, values: dict[str, list[float] | None]) -> None:
        cells = []
        for name in NORMS:
            v = values.get(name)
            if v is None:
                cells.append(f"{'-':>28}")
            else:
                m, lo, hi = t_interval(v)
                cells.append(f"{f'{m:.2f}% [{lo:.2f}, {hi:.2f}]':>28}")
        print(f"{label:>22} " + " ".join(cells))

    for c in cols:
        row(c, {n: [pct(r[n, "MA", c], r[n, "MU", c]) for r in results] for n in NORMS})
    row("cheap (batch)", {"centred": [100 * (r["cheap"] - 1) for r in results]})
    row("cheap (mean of draws)", {"centred": [100 * (r["cheap mean"] - 1) for r in results]})
    print(f"{'cheap (rates)':>22} {f'{100 * (cheap_pop - 1):.2f}%':>28} {'-':>28}")
    print("\nest / emp (the in-batch estimate against the variance it estimates, mean over seeds)")
    for name in NORMS:
        ratios = {
            est: statistics.fmean(r[name, est, "est mean"] / r[name, est, "emp"] for r in results)
            for est in ("MU", "MA")
        }
        print(f"{name:>22}  MU {ratios['MU']:.3f}  MA {ratios['MA']:.3f}")
    print(f"\nwall {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
