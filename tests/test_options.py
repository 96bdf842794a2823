"""The option loader: types, rules, unknown keys and plain-Python values, with the option's full name in every
message; and the sections built on it."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from verl_modality import options
from verl_modality.options import option


@dataclass(frozen=True)
class Section:
    flag: bool = False
    count: int = option(3, ge=1)
    rate: float = option(0.5, gt=0, lt=1)
    mode: str = option("a", choices=("a", "b"))
    window: int | None = option(None, ge=2)
    names: tuple[str, ...] = option(("x",), nonempty=True, distinct=True)
    extra: Any = None

    def __post_init__(self) -> None:
        options.validate(self, "sec")


def test_defaults_and_plain_values():
    assert options.load(Section, None, "sec") == Section()
    got = options.load(Section, OmegaConf.create({"count": 7, "names": ["p", "q"], "window": 4}), "sec")
    assert (got.count, got.names, got.window) == (7, ("p", "q"), 4)
    typed = Section(count=np.int64(2), rate=np.float32(0.25))
    assert type(typed.count) is int and type(typed.rate) is float and typed.rate == 0.25


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"flag": "yes"}, "sec.flag='yes': expected true or false"),
        ({"count": "five"}, "sec.count='five': expected an integer >= 1"),
        ({"count": 0}, "sec.count=0: expected an integer >= 1"),
        ({"count": 2.0}, "sec.count=2.0: expected an integer >= 1"),
        ({"count": True}, "sec.count=True: expected an integer >= 1"),
        ({"rate": 1}, "sec.rate=1: expected a finite number > 0 and < 1"),
        ({"rate": float("nan")}, "sec.rate=nan: expected a finite number > 0 and < 1"),
        ({"rate": "0.5"}, "sec.rate='0.5': expected a finite number > 0 and < 1"),
        ({"mode": "c"}, "sec.mode='c': expected one of ('a', 'b')"),
        ({"window": 1}, "sec.window=1: expected an integer >= 2 or null"),
        ({"names": []}, "sec.names=[]: expected a non-empty list"),
        ({"names": ["x", "x"]}, "sec.names=['x', 'x']: expected distinct values"),
        ({"names": ["x", 3]}, "sec.names[1]=3: expected a string"),
        ({"names": "x"}, "sec.names='x': expected a list of strings"),
        ({"cuont": 3}, "unknown option(s) sec.['cuont']: known options are"),
    ],
)
def test_bad_values_name_the_option(values, message):
    with pytest.raises(ValueError) as err:
        options.load(Section, values, "sec")
    assert str(err.value).startswith(message), str(err.value)


def test_not_a_mapping():
    with pytest.raises(ValueError, match=r"sec must be a mapping of options, got list: \[1\]"):
        options.load(Section, [1], "sec")


@pytest.mark.parametrize(
    ("curriculum", "message"),
    [
        ({"window": "five"}, "data.curriculum.window='five': expected an integer >= 1"),
        ({"order": "adaptive", "zero_shot": {"V": "abc"}}, "data.curriculum.zero_shot.V='abc': expected a finite"),
        ({"order": "adaptive", "zero_shot": {"X": 0.5}}, "data.curriculum.zero_shot: unknown tag 'X'"),
        ({"order": "adaptive", "zero_shot": 0.5}, "data.curriculum.zero_shot=0.5: expected 'validation'"),
        ({"seed": "s"}, "data.curriculum.seed='s': expected an integer"),
    ],
)
def test_curriculum_options_name_the_option(curriculum, message):
    from verl_modality.data.curriculum import CurriculumConfig

    with pytest.raises(ValueError) as err:
        CurriculumConfig.from_config(OmegaConf.create({"curriculum": curriculum}))
    assert str(err.value).startswith(message), str(err.value)


def test_curriculum_zero_shot_is_read_in_canonical_tags():
    from verl_modality.data.curriculum import CurriculumConfig

    cfg = CurriculumConfig.from_config(OmegaConf.create({"curriculum": {"order": "adaptive", "zero_shot": {"av": 1}}}))
    assert cfg.zero_shot == {"VA": 1.0} and type(cfg.zero_shot["VA"]) is float


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("timeout_s", "30s", "a finite number > 0"),
        ("max_retries", "x", "an integer >= 0"),
        ("concurrency", 0, "an integer >= 1"),
        ("backoff_s", -1, "a finite number >= 0"),
        ("on_failure", "zero", "one of ('raise', 'mark')"),
        ("extra_params", [1], "a mapping"),
    ],
)
def test_judge_options_name_the_option(key, value, expected):
    from verl_modality.rewards.caption_judge import SECTION, CaptionJudgeConfig

    with pytest.raises(ValueError) as err:
        CaptionJudgeConfig.from_dict({"base_url": "http://127.0.0.1:9/v1", "model": "m", key: value})
    assert str(err.value) == f"{SECTION}.{key}={value!r}: expected {expected}"


@dataclass
class Command:
    path: str = option(options.REQUIRED, metavar="IN", help="input")
    count: int = option(3, ge=1, help="how many")
    mode: str = option("a", choices=("a", "b"))
    limit: int | None = option(None, ge=1)
    quiet: bool = option(False, help="say less")
    progress: bool = option(True, help="show a progress bar")
    names: tuple[str, ...] = ("x",)

    def __post_init__(self) -> None:
        options.validate(self, "cmd")


def test_command_line_from_the_dataclass():
    import argparse

    parser = argparse.ArgumentParser()
    options.add_arguments(parser, Command, skip=("names",))
    args = parser.parse_args(["--path", "f"])
    assert options.from_arguments(Command, args) == Command(path="f")
    args = parser.parse_args(["--path", "f", "--count", "5", "--mode", "b", "--limit", "2", "--quiet", "--no-progress"])
    assert options.from_arguments(Command, args, names=("y",)) == Command("f", 5, "b", 2, True, False, ("y",))
    for argv in ([], ["--path", "f", "--mode", "c"], ["--path", "f", "--count", "x"]):  # required, choices, type
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    with pytest.raises(ValueError, match="--count 0: expected an integer >= 1"):  # rules: when the dataclass is built
        options.from_arguments(Command, parser.parse_args(["--path", "f", "--count", "0"]))
    help_text = parser.format_help()
    assert "--path IN" in help_text and "turn off: show a progress bar" in help_text and "--names" not in help_text


def test_key_value_pairs_read_as_the_fields_types():
    got = options.parse_pairs(Command, ["path=f", "count=7", "limit=null", "quiet=true", "names=p,q"], "cmd")
    assert got == Command(path="f", count=7, limit=None, quiet=True, names=("p", "q"))
    for items, message in (
        (["path=f", "count=seven"], "cmd.count='seven': expected an integer >= 1"),
        (["path=f", "quiet=maybe"], "cmd.quiet='maybe': expected true or false"),
        (["path=f", "cuont=1"], "unknown option(s) cmd.['cuont']"),
        (["count"], "cmd 'count': expected key=value"),
    ):
        with pytest.raises(ValueError) as err:
            options.parse_pairs(Command, items, "cmd")
        assert str(err.value).startswith(message), str(err.value)


@dataclass(frozen=True)
class Pair:
    low: float = option(0.2, gt=0, help="lower end")
    high: float = option(0.8, gt=0)
    limit: int | None = option(None, ge=1, flag="--max-rows")
    note: str = "n"

    def __post_init__(self) -> None:
        options.validate(self, "pair")
        if self.low >= self.high:
            raise ValueError(f"pair.low={self.low} must be < pair.high={self.high} (pair.lowest is unrelated)")


def _pair_parser():
    import argparse

    parser = argparse.ArgumentParser()
    options.add_arguments(parser, Pair, skip=("note",))
    return parser


@pytest.mark.parametrize(
    ("argv", "overrides", "message"),
    [
        (["--low", "0"], {}, "--low 0.0: expected a finite number > 0"),
        (["--max-rows", "0"], {}, "--max-rows 0: expected an integer >= 1"),  # its own flag; no "or null"
        (["--high", "0.1"], {}, "--low 0.2 must be < --high 0.1"),  # a flag left at its default is still a flag
        ([], {"note": 3}, "pair.note=3: expected a string"),  # an override (a file's value) keeps its full name
    ],
)
def test_flag_values_are_named_by_the_flag(argv, overrides, message):
    with pytest.raises(ValueError) as err:
        options.from_arguments(Pair, _pair_parser().parse_args(argv), **overrides)
    assert str(err.value).startswith(message), str(err.value)
    assert "or null" not in str(err.value)


def test_cross_field_message_names_both_flags_and_nothing_else():
    with pytest.raises(ValueError) as err:
        options.from_arguments(Pair, _pair_parser().parse_args(["--low", "0.9"]))
    assert str(err.value) == "--low 0.9 must be < --high 0.8 (pair.lowest is unrelated)"


def test_flags_named_keeps_the_error_type_and_other_names():
    class PairError(ValueError):
        pass

    args = _pair_parser().parse_args([])
    Pair()  # its section is known once an instance was checked
    with pytest.raises(PairError, match=r"^--high 0.5 is too high for data.pair.high=1 and pair.note='n'$"):
        with options.flags_named(Pair, args):
            raise PairError("pair.high=0.5 is too high for data.pair.high=1 and pair.note='n'")
    with pytest.raises(UnicodeDecodeError):  # not a one-message error: left alone
        with options.flags_named(Pair, args):
            b"\xff".decode()


def test_key_value_pairs_named_after_their_flag():
    for items, message in (
        (["path=f", "count=seven"], "--opt count='seven': expected an integer >= 1"),
        (["path=f", "cuont=1"], "unknown option(s) --opt ['cuont']: known options are"),
        (["count"], "--opt 'count': expected key=value"),
    ):
        with pytest.raises(ValueError) as err:
            options.parse_pairs(Command, items, "cmd", flag="--opt")
        assert str(err.value).startswith(message), str(err.value)
