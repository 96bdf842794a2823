"""The CPU demo (``verl-modality demo``): warm start, then MAPO's full recipe, and with ``--compare`` the MUPO baseline.

1. Inputs under the work dir: the tiny random-weight Qwen2.5-Omni checkpoint (``model/``) and the learnable demo
   set (``data/``: :func:`verl_modality.data.synthetic.make_demo_data` with ``families="balanced"``).
2. Warm start (:mod:`verl_modality.trainer.warm_start`, cached): verl's SFT trainer until the held-out reward is
   mid-range, so that GRPO groups have reward variance.
3. RL with verl's ``main_ppo`` from the warm start: ``examples/mapo_full_cpu_demo.yaml`` (exact streams, stratified
   advantages, zero-variance filtering, uni -> bi -> tri curriculum) in ``mapo/``; with ``compare``, also
   ``examples/mupo_cpu_demo.yaml`` (all streams, GRPO, mixed batches) in ``mupo/``, from the same checkpoint, with
   the same seed, prompts, validation rows and number of steps.
4. A report: per-tag validation accuracy (greedy) before and after each run, the uni / bi / tri levels and the
   modality gap, step time and prompt tokens per response, ``demo_summary.json`` and ``demo_curves.png`` (per-tag
   validation accuracy and training reward against steps for every run).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verl_modality import options
from verl_modality.options import option
from verl_modality.trainer.launch import RunResult, run_main_ppo
from verl_modality.trainer.warm_start import SECTION as WARM_START_SECTION
from verl_modality.trainer.warm_start import WarmStartConfig, WarmStartResult, run_warm_start
from verl_modality.vocabulary import TAGS

DATA_MARKER = "demo_data.json"
SUMMARY_FILE = "demo_summary.json"
CURVES_FILE = "demo_curves.png"
RECIPES = {"mapo": "mapo_full_cpu_demo", "mupo": "mupo_cpu_demo"}
LABELS = {"mapo": "MAPO (full recipe)", "mupo": "MUPO"}


@dataclass
class DemoConfig:
    """Options of ``verl-modality demo`` (sizes chosen so that the default run takes about 15 minutes on 2 cores);
    the command line is built from these fields (:func:`verl_modality.options.add_arguments`)."""

    work_dir: Path = option(Path("demo_run"), help="working folder: model, data, warm start, runs, report")
    seed: int = option(0, help="seed of the tiny model, the data, the warm start and the RL runs")
    steps: int = option(40, ge=1, help="RL steps of each run")
    val_every: int | None = option(None, ge=1, help="steps between validations (default: min(10, steps))")
    n_train: int = option(2800, ge=1, help="training rows (the SFT data and the RL prompts come from them)")
    n_test: int = option(350, ge=1, help="test rows; the first val-rows of them are validated on")
    rl_per_tag: int = option(48, ge=1, help="RL prompts per tag (336 in all: one curriculum pass is 42 steps)")
    val_rows: int = option(140, ge=1, help="validation rows (20 per tag)")
    compare: bool = option(False, help="also train the MUPO baseline from the same warm start")
    # cpu_rollout: vLLM is faster from about 20 steps on (README, Performance)
    rollout: str = option("vllm", choices=("vllm", "hf"), help="verl's vLLM rollout or transformers generate")
    # from the warm start; 1e-3 drifts the taught reply form within 10 steps (measured)
    rl_lr: float = option(3.0e-4, gt=0, help="learning rate of the RL runs")
    overrides: tuple[str, ...] = ()  # extra Hydra overrides for every RL run
    warm_start: Any = field(default_factory=WarmStartConfig)  # a WarmStartConfig
    timeout_s: float = option(3600.0, gt=0, help="time limit of each RL run, in seconds")

    def __post_init__(self) -> None:
        options.validate(self, "demo")
        if self.val_every is None:
            self.val_every = min(10, self.steps)
        if not isinstance(self.warm_start, WarmStartConfig):
            raise ValueError(f"demo.warm_start must be a WarmStartConfig, got {type(self.warm_start).__name__}")
        if self.val_rows > self.n_test:
            raise ValueError(f"demo.val_rows ({self.val_rows}) must be <= demo.n_test ({self.n_test})")


def prepare_inputs(cfg: DemoConfig, say: Callable[[str], None] = print) -> Path:
    """The tiny model and the learnable demo set under ``cfg.work_dir`` (rebuilt when their settings changed)."""
    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.models.tiny import make_tiny_model

    work = cfg.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_marker = work / "model" / "demo_model.json"
    wanted_model = {"seed": cfg.seed}
    if not model_marker.is_file() or json.loads(model_marker.read_text()) != wanted_model:
        say(f"[demo] building the tiny Qwen2.5-Omni checkpoint (seed {cfg.seed}) in {work / 'model'}")
        make_tiny_model(work / "model", seed=cfg.seed, overwrite=(work / "model").exists())
        model_marker.write_text(json.dumps(wanted_model) + "\n")
    data_marker = work / "data" / DATA_MARKER
    wanted = {"seed": cfg.seed, "n_train": cfg.n_train, "n_test": cfg.n_test, "families": "balanced"}
    if not data_marker.is_file() or json.loads(data_marker.read_text()) != wanted:
        say(f"[demo] writing the learnable demo set ({cfg.n_train} train / {cfg.n_test} test rows) in {work / 'data'}")
        make_demo_data(  # the demo's own folder: rebuilt whenever its marker differs
            work / "data", seed=cfg.seed, n_train=cfg.n_train, n_test=cfg.n_test, families="balanced", overwrite=True
        )
        data_marker.write_text(json.dumps(wanted) + "\n")
    return work


def write_rl_rows(cfg: DemoConfig, work: Path) -> Path:
    """``data/rl_train.parquet``: per tag, the ``rl_per_tag`` training rows after the warm start's held-out ones
    (equal counts, so no curriculum batch is padded with a repeated prompt)."""
    from verl_modality.data import schema
    from verl_modality.trainer.warm_start import split_heldout

    rest, _ = split_heldout(schema.read_rows(work / "data" / "train.parquet"), cfg.warm_start.heldout_per_tag)
    taken: dict[str, int] = {}
    rows = []
    for row in rest:
        tag = row["modality_tag"]
        if taken.get(tag, 0) < cfg.rl_per_tag:
            taken[tag] = taken.get(tag, 0) + 1
            rows.append(row)
    short = {t: taken.get(t, 0) for t in TAGS if taken.get(t, 0) < cfg.rl_per_tag}
    if short:
        raise ValueError(f"demo: too few training rows for {cfg.rl_per_tag} RL prompts per tag: {short}")
    return schema.write_rows(rows, work / "data" / "rl_train.parquet")


def rl_overrides(cfg: DemoConfig, work: Path, model_dir: Path, run: str) -> list[str]:
    """The Hydra overrides every RL run of the demo shares (paths, budget, rows, seeds), then the user's."""
    chosen = [o.split("=", 1)[0].lstrip("+~") for o in cfg.overrides]
    rollout = [] if "cpu_rollout" in chosen else [f"cpu_rollout={cfg.rollout}"]
    return [
        *rollout,
        f"actor_rollout_ref.model.path={model_dir}",
        f"actor_rollout_ref.actor.optim.lr={cfg.rl_lr}",
        f"data.train_files={work / 'data' / 'rl_train.parquet'}",
        f"data.val_files={work / 'data' / 'test.parquet'}",
        f"data.val_max_samples={cfg.val_rows}",
        f"data.seed={cfg.seed}",
        f"actor_rollout_ref.rollout.seed={cfg.seed}",
        f"trainer.total_training_steps={cfg.steps}",
        # verl's loop also ends with its epochs (one is 42 steps of the RL rows): the step budget must decide
        f"trainer.total_epochs={cfg.steps}",
        f"trainer.test_freq={cfg.val_every}",
        f"trainer.default_local_dir={work / run / 'checkpoints'}",
        *cfg.overrides,
    ]


# ---------------------------------------------------------------------------------------------------------------
# reading a run's metrics


def val_curves(steps: dict[int, dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """``{tag or "pooled": [(step, greedy validation accuracy)]}`` from ``val-core/tag/<tag>/acc``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(steps):
        for key, value in steps[step].items():
            parts = key.split("/")
            if len(parts) == 4 and parts[:2] == ["val-core", "tag"] and parts[3] == "acc":
                out.setdefault(parts[2], []).append((step, float(value)))
    return out


def reward_curves(steps: dict[int, dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, mean training reward)]}`` from ``mapo/<tag>/reward_mean`` (steps where the tag trained; the
    MAPO estimator logs them) and ``"pooled"`` from verl's ``critic/score/mean`` (every run). Under group filtering
    these are the rewards of the kept groups."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(steps):
        if "critic/score/mean" in steps[step]:
            out.setdefault("pooled", []).append((step, float(steps[step]["critic/score/mean"])))
        for tag in TAGS:
            value = steps[step].get(f"mapo/{tag}/reward_mean")
            if value is not None:
                out.setdefault(tag, []).append((step, float(value)))
    return out


def levels_and_gap(acc: dict[str, float], counts: dict[str, int]) -> dict[str, Any]:
    """Uni / bi / tri accuracy (sample-weighted) and the modality gap of docs/method.md §8 from per-tag accuracy."""
    from verl_modality.evaluation.metrics import gap_from_levels, pool_levels

    levels = pool_levels({t: (a, counts.get(t, 0)) for t, a in acc.items() if t in TAGS})
    gap = gap_from_levels(levels)
    return {"uni": gap.uni, "bi": gap.bi, "tri": gap.tri, "gap": gap.gap}


def samples_per_update(metrics: dict[str, float]) -> float:
    """The samples one step trained on: ``zero_variance/samples_per_update`` when groups were dropped, else verl's
    token count of the batch over the mean tokens of one sample (prompt + response)."""
    if "zero_variance/samples_per_update" in metrics:
        return float(metrics["zero_variance/samples_per_update"])
    per_sample = metrics.get("prompt_length/mean", math.nan) + metrics.get("response_length/mean", math.nan)
    return float(round(metrics.get("perf/total_num_tokens", math.nan) / per_sample)) if per_sample > 0 else math.nan


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def run_summary(name: str, result: RunResult, val_counts: dict[str, int]) -> dict[str, Any]:
    """Per-tag accuracy before / after, levels and gap, timing, samples per update and prompt tokens of one RL run."""
    steps = result.steps()
    curves = val_curves(steps)
    first = {t: c[0][1] for t, c in curves.items()}
    last = {t: c[-1][1] for t, c in curves.items()}
    train_steps = [s for s in sorted(steps) if "timing_s/step" in steps[s]]
    step_s = [steps[s]["timing_s/step"] for s in train_steps]
    prompt_lengths = [steps[s]["prompt_length/mean"] for s in train_steps if "prompt_length/mean" in steps[s]]
    later = step_s[1:] or step_s  # the first step also builds the rollout's caches
    return {
        "run": name,
        "recipe": RECIPES[name],
        "seconds": result.seconds,
        "steps": len(train_steps),
        "val_steps": [s for s, _ in curves.get("pooled", [])],
        "val_first": first,
        "val_last": last,
        "levels_first": levels_and_gap(first, val_counts),
        "levels_last": levels_and_gap(last, val_counts),
        "step_s_mean": sum(later) / len(later) if later else math.nan,
        "prompt_tokens_per_response": sum(prompt_lengths) / len(prompt_lengths) if prompt_lengths else math.nan,
        "evicted_samples": sum(steps[s].get("training/filter_groups/evicted_samples", 0.0) for s in train_steps),
        # MAPLE's early filtering: groups dropped (never regenerated), steps with nothing left, samples trained on
        "dropped_groups": sum(steps[s].get("zero_variance/dropped_groups", 0.0) for s in train_steps),
        "skipped_steps": sum(steps[s].get("zero_variance/skipped_step", 0.0) for s in train_steps),
        "samples_per_update": _mean(
            [samples_per_update(steps[s]) for s in train_steps if not steps[s].get("zero_variance/skipped_step")]
        ),
        "reward_curves": reward_curves(steps),
        "val_curves": curves,
    }


# ---------------------------------------------------------------------------------------------------------------
# report


def run_ratios(runs: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """MUPO over MAPO (the second run over the first): step time, samples per update, prompt tokens per response;
    None with one run. MAPLE reports the step time the other way round (MUPO / full recipe 3.18x, Table 1)."""
    if len(runs) != 2:
        return None
    a, b = runs
    keys = {
        "step_time": "step_s_mean",
        "samples_per_update": "samples_per_update",
        "prompt_tokens": "prompt_tokens_per_response",
    }
    return {name: b[key] / a[key] if a[key] else math.nan for name, key in keys.items()}


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_report(summary: dict[str, Any]) -> str:
    """Per-tag validation accuracy of the warm start (each run's own view: exact for MAPO, full for MUPO) and after
    each run, the levels and the gap, then gain, step time and prompt length per run."""
    runs = summary["runs"]
    header = ["tag"] + [f"{LABELS[r['run']]}: {when}" for r in runs for when in ("warm start", "after")]
    rows = []
    for tag in [*TAGS, "pooled", "tag_mean"]:
        if tag not in runs[0]["val_first"]:
            continue
        rows.append([tag] + [_fmt(r[key].get(tag)) for r in runs for key in ("val_first", "val_last")])
    for key, title in (("uni", "uni"), ("bi", "bi"), ("tri", "tri"), ("gap", "modality gap")):
        rows.append([title] + [_fmt(r[lv][key]) for r in runs for lv in ("levels_first", "levels_last")])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append("")
    for r in runs:
        gain = r["val_last"].get("pooled", math.nan) - r["val_first"].get("pooled", math.nan)
        lines.append(
            f"{LABELS[r['run']]}: pooled {_fmt(r['val_first'].get('pooled'))} -> {_fmt(r['val_last'].get('pooled'))} "
            f"({gain * 100:+.1f} points) in {r['steps']} steps; {_fmt(r['step_s_mean'], '.1f')} s/step after the "
            f"first, {_fmt(r['samples_per_update'], '.1f')} samples per update, "
            f"{_fmt(r['prompt_tokens_per_response'], '.1f')} prompt tokens per response, "
            + (
                f"{r['dropped_groups']:.0f} zero-variance groups dropped ({r['skipped_steps']:.0f} steps skipped)"
                if r["dropped_groups"] or r["skipped_steps"]
                else f"{r['evicted_samples']:.0f} responses filtered out and regenerated"
                if r["evicted_samples"]
                else "no groups filtered"
            )
        )
    ratios = summary.get("ratios")
    if ratios:
        a, b = runs
        lines.append(
            f"{LABELS[b['run']]} / {LABELS[a['run']]}: step time {ratios['step_time']:.2f}x, samples per update "
            f"{ratios['samples_per_update']:.2f}x, prompt tokens per response {ratios['prompt_tokens']:.2f}x"
        )
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: per-tag greedy validation accuracy (top) and training reward (bottom) against steps, one column per run."""
    from verl_modality.evaluation.plots import _figure

    runs = summary["runs"]
    fig = _figure(5.0 * len(runs), 7.0)
    axes = fig.subplots(2, len(runs), squeeze=False, sharey="row")
    colours = {t: f"C{i}" for i, t in enumerate(TAGS)}
    for col, r in enumerate(runs):
        top, bottom = axes[0][col], axes[1][col]
        for ax, curves in ((top, r["val_curves"]), (bottom, r["reward_curves"])):
            for tag in [*TAGS, "pooled"]:
                if tag not in curves:
                    continue
                xs, ys = zip(*curves[tag], strict=True)
                if tag == "pooled":
                    ax.plot(xs, ys, color="black", linewidth=2.0, alpha=0.8, label="pooled")
                else:
                    ax.plot(xs, ys, color=colours[tag], marker="o", markersize=3, label=tag)
        top.set_title(f"{LABELS[r['run']]}: validation accuracy")
        bottom.set_title(f"{LABELS[r['run']]}: training reward (kept groups)")
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("greedy accuracy")
    axes[1][0].set_ylabel("mean reward")
    axes[0][-1].legend(loc="lower right", fontsize=7, ncol=2)
    fig.suptitle(f"verl-modality CPU demo (seed {summary['seed']}, warm start step {summary['warm_start']['step']})")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the summary written to ``demo_summary.json``."""
    work = prepare_inputs(cfg, say)
    ws: WarmStartResult = run_warm_start(work, cfg.warm_start, echo=say)
    write_rl_rows(cfg, work)
    from verl_modality.data import schema

    val_rows = schema.read_rows(work / "data" / "test.parquet")[: cfg.val_rows]
    val_counts = {t: sum(r["modality_tag"] == t for r in val_rows) for t in TAGS}
    runs = ["mapo", "mupo"] if cfg.compare else ["mapo"]
    summaries = []
    for name in runs:
        run_dir = work / name
        overrides = rl_overrides(cfg, work, ws.model_dir, name)
        say(
            f"[demo] {LABELS[name]}: verl main_ppo with {RECIPES[name]} for {cfg.steps} steps; log: {run_dir}/main_ppo.log"
        )
        result = run_main_ppo(RECIPES[name], run_dir, overrides, echo=True, timeout=cfg.timeout_s)
        if result.returncode != 0:
            print(result.log_tail(), file=sys.stderr)
            raise RuntimeError(
                f"main_ppo ({name}) failed with exit code {result.returncode}; full log: {result.log_path}"
            )
        from verl_modality.evaluation.training_log import format_table, summarize

        say(
            f"[demo] {LABELS[name]} finished in {result.seconds:.0f} s. Per tag (training summed; validation first/last):"
        )
        say(format_table(summarize(result.metrics)))
        summaries.append(run_summary(name, result, val_counts))
    summary = {
        "seed": cfg.seed,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "warm_start": {"step": ws.step, "reward": ws.reward, "status": ws.status, "cached": ws.cached},
        "runs": summaries,
        "ratios": run_ratios(summaries),
    }
    (work / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    say(f"[demo] greedy validation accuracy on the first {cfg.val_rows} test rows, warm start and after RL:")
    say(format_report(summary))
    try:
        png = plot_curves(summary, work / CURVES_FILE)
        say(f"[demo] curves: {png}; summary: {work / SUMMARY_FILE}")
    except Exception as err:  # the figure is a by-product: never lose the run's results over it
        say(f"[demo] no figure ({err}); summary: {work / SUMMARY_FILE}")
    return summary


def parse_warm_start(values: Sequence[str], flag: str | None = None) -> WarmStartConfig:
    """``key=value`` pairs (``max_steps=600``) into a :class:`WarmStartConfig`, each value read as its field's type;
    messages name the pairs after ``flag`` (``--warm-start``) when given."""
    return options.parse_pairs(WarmStartConfig, values, WARM_START_SECTION, flag=flag)
