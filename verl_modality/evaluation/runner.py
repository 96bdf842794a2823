"""``verl-modality eval``: k samples per query of a schema test set, scored, one JSON line per response.

The rows are read and checked like ``OmniRLDataset`` reads them (schema validation, media paths resolved against
the parquet's directory or ``media_root``), the modality policy is applied with the training transform
(:func:`~verl_modality.data.modality_view.apply_view`, every row checked up front with ``plan_views``) and each
query's prompt is built exactly as the rollout builds it (:mod:`verl_modality.models.generation`). Every setting and
row is checked before a model is loaded. The options are :class:`~verl_modality.evaluation.config.EvalConfig`,
the records are scored by :mod:`verl_modality.evaluation.scoring`, and a run started again with the same output
resumes it (:mod:`verl_modality.evaluation.resume`). Sampling depends only on (seed, query, sample index), so a
resumed run writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_modality import options
from verl_modality.data import schema, validate
from verl_modality.data.modality_view import ModalityView, apply_view, plan_views
from verl_modality.evaluation import backends, resume
from verl_modality.evaluation.config import EvalConfig, EvalConfigError, EvalSummary, load_judge_config, resolve_backend
from verl_modality.evaluation.scoring import make_records

logger = logging.getLogger(__name__)


def load_rows(data: str, media_root: str | None = None) -> list[dict[str, Any]]:
    """The parquet's rows, validated (schema and media files) and with absolute media paths."""
    from verl_modality.data.dataset import resolve_media_paths

    validate.validate_file(data, check_media=True, root=media_root)
    root = Path(media_root) if media_root else Path(data).resolve().parent
    return [resolve_media_paths(r, root) for r in schema.read_rows(data)]


def run_eval(cfg: EvalConfig, backend: Any = None) -> EvalSummary:
    """Evaluate ``cfg.data`` into ``cfg.out`` (see the module docstring). ``backend`` replaces the generation
    backend (an object with ``name`` and ``generate(row, cfg) -> list[Generation]`` built for the same model, lengths
    and seed), so that several runs can share one loaded model."""
    run = _plan_run(cfg, backend)
    summary = run.summary
    out, sidecar = Path(cfg.out), Path(cfg.out + resume.CONFIG_SUFFIX)
    identity = resume.identity(cfg, summary.backend, run.policy, run.bench, run.judge)
    done: set[tuple[str, int]] = set()
    if cfg.overwrite:
        out.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
    elif out.exists() and out.stat().st_size > 0:
        resume.check_identity(out, sidecar, identity)
        done, summary.dropped_partial_line = resume.read_done(
            out, {str(r[schema.ID]) for r in run.rows} | _ids_beyond(cfg)
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")

    todo = [r for r in run.rows if any((str(r[schema.ID]), s) not in done for s in range(cfg.k))]
    summary.skipped = sum(1 for r in run.rows for s in range(cfg.k) if (str(r[schema.ID]), s) in done)
    n_captions = sum(1 for r in todo if r.get(schema.TASK) == "caption")
    if n_captions and run.judge is None:
        logger.warning(
            "%d caption row(s) are written with score null: no --judge-config was given to grade them", n_captions
        )
        summary.notes.append(f"caption scores are null for {n_captions} row(s): no --judge-config given")
    if todo:
        gen = backend if backend is not None else backends.make_backend(cfg, summary.backend)
        _generate_into(out, todo, done, gen, run, cfg)
    return summary


@dataclass
class _Run:
    """What :func:`run_eval` settled before any generation: the rows, the view, scorer, judge and the summary."""

    rows: list[dict]
    view: ModalityView
    policy: str
    bench: Any
    judge: Any
    summary: EvalSummary


def check_model_dir(model: str) -> None:
    """Refuse a ``--model`` that looks like a path (absolute, starting with ``.``, or holding a path separator) but is
    not an existing directory, before anything else is checked or loaded."""
    seps = [s for s in (os.sep, os.altsep) if s]
    if not (os.path.isabs(model) or model.startswith(".") or any(s in model for s in seps)):
        return
    if not os.path.exists(model):
        raise EvalConfigError(f"--model {model}: model directory {model} does not exist")
    if not os.path.isdir(model):
        raise EvalConfigError(f"--model {model}: {model} is not a directory (expected a checkpoint directory)")


def _plan_run(cfg: EvalConfig, backend: Any) -> _Run:
    """Every setting and every row checked, so that a bad one fails before a model is loaded."""
    check_model_dir(cfg.model)
    try:
        view = ModalityView(policy=cfg.policy, ablation=cfg.ablation, seed=cfg.view_seed)
    except ValueError as err:
        raise EvalConfigError(str(err)) from None
    bench = None
    if cfg.benchmark:
        from verl_modality.evaluation.scorers import get_benchmark

        try:
            bench = get_benchmark(cfg.benchmark, cfg.benchmark_version)
        except ValueError as err:
            raise EvalConfigError(f"--benchmark: {err}") from None
    elif cfg.benchmark_version:
        raise EvalConfigError("--benchmark-version needs --benchmark")
    judge = load_judge_config(cfg.judge_config) if cfg.judge_config else None
    backend_name = backend.name if backend is not None else resolve_backend(cfg.backend)

    rows = load_rows(cfg.data, cfg.media_root)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    plan = plan_views(rows, view, source=f"{cfg.data}: ")
    if plan.errors:
        raise EvalConfigError(
            f"policy {cfg.policy!r} cannot be applied to {len(plan.errors)} row(s):\n  " + "\n  ".join(plan.errors[:10])
        )
    summary = EvalSummary(out=cfg.out, backend=backend_name, queries=len(rows))
    if bench is None:
        from verl_modality.evaluation.scorers import benchmark_for_data_source

        hinted = sorted({b for b in map(benchmark_for_data_source, {r[schema.DATA_SOURCE] for r in rows}) if b})
        if hinted:
            summary.notes.append(
                f"rows of benchmark(s) {', '.join(hinted)} were scored with the training reward's rules (string match "
                f"read {cfg.rule}); pass --benchmark to score them with the benchmark's own rule and record its version"
            )
    if plan.fallbacks:
        summary.notes.append(
            f"{len(plan.fallbacks)} row(s) have no stream beyond their tag; 'superset' shows them exactly"
        )
    return _Run(rows, view, view.policy or "none", bench, judge, summary)


def _generate_into(
    out: Path, todo: list[dict], done: set[tuple[str, int]], gen: Any, run: _Run, cfg: EvalConfig
) -> None:
    """k samples of every row of ``todo``, scored and appended to ``out`` (flushed and synced per query)."""
    from tqdm.auto import tqdm

    summary = run.summary
    with open(out, "a", encoding="utf-8") as f:
        for row in tqdm(todo, desc="eval", unit="query", disable=not cfg.progress):
            shown = apply_view(row, run.view)
            gens = gen.generate(shown, cfg)
            if len(gens) != cfg.k:
                raise RuntimeError(f"backend {summary.backend} returned {len(gens)} samples for k={cfg.k}")
            for rec in make_records(row, shown, gens, cfg, run.policy, run.bench, run.judge):
                if (rec["id"], rec["sample"]) in done:
                    continue
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                summary.written += 1
                if rec["task"] == "caption" and rec["score"] is None and run.judge is None:
                    summary.unscored_captions += 1
            f.flush()
            os.fsync(f.fileno())
            summary.generated_queries += 1


def _ids_beyond(cfg: EvalConfig) -> set[str]:
    """Ids of the rows past ``limit`` (a resumed run may use a smaller limit than the one that wrote the file)."""
    if cfg.limit is None:
        return set()
    return {str(r[schema.ID]) for r in schema.read_rows(cfg.data)[cfg.limit :]}


# ------------------------------------------------------------------------------------------------------ command line


def add_arguments(p: Any) -> None:
    """The ``verl-modality eval`` options on an argparse (sub)parser, one per :class:`EvalConfig` field; sets
    ``func``."""
    options.add_arguments(p, EvalConfig)
    p.set_defaults(func=cli_main)


def cli_main(args: Any) -> int:
    """Run ``verl-modality eval``; errors in the settings or data print one message and exit 1."""
    import sys

    try:
        cfg = options.from_arguments(EvalConfig, args)
    except EvalConfigError as err:
        print(f"eval: {err}", file=sys.stderr)
        return 1
    try:
        summary = run_eval(cfg)
    except (ValueError, OSError) as err:  # settings, schema, media and over-long prompts name what is wrong
        print(f"eval: {err}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
