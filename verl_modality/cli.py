"""``verl-modality`` command line: set-up helpers, the self-check and the CPU demo.

A user's mistake (a bad option, a missing or unreadable file, a folder that would be overwritten) ends a verb with
one line, ``<verb>: <message>``, and exit status 1 (2 for usage errors, argparse's own included), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verl_modality import options

if TYPE_CHECKING:
    from verl_modality.trainer.demo import DemoConfig

#: the command-line tools of verl's accelerator platforms (nvidia, amd, huawei), looked for as scripts/env.sh does
ACCELERATOR_TOOLS = ("nvidia-smi", "rocm-smi", "npu-smi")


def select_platform(verb: str) -> bool:
    """Select the plugin's ``cpu`` platform (``VERL_PLATFORM=cpu``) when the user chose no platform and no
    accelerator tool is on PATH, saying so on stderr; True when it did. Runs before the verb imports verl: verl picks
    its platform once, when it loads."""
    if os.environ.get("VERL_PLATFORM", "").strip() or any(shutil.which(tool) for tool in ACCELERATOR_TOOLS):
        return False
    os.environ["VERL_PLATFORM"] = "cpu"
    print(
        f"{verb}: no GPU found (none of {', '.join(ACCELERATOR_TOOLS)} on PATH): using the CPU platform, "
        "VERL_PLATFORM=cpu",
        file=sys.stderr,
    )
    from verl_modality.integrations import registry

    registry.install()  # the entries that apply only on the cpu platform
    return True


def one_line(message: Any) -> str:
    """An error message on one line: lines joined with ``; ``, an indented list after a ``heading:`` joined with
    ``, ``; Hydra's search-path listing dropped."""
    parts: list[str] = []
    listing = False
    for raw in str(message).splitlines():
        if raw.startswith("Config search path"):
            break
        line = raw.strip()
        if not line:
            continue
        if parts and raw[:1] in (" ", "\t") and (listing or parts[-1].endswith(":")):
            parts[-1] += (", " if listing else " ") + line
            listing = True
        else:
            parts.append(line)
            listing = False
    return "; ".join(parts)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's mistake raises (bugs still show a traceback); imported only when a verb failed."""
    from verl_modality.audio_contribution.voters import VoterError
    from verl_modality.evaluation.plots import PlotsUnavailable
    from verl_modality.rewards.caption_judge import JudgeError
    from verl_modality.rewards.openai_client import ChatError

    return (ValueError, OSError, VoterError, JudgeError, ChatError, PlotsUnavailable)


def _at_least(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``least`` (argparse names the option when it is not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return value

    return parse


@contextmanager
def _overwrite_flag() -> Iterator[None]:
    """A refusal to overwrite names the command line's ``--overwrite`` instead of the function's argument."""
    try:
        yield
    except FileExistsError as exc:
        raise FileExistsError(str(exc).replace("overwrite=True", "--overwrite")) from None


def _folder_option(value: str | os.PathLike, flag: str, itself: bool = True) -> str | None:
    """The problem with writing into the folder ``value`` (or, without ``itself``, the file ``value``) named by
    ``flag``: a path on the way that is a file. None when there is none."""
    path = Path(value)
    for part in (path, *path.parents) if itself else path.parents:
        if part.exists() and not part.is_dir():
            return f"{flag} {value}: {part} is a file, not a folder"
    return None


def _cmd_doctor(args: argparse.Namespace) -> int:
    from verl_modality.doctor import check

    report = check()
    print(report.render())
    return 0 if report.ok else 1


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from verl_modality.models.family import family_named
    from verl_modality.models.tiny import make_tiny_model

    with _overwrite_flag():
        path = make_tiny_model(args.out_dir, seed=args.seed, overwrite=args.overwrite, family=args.family)
    print(f"tiny {family_named(args.family).title} checkpoint written to {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from verl_modality.models.checkpoint import (
        actor_folder,
        checkpoint_world_size,
        export_thinker,
        trained_thinker_state,
    )

    actor = actor_folder(args.checkpoint)
    problem = _folder_option(args.out, "--out")
    if problem:
        raise ValueError(problem)
    try:
        state, lora = trained_thinker_state(actor, args.base)
        out = export_thinker(args.base, state, args.out)
    except KeyError as err:  # a weight on one side only: --base is not the model the run started from
        raise ValueError(f"--base {args.base} does not match the checkpoint {actor}: {err.args[0]}") from err
    if lora is not None:
        into = f"the thinker of {args.base}" if lora.adapter_only else "the checkpoint's base weights"
        print(
            f"LoRA adapters of {lora.modules} modules (r={lora.r}, lora_alpha={lora.lora_alpha:g}) merged into {into}"
        )
    print(f"thinker of {actor} (world size {checkpoint_world_size(actor)}) written into a copy of {args.base}: {out}")
    return 0


def _cmd_make_demo_data(args: argparse.Namespace) -> int:
    from verl_modality.data.synthetic import make_demo_data

    with _overwrite_flag():
        summary = make_demo_data(
            args.out_dir,
            seed=args.seed,
            n_train=args.n_train,
            n_test=args.n_test,
            caption_every=args.caption_every,
            families=args.families,
            overwrite=args.overwrite,
        )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_augment_qa(args: argparse.Namespace) -> int:
    from verl_modality.data.augmentation import AugmentConfig, augment_file, format_summary
    from verl_modality.data.prompts import PromptConfig

    problem = _folder_option(args.out_path, "OUT.parquet", itself=False)
    if not Path(args.in_path).is_file():
        problem = f"IN.parquet {args.in_path}: no such file"
    if problem:
        print(f"augment-qa: {problem}", file=sys.stderr)
        return 1
    try:
        prompt = PromptConfig.from_config(args.prompt_config) if args.prompt_config else None
        config = options.from_arguments(AugmentConfig, args, prompt=prompt)
        summary = augment_file(args.in_path, args.out_path, config)
    except (OSError, ValueError) as exc:
        print(f"augment-qa: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_path}")
    print(format_summary(summary))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from verl_modality.trainer.demo import DemoConfig, parse_warm_start, run_demo

    try:
        warm_start = parse_warm_start(args.warm_start, flag="--warm-start")
        cfg = options.from_arguments(DemoConfig, args, overrides=tuple(args.overrides), warm_start=warm_start)
        problem = _folder_option(cfg.work_dir, "--work-dir")
        if problem:
            raise ValueError(problem)
    except ValueError as exc:
        print(f"demo: {one_line(exc)}", file=sys.stderr)
        return 2
    select_platform("demo")
    try:
        check_demo_overrides(cfg)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    import signal

    # SIGTERM unwinds like Ctrl-C, so the SFT trainer and main_ppo (own process groups) are stopped with the demo
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_demo(cfg)
    except (RuntimeError, TimeoutError) as exc:
        print(f"[demo] {exc}", file=sys.stderr)
        return 1
    return 0


def check_demo_overrides(cfg: DemoConfig) -> None:
    """Compose every RL run's Hydra config of the demo as ``main_ppo`` will, so that an override Hydra refuses (an
    unknown key or recipe option, bad syntax) fails now, not after the warm start; raises ``ValueError``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from verl_modality.trainer.demo import RECIPES, rl_overrides
    from verl_modality.trainer.launch import config_dir_of

    work = Path(cfg.work_dir).resolve()
    for run in ("mapo", "mupo") if cfg.compare else ("mapo",):
        config_dir, name = config_dir_of(RECIPES[run])
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base=None):
                compose(name, overrides=rl_overrides(cfg, work, work / "model", run))
        except (HydraException, OmegaConfBaseException) as exc:
            raise ValueError(f"Hydra refuses the overrides for {name}: {one_line(exc)}") from None


def _cmd_convert(args: argparse.Namespace) -> int:
    from verl_modality.data.converters import CONVERTERS, convert, layouts
    from verl_modality.data.converters.records import ConvertError

    if args.list:
        print(layouts())
        return 0
    if args.layout not in CONVERTERS:
        what = f"unknown layout {args.layout!r}" if args.layout else "give LAYOUT SOURCE OUT"
        print(f"convert: {what}; the layouts are {', '.join(CONVERTERS)} (convert --list)", file=sys.stderr)
        return 2
    if not args.source or not args.out:
        print("convert: give LAYOUT SOURCE OUT", file=sys.stderr)
        return 2
    try:
        report = convert(args.layout, args.source, args.out, args.media_root, args.on_missing, args.limit)
    except (ConvertError, OSError) as exc:
        print(f"convert: {exc}", file=sys.stderr)
        return 1
    print(report.format())
    return 0 if report.rows_written else 1


def _cmd_actor_check(args: argparse.Namespace) -> int:
    problem = _folder_option(args.work_dir, "--work-dir")
    if problem:
        print(f"actor-check: {problem}", file=sys.stderr)
        return 2
    select_platform("actor-check")
    from verl_modality.trainer.actor_check import run_actor_check

    result = run_actor_check(args.work_dir, seed=args.seed, batch_size=args.batch_size)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _cmd_acf(args: argparse.Namespace) -> int:
    from verl_modality.audio_contribution.filter import ACFConfig, format_report, run_acf
    from verl_modality.audio_contribution.voters import VoterError, load_voter_specs

    try:
        with options.flags_named(ACFConfig, args):  # run_acf checks --min-votes against the voters
            config = options.from_arguments(ACFConfig, args)
            report = run_acf(args.data, load_voter_specs(args.voters), args.out_dir, config)
    except (OSError, ValueError, VoterError) as exc:
        print(f"acf: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(f"wrote {report['files']['weak']}, {report['files']['strong']} and {args.out_dir}/report.json")
    return 0


def _cmd_w2s(args: argparse.Namespace) -> int:
    from verl_modality.audio_contribution.weak_to_strong import W2SConfig, build_w2s

    try:
        config = options.from_arguments(W2SConfig, args)
        summary = build_w2s(args.weak, args.strong, args.out_dir, config)
    except (OSError, ValueError) as exc:
        print(f"w2s: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_validate_data(args: argparse.Namespace) -> int:
    from verl_modality.data import media
    from verl_modality.data import report as data_report

    with media.probe_depth(full=not args.quick):
        return data_report.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verl-modality", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check that verl loaded the plugin and every registration is in place")
    p.set_defaults(func=_cmd_doctor)

    from verl_modality.models.tiny import BUILDERS, DEFAULT_FAMILY  # a light module: names only

    p = sub.add_parser("make-tiny-model", help="build a tiny random-weight Omni checkpoint offline")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--family", choices=tuple(BUILDERS), default=DEFAULT_FAMILY, help="model family (default: %(default)s)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.set_defaults(func=_cmd_make_tiny_model)

    p = sub.add_parser(
        "export",
        help="write a verl actor checkpoint (any world size; LoRA adapters merged) into a full Omni model folder that "
        "eval and verl load",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run's global_step_N folder (or its actor folder); a LoRA run's needs its lora_train_meta.json",
    )
    p.add_argument("--base", required=True, help="the full Omni checkpoint the run started from (talker, processor)")
    p.add_argument("--out", required=True, help="the model folder to write (replaced if it exists)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("make-demo-data", help="write the synthetic tagged QA demo set (train/test parquet + media)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--n-train", type=_at_least(1), default=56)
    p.add_argument("--n-test", type=_at_least(0), default=28)
    p.add_argument("--caption-every", type=_at_least(0), default=0, help="every k-th record is a caption row (0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace the train.parquet / test.parquet already there")
    p.add_argument(
        "--families", choices=("classic", "balanced"), default="classic",
        help="balanced: pitch questions in every tag holding A (the demo's learnable set)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_make_demo_data)

    from verl_modality.data import report as data_report

    p = sub.add_parser(
        "validate-data",
        help="report rows per tag/stratum/level and every schema or media problem; exit 1 when there are any",
    )
    data_report.add_arguments(p)
    p.add_argument("--quick", action="store_true", help="probe only the first second / frame of each media file")
    p.set_defaults(func=_cmd_validate_data)

    from verl_modality.evaluation import report as eval_report

    p = sub.add_parser(
        "report", help="evaluation report: pass@1 per tag/stratum, modality gap, decay; or recompute a published table"
    )
    eval_report.add_arguments(p)

    p = sub.add_parser("augment-qa", help="MAPLE-QA+: exact, superset and deficit variants with none-answers")
    p.add_argument("in_path", metavar="IN.parquet", help="exact QA rows")
    p.add_argument("out_path", metavar="OUT.parquet")
    from verl_modality.data.augmentation import AugmentConfig

    options.add_arguments(p, AugmentConfig, skip=("prompt",))
    p.add_argument("--prompt-config", default=None, help="YAML file of a PromptConfig (default: the standard prompt)")
    p.set_defaults(func=_cmd_augment_qa)

    p = sub.add_parser(
        "demo", help="CPU demo: warm start with verl's SFT trainer, then MAPO (and with --compare MUPO) with main_ppo"
    )
    from verl_modality.trainer.demo import DemoConfig

    options.add_arguments(p, DemoConfig, skip=("overrides", "warm_start"))
    p.add_argument(
        "--warm-start", action="append", default=[], metavar="KEY=VALUE",
        help="warm-start option (max_steps, eval_every, window_low, window_high, heldout_per_tag, lr, ...)",
    )  # fmt: skip
    p.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for every main_ppo run, e.g. actor_rollout_ref.rollout.n=4"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("convert", help="convert a public benchmark (MMAU, MMSU, MMAR, Daily-Omni, ...) to the schema")
    p.add_argument("layout", nargs="?", default=None, metavar="LAYOUT", help="source layout (see --list)")
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE", help="the benchmark's json/jsonl/parquet")
    p.add_argument("out", nargs="?", default=None, metavar="OUT", help="schema parquet to write")
    p.add_argument("--media-root", default=None, help="root of the media paths (default: SOURCE's directory)")
    p.add_argument("--on-missing", choices=("fail", "skip"), default="fail", help="rows with missing/bad media")
    p.add_argument("--limit", type=_at_least(1), default=None, help="convert only the first N records")
    p.add_argument("--list", action="store_true", help="list the layouts and exit")
    p.set_defaults(func=_cmd_convert)

    from verl_modality.evaluation import runner as eval_runner

    p = sub.add_parser("eval", help="sample k responses per query of a test parquet, score them, write RESULTS.jsonl")
    eval_runner.add_arguments(p)

    p = sub.add_parser("actor-check", help="one teacher-forced update of verl's actor on demo prompts (no rollout)")
    p.add_argument("--work-dir", default="demo_run")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--batch-size", type=_at_least(1), default=4)
    p.set_defaults(func=_cmd_actor_check)

    p = sub.add_parser("acf", help="audio-contribution filtering: voters answer under silence; weak / strong split")
    p.add_argument("--data", required=True, metavar="IN.parquet", help="multiple-choice rows in the schema")
    p.add_argument("--voters", required=True, metavar="VOTERS.yaml", help="voters file (YAML or JSON)")
    p.add_argument("--out-dir", required=True, help="answers, silent wav, weak/strong/all parquet, report.json")
    from verl_modality.audio_contribution.filter import ACFConfig

    options.add_arguments(p, ACFConfig, skip=("sample_rate",))
    p.set_defaults(func=_cmd_acf)

    p = sub.add_parser("w2s", help="Weak-to-Strong / Mixed-to-Strong: SFT and RL parquet files from an ACF split")
    p.add_argument("--weak", required=True, metavar="weak.parquet")
    p.add_argument("--strong", required=True, metavar="strong.parquet")
    p.add_argument("--out-dir", required=True, help="sft.parquet, rl.parquet, summary.json")
    from verl_modality.audio_contribution.weak_to_strong import W2SConfig

    options.add_arguments(p, W2SConfig)
    p.set_defaults(func=_cmd_w2s)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The plugin's changes apply to this process as they do where verl loads it (e.g. eval's transformers loading);
    # hooking them imports nothing.
    from verl_modality.integrations import registry

    registry.install()
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        print(f"{args.command}: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
