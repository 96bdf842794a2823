"""Bad input, table-driven: every verb (doctor aside) and the option loaders answer a user's mistake with one line that
names the file / row / id / field / option, exit status 1 (2 for usage errors) or the documented exception, and
leave the user's files as they were (nothing written, nothing lost). No case starts training or loads a model."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from verl_modality import cli
from verl_modality.data import media, schema, validate
from verl_modality.data.synthetic import make_demo_data

REPO = Path(__file__).resolve().parents[1]
NAN_ROW = 2  # the row of the NaN set whose wav turns NaN after the first second


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A tiny valid set: train.parquet and test.parquet of 7 rows each, with media."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, seed=0, n_train=7, n_test=7, progress=False)
    return out


@pytest.fixture(scope="module")
def nan_dir(tmp_path_factory) -> Path:
    """7 rows whose row-2 wav is finite for its first 1.2 s and NaN after (a first-second probe misses it)."""
    out = tmp_path_factory.mktemp("nan")
    make_demo_data(out, seed=0, n_train=7, n_test=0, progress=False)
    wav = out / "media" / "train" / f"demo-train-{NAN_ROW:04d}.wav"
    wave = media.load_audio(wav)
    wave[int(1.2 * media.SAMPLE_RATE) :] = np.nan
    media.write_audio(wav, wave)
    return out


@pytest.fixture(autouse=True)
def _nothing_heavy_starts(monkeypatch):
    """A case that got past its check would train or load a model: fail it instead."""

    def started(*args, **kwargs):
        raise AssertionError("a bad-input case started training or loaded a model")

    monkeypatch.setattr("verl_modality.trainer.demo.run_demo", started)
    monkeypatch.setattr("verl_modality.trainer.launch.run_main_ppo", started)
    monkeypatch.setattr("verl_modality.trainer.actor_check.run_actor_check", started)
    monkeypatch.setattr("verl_modality.evaluation.backends.make_backend", started)
    monkeypatch.setenv("VERL_PLATFORM", "cpu")  # the platform note is tested on its own below


def _tree(*roots: Path) -> dict[str, str]:
    """Every file (its digest) and folder under the roots."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            key = str(path)
            out[key] = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------------------------
# inputs the cases build in their own folder (the working directory of the case)


def user_parquets(work: Path, demo: Path) -> None:
    (work / "d").mkdir()
    (work / "d" / "train.parquet").write_bytes((demo / "train.parquet").read_bytes())
    (work / "d" / "test.parquet").write_bytes(b"the user's own test file")


def user_test_only(work: Path, demo: Path) -> None:
    (work / "d").mkdir()
    (work / "d" / "test.parquet").write_bytes(b"the user's own test file")


def notes_dir(work: Path, demo: Path) -> None:
    (work / "m").mkdir()
    (work / "m" / "notes.txt").write_text("not a model")


def a_file(work: Path, demo: Path) -> None:
    (work / "f").write_text("a plain file")


def notes_dir_and_a_file(work: Path, demo: Path) -> None:
    notes_dir(work, demo)
    a_file(work, demo)


def text_files(work: Path, demo: Path) -> None:
    (work / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    (work / "notes.txt").write_text("not a parquet file")


def voters(work: Path, demo: Path) -> None:
    entries = "".join(f"  - name: v{i}\n    kind: callable\n    target: json:dumps\n" for i in (1, 2))
    (work / "voters.yaml").write_text("voters:\n" + entries)
    (work / "typo.yaml").write_text(
        "voters:\n  - name: v1\n    kind: callable\n    target: json:dumps\n    batchsize: 2\n"
    )
    (work / "local.yaml").write_text("voters:\n  - name: v1\n    kind: local\n  - name: v2\n    kind: local\n")


def model_dir(work: Path, demo: Path) -> None:
    (work / "model").mkdir()


def model_and_nan_wav(work: Path, demo: Path) -> None:
    """A model folder and a copy of the demo set whose row-NAN_ROW wav is NaN from its 100th sample (within the first
    second, which the quick probe that eval's loading runs reads)."""
    model_dir(work, demo)
    shutil.copytree(demo, work / "e")
    wav = work / "e" / "media" / "train" / f"demo-train-{NAN_ROW:04d}.wav"
    wave = media.load_audio(wav)
    wave[100:] = np.nan
    media.write_audio(wav, wave)


def bad_row(work: Path, demo: Path) -> None:
    rows = schema.read_rows(demo / "train.parquet")
    rows[4]["answer"] = "Z"
    schema.write_rows(rows, work / "badrow.parquet")


def bad_config_values(work: Path, demo: Path) -> None:
    """A model folder, and a judge file and a prompt file each with a bad value."""
    model_dir(work, demo)
    (work / "judge.yaml").write_text("base_url: http://127.0.0.1:9/v1\nmodel: m\ntimeout_s: 30s\n")
    (work / "prompt.yaml").write_text("style: bogus\n")


def published_tables(work: Path, demo: Path) -> None:
    (work / "nocount.csv").write_text("row,V,A\nsamples,10,\nmodel-x,50,60\n")
    (work / "badtag.csv").write_text("tag,accuracy,samples\nQ,50,10\n")


@dataclass(frozen=True)
class Case:
    """``argv`` with ``{demo}`` / ``{nan}`` for the shared sets; the message must hold every string of ``names`` and
    none of ``absent`` (``stream``: the one-line error on stderr, or the report on stdout for validate-data). A bad
    value given by a flag is named by the flag as typed (``--steps 0``), never by its dataclass path (``demo.steps``);
    one read from a file keeps the file and the field."""

    id: str
    argv: tuple[str, ...]
    code: int
    names: tuple[str, ...]
    setup: object = None
    stream: str = "err"
    creates: tuple[str, ...] = ()  # paths a failing run may leave behind (relative to the case folder)
    xfail: str | None = None
    absent: tuple[str, ...] = ()


CASES = [
    # make-tiny-model
    Case("tiny-nonempty-dir", ("make-tiny-model", "m"), 1, ("make-tiny-model:", "m", "--overwrite"), notes_dir),
    Case("tiny-overwrite-not-a-model", ("make-tiny-model", "m", "--overwrite"), 1, ("m", "config.json"), notes_dir),
    Case("tiny-out-is-a-file", ("make-tiny-model", "f"), 1, ("f", "is a file"), a_file),
    Case("tiny-parent-is-a-file", ("make-tiny-model", "f/model"), 1, ("f", "is a file"), a_file),
    Case("tiny-seed-not-int", ("make-tiny-model", "out", "--seed", "x"), 2, ("--seed",)),
    Case("tiny-no-dir", ("make-tiny-model",), 2, ("out_dir",)),
    # make-demo-data
    Case("data-n-train-0", ("make-demo-data", "out", "--n-train", "0"), 2, ("--n-train", ">= 1")),
    Case("data-n-test-negative", ("make-demo-data", "out", "--n-test", "-1"), 2, ("--n-test", ">= 0")),
    Case("data-caption-every-negative", ("make-demo-data", "out", "--caption-every", "-2"), 2, ("--caption-every",)),
    Case("data-seed-negative", ("make-demo-data", "out", "--seed", "-1"), 2, ("--seed",)),
    Case("data-families", ("make-demo-data", "out", "--families", "wide"), 2, ("--families", "wide")),
    Case(
        "data-users-parquets",
        ("make-demo-data", "d"),
        1,
        ("make-demo-data:", "train.parquet", "test.parquet", "--overwrite"),
        user_parquets,
    ),
    Case("data-users-test-kept", ("make-demo-data", "d", "--n-test", "0"), 1, ("test.parquet",), user_test_only),
    Case("data-out-is-a-file", ("make-demo-data", "f"), 1, ("f", "is a file"), a_file),
    Case("data-parent-is-a-file", ("make-demo-data", "f/data"), 1, ("f", "is a file"), a_file),
    # validate-data
    Case(
        "validate-missing-file",
        ("validate-data", "nope.parquet", "--no-progress"),
        1,
        ("nope.parquet", "cannot read"),
        stream="out",
    ),  # fmt: skip
    Case("validate-missing-file-err", ("validate-data", "nope.parquet", "--no-progress"), 1, ("INVALID nope.parquet",)),
    Case("validate-not-parquet", ("validate-data", "notes.txt", "--no-progress"), 1, ("notes.txt",), text_files),
    Case(
        "validate-nan-after-1s",
        ("validate-data", "{nan}/train.parquet", "--no-progress"),
        1,
        (f"row {NAN_ROW}", f"demo-train-{NAN_ROW:04d}", "non-finite", "1.20 s"),
        stream="out",
    ),
    Case(
        "validate-bad-answer",
        ("validate-data", "badrow.parquet", "--no-media", "--no-progress"),
        1,
        ("row 4", "demo-train-0004", "answer"),
        bad_row,
        stream="out",
    ),
    Case(
        "validate-media-root-elsewhere",
        ("validate-data", "{demo}/test.parquet", "--media-root", "nowhere", "--no-progress"),
        1,
        ("row 0", "demo-test-0000", "not found"),
        stream="out",
    ),
    Case("validate-no-files", ("validate-data",), 2, ("files",)),
    # convert
    Case("convert-limit-negative", ("convert", "mmau", "src.json", "out.parquet", "--limit", "-1"), 2, ("--limit",)),
    Case("convert-limit-zero", ("convert", "mmau", "src.json", "out.parquet", "--limit", "0"), 2, ("--limit",)),
    Case("convert-unknown-layout", ("convert", "nope", "src.json", "out.parquet"), 2, ("'nope'", "mmau")),
    Case("convert-no-out", ("convert", "mmau", "src.json"), 2, ("LAYOUT SOURCE OUT",)),
    Case("convert-missing-source", ("convert", "mmau", "src.json", "out.parquet"), 1, ("src.json", "not found")),
    Case("convert-not-json", ("convert", "mmau", "bad.jsonl", "out.parquet"), 1, ("bad.jsonl", "line 2"), text_files),
    Case("convert-on-missing", ("convert", "mmau", "s", "o", "--on-missing", "ignore"), 2, ("--on-missing",)),
    # augment-qa
    Case("augment-missing-input", ("augment-qa", "nope.parquet", "out.parquet"), 1, ("nope.parquet",)),
    Case("augment-not-parquet", ("augment-qa", "notes.txt", "out.parquet"), 1, ("notes.txt",), text_files),
    Case(
        "augment-rate",
        ("augment-qa", "{demo}/train.parquet", "out.parquet", "--rate", "2"),
        1,
        ("augment-qa: --rate 2.0: expected a finite number >= 0 and <= 1",),
        absent=("augment.rate",),
    ),
    Case(
        "augment-rate-negative",
        ("augment-qa", "{demo}/train.parquet", "out.parquet", "--rate", "-0.5"),
        1,
        ("--rate -0.5: expected",),
        absent=("augment.",),
    ),
    Case(
        "augment-prompt-config-value",
        ("augment-qa", "{demo}/train.parquet", "out.parquet", "--prompt-config", "prompt.yaml"),
        1,
        ("prompt.yaml", "prompt.style='bogus'"),  # from a file: the file and the field
        bad_config_values,
    ),
    Case("augment-combinations", ("augment-qa", "{demo}/train.parquet", "o", "--combinations", "x"), 2, ("--comb",)),
    Case(
        "augment-prompt-config",
        ("augment-qa", "{demo}/train.parquet", "out.parquet", "--prompt-config", "nope.yaml"),
        1,
        ("nope.yaml",),
    ),
    Case("augment-out-under-a-file", ("augment-qa", "{demo}/train.parquet", "f/o.parquet"), 1, ("f",), a_file),
    # demo: settings and overrides only (run_demo is never reached)
    Case(
        "demo-steps-0", ("demo", "--steps", "0"), 2, ("demo: --steps 0: expected an integer >= 1",), absent=("demo.",)
    ),
    Case("demo-steps-negative", ("demo", "--steps", "-1"), 2, ("--steps -1: expected",), absent=("demo.",)),
    Case(
        "demo-val-rows",
        ("demo", "--val-rows", "500"),
        2,
        ("demo: --val-rows (500) must be <= --n-test (350)",),
        absent=("demo.",),
    ),
    Case("demo-val-every", ("demo", "--val-every", "0"), 2, ("demo: --val-every 0: expected an integer >= 1",)),
    Case("demo-rl-per-tag", ("demo", "--rl-per-tag", "0"), 2, ("--rl-per-tag 0",), absent=("demo.",)),
    Case("demo-timeout", ("demo", "--timeout-s", "0"), 2, ("--timeout-s 0.0: expected a finite number > 0",)),
    Case("demo-rl-lr", ("demo", "--rl-lr", "-1"), 2, ("--rl-lr -1.0",), absent=("demo.",)),
    Case("demo-rollout", ("demo", "--rollout", "nope"), 2, ("--rollout",)),
    Case("demo-warm-start-no-equals", ("demo", "--warm-start", "max_steps"), 2, ("--warm-start 'max_steps'",)),
    Case(
        "demo-warm-start-type",
        ("demo", "--warm-start", "max_steps=abc"),
        2,
        ("demo: --warm-start max_steps='abc': expected an integer >= 1",),
        absent=("warm_start.",),
    ),
    Case("demo-warm-start-unknown", ("demo", "--warm-start", "nope=1"), 2, ("--warm-start ['nope']", "max_steps")),
    Case(
        "demo-warm-start-window",
        ("demo", "--warm-start", "window_low=0.9", "--warm-start", "window_high=0.5"),
        2,
        ("--warm-start window_low=0.9", "--warm-start window_high=0.5"),
        absent=("warm_start.",),
    ),
    Case("demo-work-dir-file", ("demo", "--work-dir", "f"), 2, ("--work-dir", "f"), a_file),
    Case("demo-unknown-recipe", ("demo", "cpu_rollout=nope"), 2, ("cpu_rollout/nope", "hf, vllm")),
    Case("demo-unknown-key", ("demo", "actor_rollout_ref.rollout.nn=4"), 2, ("actor_rollout_ref.rollout.nn",)),
    Case("demo-override-syntax", ("demo", "trainer.total_epochs"), 2, ("trainer.total_epochs",)),
    Case("demo-compare-unknown-key", ("demo", "--compare", "algorithm.mapo.nope=1"), 2, ("algorithm.mapo.nope",)),
    # actor-check: arguments only
    Case("actor-batch-size-0", ("actor-check", "--batch-size", "0"), 2, ("--batch-size",)),
    Case("actor-batch-size-text", ("actor-check", "--batch-size", "four"), 2, ("--batch-size",)),
    Case("actor-seed", ("actor-check", "--seed", "-3"), 2, ("--seed",)),
    Case("actor-work-dir-file", ("actor-check", "--work-dir", "f"), 2, ("--work-dir", "f"), a_file),
    Case("actor-unknown-flag", ("actor-check", "--steps", "3"), 2, ("--steps",)),
]

EVAL = ("eval", "--model", "model", "--data", "{demo}/test.parquet", "--out", "res.jsonl")
CASES += [
    Case("eval-k-0", (*EVAL, "--k", "0"), 1, ("eval: --k 0: expected an integer >= 1",), model_dir, absent=("eval.",)),
    Case("eval-top-p", (*EVAL, "--top-p", "2"), 1, ("--top-p 2.0: expected",), model_dir, absent=("eval.",)),
    Case("eval-limit", (*EVAL, "--limit", "0"), 1, ("eval: --limit 0: expected an integer >= 1",), model_dir),
    Case("eval-temperature", (*EVAL, "--temperature", "-1"), 1, ("--temperature -1.0",), model_dir, absent=("eval.",)),
    Case(
        "eval-policy",
        (*EVAL, "--policy", "bogus"),
        1,
        ("eval: --policy: unknown modality policy 'bogus'",),
        model_dir,
        absent=("data.modality", "eval.policy"),
    ),
    Case(
        "eval-judge-config-value",
        (*EVAL, "--judge-config", "judge.yaml"),
        1,
        ("--judge-config judge.yaml", "judge.timeout_s='30s'"),  # from a file: the file and the field
        bad_config_values,
    ),
    Case("eval-ablation", (*EVAL, "--ablation", "mute"), 2, ("--ablation",), model_dir),
    Case("eval-benchmark", (*EVAL, "--benchmark", "nope"), 1, ("--benchmark", "'nope'"), model_dir),
    Case("eval-benchmark-version", (*EVAL, "--benchmark-version", "1"), 1, ("--benchmark-version",), model_dir),
    Case("eval-judge-config", (*EVAL, "--judge-config", "nope.yaml"), 1, ("--judge-config", "nope.yaml"), model_dir),
    Case(
        "eval-missing-data",
        ("eval", "--model", "model", "--data", "nope.parquet", "--out", "res.jsonl"),
        1,
        ("nope.parquet",),
        model_dir,
    ),
    Case(
        "eval-nan-media",
        ("eval", "--model", "model", "--data", "e/train.parquet", "--out", "res.jsonl"),
        1,
        (f"row {NAN_ROW}", f"demo-train-{NAN_ROW:04d}", "non-finite"),
        model_and_nan_wav,
    ),
    Case("eval-no-such-model", ("eval", "--model", "/no/such/dir", *EVAL[3:]), 1, ("--model", "/no/such/dir")),
    Case("eval-no-model-flag", ("eval", *EVAL[3:]), 2, ("--model",)),
    # report
    Case("report-nothing", ("report",), 2, ("RESULTS.jsonl", "--table")),
    Case("report-bins", ("report", "res.jsonl", "--bins", "0"), 2, ("--bins",)),
    Case("report-bin-edges", ("report", "res.jsonl", "--bin-edges", "a,b"), 2, ("--bin-edges",)),
    Case("report-missing-results", ("report", "nope.jsonl"), 1, ("nope.jsonl",)),
    Case("report-bad-results", ("report", "bad.jsonl"), 1, ("bad.jsonl:1", "missing field"), text_files),
    Case("report-missing-table", ("report", "--table", "nope.csv"), 1, ("nope.csv",)),
    Case("report-table-no-count", ("report", "--table", "nocount.csv"), 1, ("nocount.csv", "'A'"), published_tables),
    Case("report-table-bad-tag", ("report", "--table", "badtag.csv"), 1, ("badtag.csv", "'Q'"), published_tables),
]

EXPORT = ("export", "--base", "{demo}")
CASES += [
    Case("export-no-checkpoint", (*EXPORT, "--checkpoint", "nope", "--out", "o"), 1, ("nope", "no such checkpoint")),
    Case(
        "export-not-a-checkpoint",
        (*EXPORT, "--checkpoint", "m", "--out", "o"),
        1,
        ("m", "model_world_size_*_rank_*.pt"),
        notes_dir,
    ),
    Case(
        "export-out-is-a-file",
        (*EXPORT, "--checkpoint", "m", "--out", "f/x"),
        1,
        ("--out f/x", "f is a file"),
        notes_dir_and_a_file,
    ),
    Case("export-no-base", ("export", "--checkpoint", "m", "--out", "o"), 2, ("--base",)),
]

ACF = ("acf", "--voters", "voters.yaml", "--out-dir", "acf")
CASES += [
    Case("acf-missing-data", (*ACF, "--data", "nope.parquet"), 1, ("nope.parquet",), voters),
    Case(
        "acf-missing-voters",
        ("acf", "--data", "{demo}/train.parquet", "--voters", "no.yaml", "--out-dir", "o"),
        1,
        ("no.yaml",),
    ),  # fmt: skip
    Case(
        "acf-voters-typo",
        ("acf", "--data", "{demo}/train.parquet", "--voters", "typo.yaml", "--out-dir", "o"),
        1,
        ("typo.yaml", "voters.v1.['batchsize']"),  # from a file: the file and the field
        voters,
    ),  # fmt: skip
    Case(
        "acf-local-without-model",
        ("acf", "--data", "{demo}/train.parquet", "--voters", "local.yaml", "--out-dir", "o"),
        1,
        ("v1", "model_path"),
        voters,
    ),  # fmt: skip
    Case(
        "acf-min-votes-0",
        (*ACF, "--data", "{demo}/train.parquet", "--min-votes", "0"),
        1,
        ("acf: --min-votes 0: expected an integer >= 1",),
        voters,
        absent=("acf.",),
    ),
    Case(
        "acf-min-votes-3",
        (*ACF, "--data", "{demo}/train.parquet", "--min-votes", "3"),
        1,
        ("acf: --min-votes 3 is more than the 2 voter(s)",),
        voters,
        absent=("min_votes",),
    ),
    Case(
        "acf-limit", (*ACF, "--data", "{demo}/train.parquet", "--limit", "0"), 1, ("acf: --limit 0: expected",), voters
    ),
    Case(
        "acf-silence",
        (*ACF, "--data", "{demo}/train.parquet", "--silence-seconds", "0"),
        1,
        ("--silence-seconds 0.0: expected a finite number > 0",),
        voters,
        absent=("acf.",),
    ),
    Case("acf-no-voters-flag", ("acf", "--data", "x.parquet", "--out-dir", "o"), 2, ("--voters",)),
]

W2S = ("w2s", "--out-dir", "w")
CASES += [
    Case("w2s-missing-weak", (*W2S, "--weak", "nope.parquet", "--strong", "{demo}/test.parquet"), 1, ("weak", "nope")),
    Case("w2s-missing-strong", (*W2S, "--weak", "{demo}/train.parquet", "--strong", "no.parquet"), 1, ("strong", "no")),
    Case(
        "w2s-weak-not-parquet",
        (*W2S, "--weak", "notes.txt", "--strong", "{demo}/test.parquet"),
        1,
        ("notes.txt",),
        text_files,
    ),  # fmt: skip
    Case(
        "w2s-same-ids",
        (*W2S, "--weak", "{demo}/train.parquet", "--strong", "{demo}/train.parquet"),
        1,
        ("in both", "train.parquet"),
    ),  # fmt: skip
    Case(
        "w2s-fraction",
        (*W2S, "--weak", "{demo}/train.parquet", "--strong", "{demo}/test.parquet", "--sft-strong-fraction", "1.5"),
        1,
        ("w2s: --sft-strong-fraction 1.5: expected a finite number > 0 and < 1",),
        absent=("w2s.",),
    ),  # fmt: skip
    Case(
        "w2s-fraction-0",
        (*W2S, "--weak", "{demo}/train.parquet", "--strong", "{demo}/test.parquet", "--sft-strong-fraction", "0"),
        1,
        ("--sft-strong-fraction 0.0: expected",),
        absent=("w2s.",),
    ),  # fmt: skip
    Case("w2s-paradigm", (*W2S, "--weak", "a", "--strong", "b", "--paradigm", "nope"), 2, ("--paradigm",)),
    # the command itself
    Case("unknown-verb", ("train",), 2, ("'train'",)),
    Case("no-verb", (), 2, ("command",)),
]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
        for c in CASES
    ],
)
def test_cli_bad_input(case: Case, tmp_path, monkeypatch, capsys, demo_dir, nan_dir):
    monkeypatch.chdir(tmp_path)
    if case.setup is not None:
        case.setup(tmp_path, demo_dir)
    before = _tree(tmp_path, demo_dir, nan_dir)
    argv = [a.format(demo=demo_dir, nan=nan_dir) for a in case.argv]

    code, out, err = run_cli(argv, capsys)

    assert code == case.code, (code, out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    if case.code == 2 and lines and lines[-1].startswith("verl-modality"):  # argparse: usage, then one error line
        message = lines[-1]
        assert ": error: " in message
    else:
        assert len(lines) == 1, err
        message = lines[0] if case.stream == "err" else out
        assert case.stream == "out" or message.startswith(f"{argv[0]}:" if argv[0] != "validate-data" else "INVALID")
    for name in case.names:
        assert name in message, (name, message)
    for name in case.absent:
        assert name not in message, (name, message)
    if argv and message.startswith(f"{argv[0]}: --"):  # a flag named: never with a null that a command line cannot give
        assert not message.endswith(" or null"), message
    after = _tree(tmp_path, demo_dir, nan_dir)
    allowed = {str(tmp_path / c) for c in case.creates}
    assert {k: v for k, v in after.items() if k not in allowed} == before  # nothing written, changed or lost


def test_table_covers_every_verb_and_sixty_cases():
    verbs = {c.argv[0] for c in CASES if c.argv}
    parser_verbs = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert parser_verbs - verbs == {"doctor"}
    assert len(CASES) + len(API_CASES) >= 60


# ---------------------------------------------------------------------------------------------------------------
# what the user would otherwise lose, or pay for: checked beyond the message


def test_overwrite_replaces_the_users_parquets_only_when_asked(tmp_path, capsys):
    out = tmp_path / "d"
    make_demo_data(out, seed=0, n_train=7, n_test=7, progress=False)
    (out / "test.parquet").write_bytes(b"mine")
    code, _, err = run_cli(["make-demo-data", str(out), "--n-train", "7", "--n-test", "0"], capsys)
    assert code == 1 and (out / "test.parquet").read_bytes() == b"mine", err
    code, _, err = run_cli(["make-demo-data", str(out), "--n-train", "7", "--n-test", "0", "--overwrite"], capsys)
    assert code == 0 and not (out / "test.parquet").exists(), err
    assert validate.validate_file(out / "train.parquet") == 7


def test_the_demo_rebuilds_its_own_data_folder_without_a_flag(tmp_path):
    import json

    from verl_modality.trainer.demo import DATA_MARKER, DemoConfig, prepare_inputs

    work = tmp_path / "run"
    (work / "model").mkdir(parents=True)
    (work / "model" / "demo_model.json").write_text(json.dumps({"seed": 0}) + "\n")  # the model is current
    make_demo_data(work / "data", seed=1, n_train=7, n_test=7, progress=False)  # an earlier run's data
    (work / "data" / DATA_MARKER).write_text(json.dumps({"seed": 1}) + "\n")
    cfg = DemoConfig(work_dir=work, n_train=14, n_test=7, val_rows=7)
    prepare_inputs(cfg, say=lambda _: None)
    assert len(schema.read_rows(work / "data" / "train.parquet")) == 14
    assert json.loads((work / "data" / DATA_MARKER).read_text())["n_train"] == 14


def test_validate_data_quick_probes_only_the_first_second(nan_dir, capsys):
    code, out, _ = run_cli(["validate-data", str(nan_dir / "train.parquet"), "--no-progress", "--quick"], capsys)
    assert code == 0, out
    assert not media.FULL_PROBE  # the command's full check does not outlive it
    code, out, _ = run_cli(["validate-data", str(nan_dir / "train.parquet"), "--no-progress"], capsys)
    assert code == 1 and "non-finite" in out


def test_cpu_platform_is_chosen_without_an_accelerator(monkeypatch, capsys):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    monkeypatch.setattr(cli.shutil, "which", lambda tool: None)
    assert cli.select_platform("demo") and os.environ["VERL_PLATFORM"] == "cpu"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("demo: ") and "VERL_PLATFORM=cpu" in err[0]
    assert not cli.select_platform("demo")  # chosen once; a user's choice is never replaced


def test_accelerator_or_users_platform_is_left_alone(monkeypatch, capsys):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    monkeypatch.setattr(cli.shutil, "which", lambda tool: f"/usr/bin/{tool}" if tool == "nvidia-smi" else None)
    assert not cli.select_platform("demo") and "VERL_PLATFORM" not in os.environ
    monkeypatch.setenv("VERL_PLATFORM", "nvidia")
    monkeypatch.setattr(cli.shutil, "which", lambda tool: None)
    assert not cli.select_platform("actor-check") and os.environ["VERL_PLATFORM"] == "nvidia"
    assert capsys.readouterr().err == ""


def test_demo_run_directly_selects_the_cpu_platform_before_verl_loads(tmp_path):
    """A fresh process without VERL_PLATFORM and with no accelerator tool on PATH (the venv's bin only): the demo
    says it chose the CPU platform, then its overrides are checked against verl's config (verl loads under it)."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env["PATH"] = str(Path(sys.executable).parent)
    proc = subprocess.run(
        [sys.executable, "-m", "verl_modality.cli", "demo", "--work-dir", str(tmp_path / "run"), "cpu_rollout=nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[0].startswith("demo: no GPU found") and "VERL_PLATFORM=cpu" in lines[0]
    assert lines[-1].startswith("demo: Hydra refuses") and "cpu_rollout/nope" in lines[-1]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# the Python APIs: the exception type and the option, file, row or id it names


def _curriculum(values):
    from omegaconf import OmegaConf

    from verl_modality.data.curriculum import CurriculumConfig

    return lambda: CurriculumConfig.from_config(OmegaConf.create({"curriculum": values}))


def _modality(values):
    from verl_modality.data.modality_view import ModalityView

    return lambda: ModalityView.from_config({"modality": values})


def _judge(**values):
    from verl_modality.rewards.caption_judge import CaptionJudgeConfig

    return lambda: CaptionJudgeConfig.from_dict({"base_url": "http://127.0.0.1:9/v1", "model": "m", **values})


def _answer_kwargs(**values):
    from verl_modality.rewards.choice import AnswerRewardConfig

    return lambda: AnswerRewardConfig.from_kwargs(values)


def _mapo(values):
    from verl_modality.algorithms.config import MapoConfig

    return lambda: MapoConfig.from_algorithm_config({"mapo": values})


def _mapo_at(values):
    from verl_modality.algorithms.config import MapoATConfig

    return lambda: MapoATConfig.from_algorithm_config({"mapo_at": values})


def _ground_truth_outside_options():
    from verl_modality.rewards.choice import compute_score

    return compute_score("verl_modality/demo", "[B]", "E", {"choices": ["a", "b", "c"], "id": "q-7"})


def _make_demo_data(**kwargs):
    return lambda tmp: make_demo_data(tmp / "out", progress=False, **{"n_train": 7, "n_test": 0, **kwargs})


def users_train_parquet(tmp):
    (tmp / "train.parquet").write_bytes(b"mine")


def late_inf_wav(tmp):
    wave = np.zeros(2 * media.SAMPLE_RATE, np.float32)
    wave[int(1.5 * media.SAMPLE_RATE) :] = np.inf
    media.write_audio(tmp / "late.wav", wave)


def _tiny_model(tmp):
    from verl_modality.models.tiny import make_tiny_model

    return make_tiny_model(tmp / "m")


def _validate_rows_nan(tmp, nan):
    rows = schema.read_rows(nan / "train.parquet")
    with media.probe_depth(full=True):  # what validate-data does; loading for training probes the first second
        return validate.validate_rows(rows, root=nan, check_media=True, source="train.parquet")


# (id, setup of the user's files, call, exception, what the message names)
API_CASES = [
    ("curriculum-window", None, _curriculum({"window": "five"}), ValueError, ("data.curriculum.window",)),
    ("curriculum-order", None, _curriculum({"order": "random"}), ValueError, ("data.curriculum.order",)),
    ("curriculum-unknown", None, _curriculum({"windw": 3}), ValueError, ("data.curriculum.['windw']",)),
    ("modality-policy", None, _modality({"policy": "loud"}), ValueError, ("data.modality.policy", "'loud'")),
    ("modality-ablation", None, _modality({"ablation": "mute"}), ValueError, ("data.modality.ablation",)),
    (
        "modality-by-source",
        None,
        _modality({"by_source": {"mmau": "xyz"}}),
        ValueError,
        ("data.modality.by_source.mmau",),
    ),  # fmt: skip
    ("modality-unknown", None, _modality({"policy": "exact", "seeds": 1}), ValueError, ("data.modality.['seeds']",)),
    ("judge-timeout", None, _judge(timeout_s="30s"), ValueError, ("judge.timeout_s",)),
    ("judge-concurrency", None, _judge(concurrency=0), ValueError, ("judge.concurrency",)),
    ("judge-unknown", None, _judge(temprature=0), ValueError, ("judge.['temprature']",)),
    ("answer-format", None, _answer_kwargs(answer_format="xml"), ValueError, ("reward_kwargs.answer_format",)),
    ("answer-weight", None, _answer_kwargs(answer_weight="1"), ValueError, ("reward_kwargs.answer_weight",)),
    ("answer-unknown", None, _answer_kwargs(format_wieght=0.5), ValueError, ("reward_kwargs.['format_wieght']",)),
    ("answer-ground-truth", None, _ground_truth_outside_options, ValueError, ("q-7", "'E'")),
    ("mapo-history", None, _mapo({"history": "per_step"}), ValueError, ("algorithm.mapo.history",)),
    ("mapo-bins", None, _mapo({"bins": 0}), ValueError, ("algorithm.mapo.bins",)),
    ("mapo-tags", None, _mapo({"tags": []}), ValueError, ("algorithm.mapo.tags",)),
    ("mapo-unknown", None, _mapo({"balanse": True}), ValueError, ("algorithm.mapo.['balanse']",)),
    ("mapo-at-tau", None, _mapo_at({"tau_base": 0}), ValueError, ("algorithm.mapo_at.tau_base",)),
    ("mapo-at-layers", None, _mapo_at({"layers": []}), ValueError, ("algorithm.mapo_at.layers",)),
    ("mapo-at-unknown", None, _mapo_at({"eta2": 1}), ValueError, ("algorithm.mapo_at.['eta2']",)),
    ("mapo-at-floor", None, _mapo_at({"advantage_floor_eps": -1}), ValueError, ("mapo_at.advantage_floor_eps",)),
    ("mapo-at-reduce", None, _mapo_at({"attn_loss_reduction": "sum"}), ValueError, ("attn_loss_reduction='sum'",)),
    ("mapo-at-fallback", None, _mapo_at({"content_fallback": None}), ValueError, ("mapo_at.content_fallback",)),
    ("demo-data-seed", None, _make_demo_data(seed=-1), ValueError, ("seed=-1",)),
    ("demo-data-n-train", None, _make_demo_data(n_train=0), ValueError, ("n_train=0",)),
    ("demo-data-families", None, _make_demo_data(families="wide"), ValueError, ("families", "'wide'")),
    (
        "demo-data-users-files",
        users_train_parquet,
        lambda tmp: make_demo_data(tmp, n_train=7, n_test=0, progress=False),
        FileExistsError,
        ("train.parquet", "overwrite=True"),
    ),  # fmt: skip
    ("tiny-model-nonempty", lambda tmp: notes_dir(tmp, None), _tiny_model, FileExistsError, ("m", "overwrite=True")),
    (
        "probe-audio-late-inf",
        late_inf_wav,
        lambda tmp: media.probe_audio(tmp / "late.wav", context="row 3 (id a/3)", full=True),
        media.MediaError,
        ("row 3 (id a/3)", "late.wav", "1.50 s"),
    ),  # fmt: skip
    (
        "validate-rows-nan",
        None,
        _validate_rows_nan,
        validate.SchemaError,
        (f"row {NAN_ROW}", f"demo-train-{NAN_ROW:04d}"),
    ),
]


@pytest.mark.parametrize(("name", "setup", "call", "error", "names"), API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(name, setup, call, error, names, tmp_path, nan_dir):
    import inspect

    if setup is not None:
        setup(tmp_path)
    before = _tree(tmp_path, nan_dir)
    with pytest.raises(error) as info:
        call(*(tmp_path, nan_dir)[: len(inspect.signature(call).parameters)])
    message = str(info.value)
    for part in names:
        assert part in message, (part, message)
    assert _tree(tmp_path, nan_dir) == before  # nothing written, changed or lost
