"""``verl-modality`` command line: set-up helpers, the self-check and the CPU demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_doctor(args: argparse.Namespace) -> int:
    from verl_modality.doctor import check

    report = check()
    print(report.render())
    return 0 if report.ok else 1


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from verl_modality.models.tiny import make_tiny_model

    path = make_tiny_model(args.out_dir, seed=args.seed, overwrite=args.overwrite)
    print(f"tiny Qwen2.5-Omni checkpoint written to {path}")
    return 0


def _cmd_make_demo_data(args: argparse.Namespace) -> int:
    from verl_modality.data.synthetic import make_demo_data

    summary = make_demo_data(args.out_dir, seed=args.seed, n_train=args.n_train, n_test=args.n_test)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_validate_data(args: argparse.Namespace) -> int:
    from verl_modality.data.schema import SchemaError, validate_file

    status = 0
    for path in args.files:
        try:
            n = validate_file(path, check_media=not args.no_media)
        except SchemaError as exc:
            print(f"INVALID {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"ok {path}: {n} rows")
    return status


def _cmd_demo(args: argparse.Namespace) -> int:
    from verl_modality.evaluation.training_log import format_table, summarize
    from verl_modality.trainer.launch import prepare_demo_inputs, run_main_ppo

    work_dir = prepare_demo_inputs(args.work_dir, seed=args.seed)
    overrides = [f"trainer.total_training_steps={args.steps}", f"trainer.test_freq={args.steps}", *args.overrides]
    print(f"[demo] verl main_ppo with {args.config} for {args.steps} steps on the CPU; log: {work_dir}/main_ppo.log")
    result = run_main_ppo(args.config, work_dir, overrides, echo=True)
    if result.returncode != 0:
        print(result.log_tail(), file=sys.stderr)
        print(
            f"[demo] main_ppo failed with exit code {result.returncode}; full log: {result.log_path}", file=sys.stderr
        )
        return result.returncode
    print(f"[demo] finished in {result.seconds:.0f} s. Per tag (training steps summed; validation before/after):")
    print(format_table(summarize(result.metrics)))
    return 0


def _cmd_actor_check(args: argparse.Namespace) -> int:
    from verl_modality.trainer.actor_check import run_actor_check

    result = run_actor_check(args.work_dir, seed=args.seed, batch_size=args.batch_size)
    print(json.dumps(result, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verl-modality", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check that verl loaded the plugin and every registration is in place")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("make-tiny-model", help="build a tiny random-weight Qwen2.5-Omni checkpoint offline")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    p.set_defaults(func=_cmd_make_tiny_model)

    p = sub.add_parser("make-demo-data", help="write the synthetic tagged QA demo set (train/test parquet + media)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=56)
    p.add_argument("--n-test", type=int, default=28)
    p.set_defaults(func=_cmd_make_demo_data)

    p = sub.add_parser("validate-data", help="check parquet files against the sample schema (and their media)")
    p.add_argument("files", nargs="+")
    p.add_argument("--no-media", action="store_true", help="skip opening the media files")
    p.set_defaults(func=_cmd_validate_data)

    p = sub.add_parser("demo", help="CPU demo: MAPO training with verl's main_ppo on the tiny model and demo data")
    p.add_argument("--work-dir", default="demo_run")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny model and the demo data")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--config", default="mapo_cpu_demo", help="recipe name in examples/ or a path to a YAML file")
    p.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for main_ppo, e.g. actor_rollout_ref.rollout.n=8"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("actor-check", help="one teacher-forced update of verl's actor on demo prompts (no rollout)")
    p.add_argument("--work-dir", default="demo_run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=_cmd_actor_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
