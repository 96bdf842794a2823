"""Benchmark scorers: a registry name -> how a response is scored, and which benchmark version it refers to.

docs/method.md §8: MMAU (test-mini), MMSU and MMAR score multiple choice with MMAU's string-match rule
(:func:`verl_modality.rewards.string_match.mmau_string_match`); Daily-Omni and MAPLE-QA with the option letter
(:func:`verl_modality.rewards.choice.extract_choice`). Every benchmark carries a version string that the evaluation
records and the report prints: MMAU test-mini was revised on 2025-05-15 (about a quarter of its items changed), so
a number on ``v05.15.25`` is not comparable with one on the original release.

String match reads the response in one of two ways (``rule``, :data:`RULE_CHOICES`):

* ``official`` (the default): the raw response against the answer text and the option texts, exactly as the benchmarks'
  own scripts (MMAU ``evaluation.py``, MMAR ``code/evaluation.py``, one shared ``string_match``) receive the model's
  output. A letter-only reply (``(B)``) names no option text and scores 0, as it does there; numbers are comparable
  with the published ones.
* ``lenient``: the training reward's parse (:func:`verl_modality.rewards.choice.score_reply`): the committed answer span
  (the last ``<answer>...</answer>``, else the last ``[...]`` naming an option, else the response, ``<think>``
  removed), with an option letter standing for its text unless the span is exactly an option's text.

Letter benchmarks have one rule, :func:`verl_modality.rewards.choice.extract_choice`, whichever ``rule`` is asked for.
:meth:`Benchmark.rule_name` gives the name the evaluation records and the report print (:data:`RULE_NAMES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from verl_modality.rewards.choice import STRING_RULES, AnswerRewardConfig, score_reply, string_prediction
from verl_modality.vocabulary import LETTERS

#: What a benchmark scores by: MMAU's string match on option texts, or the option letter.
RULES = ("string_match", "letter")
#: How a string-match benchmark reads a response (the ``rule`` option of the evaluation and the scorers).
RULE_CHOICES = STRING_RULES
DEFAULT_RULE = "official"
#: The scoring rule as evaluation records and reports name it.
RULE_NAMES = ("string_match:official", "string_match:lenient", "letter")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's scoring rule, the version its results refer to, and the ``data_source`` values of its rows."""

    name: str
    rule: str
    version: str
    versions: Mapping[str, str] = field(default_factory=dict)  # known version -> what it is
    data_sources: tuple[str, ...] = ()
    description: str = ""

    def with_version(self, version: str | None) -> Benchmark:
        """This benchmark at ``version`` (one of :attr:`versions`); ``None`` keeps the default."""
        if version is None:
            return self
        if version not in self.versions:
            raise ValueError(f"benchmark {self.name!r} has no version {version!r}; known: {', '.join(self.versions)}")
        return replace(self, version=version)

    def rule_name(self, rule: str = DEFAULT_RULE) -> str:
        """The name of the rule that scores this benchmark's responses under ``rule`` (one of :data:`RULE_NAMES`)."""
        return scoring_rule_name(self.rule == "string_match", rule)

    def score(
        self, response: str, answer: str, choices: Sequence[str], rule: str = DEFAULT_RULE
    ) -> tuple[str | None, bool]:
        """``(parsed option letter or None, correct)``; see :func:`score_record`."""
        _check_rule(rule)
        choices = [str(c) for c in choices]
        if not choices:
            raise ValueError(f"{self.name}: a multiple-choice item needs its option texts (choices is empty)")
        if len(choices) > len(LETTERS):
            raise ValueError(f"{self.name}: {len(choices)} options, at most {len(LETTERS)} are supported")
        index = answer_index(answer, choices)
        # the training reward's own code: the lenient rule is exactly the reward's parse, the official one its raw form
        config = AnswerRewardConfig(string_rule=rule)
        string_match = self.rule == "string_match"
        out = score_reply(
            response, LETTERS[index], choices, n_choices=len(choices), string_match=string_match, config=config
        )
        return (out["parsed"] or None), out["acc"] == 1.0


def _check_rule(rule: str) -> None:
    if rule not in RULE_CHOICES:
        raise ValueError(f"rule {rule!r} is not one of {', '.join(RULE_CHOICES)}")


def scoring_rule_name(string_match: bool, rule: str = DEFAULT_RULE) -> str:
    """The record's name for a scoring: ``string_match:<rule>`` for the string rule, ``letter`` for the letter rule."""
    _check_rule(rule)
    return f"string_match:{rule}" if string_match else "letter"


def answer_index(answer: str, choices: Sequence[str]) -> int:
    """0-based index of the correct option: ``answer`` is an option text (exact, case- and space-insensitive) or an
    option letter. A text wins over a letter, so pass the text when options are themselves letters or note names."""
    norm = " ".join(str(answer).split()).casefold()
    by_text = [i for i, c in enumerate(choices) if " ".join(str(c).split()).casefold() == norm]
    if by_text:
        return by_text[0]
    letter = str(answer).strip().upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return LETTERS.index(letter)
    raise ValueError(f"answer {answer!r} is neither an option letter A-{LETTERS[len(choices) - 1]} nor an option text")


def string_match_prediction(response: str, choices: Sequence[str], rule: str = "lenient") -> str:
    """The text that string match compares: for ``official`` the response itself; for ``lenient`` the committed answer
    span (last ``<answer>``, else the last ``[...]`` naming an option, else the response), with an option letter
    replaced by its option text."""
    _check_rule(rule)
    return string_prediction(response, choices, string_rule=rule)


_RELEASE = {"release": "the benchmark's public release"}

#: The registry. Versions other than the default can be chosen with :meth:`Benchmark.with_version`.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "mmau",
            "string_match",
            "v05.15.25",
            {
                "v05.15.25": "test-mini as revised on 2025-05-15 (about 25 % of the items changed); the current file",
                "original": "test-mini as first released, before the 2025-05-15 revision",
            },
            ("mmau/test-mini", "mmau"),
            "MMAU test-mini, audio multiple choice (answer = option text)",
        ),
        Benchmark("mmsu", "string_match", "release", _RELEASE, ("mmsu",), "MMSU, spoken-language multiple choice"),
        Benchmark("mmar", "string_match", "release", _RELEASE, ("mmar",), "MMAR, audio reasoning multiple choice"),
        Benchmark(
            "daily_omni", "letter", "release", _RELEASE, ("daily-omni", "daily_omni"), "Daily-Omni, audio-visual MCQ"
        ),
        Benchmark(
            "maple_qa",
            "letter",
            "release",
            _RELEASE,
            ("maple-bench", "maple-qa", "maple_qa"),
            "MAPLE-QA / MAPLE-QA+, 4-option multiple choice over V/A/S",
        ),
    )
}


def get_benchmark(name: str, version: str | None = None) -> Benchmark:
    """The registered benchmark ``name`` (optionally at ``version``); unknown names raise listing the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; registered: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name].with_version(version)


def benchmark_for_data_source(data_source: str) -> str | None:
    """Registry name of the benchmark whose rows carry ``data_source``, or None."""
    for b in BENCHMARKS.values():
        if data_source in b.data_sources:
            return b.name
    return None


def score_record(
    benchmark: str | Benchmark, response: str, answer: str, choices: Sequence[str], rule: str = DEFAULT_RULE
) -> tuple[str | None, bool]:
    """Score one response: ``(parsed, correct)``.

    ``answer`` is the correct option's letter or text, ``choices`` the option texts, ``rule`` how a string-match
    benchmark reads the response (``official``: as the benchmark's script does; ``lenient``: the training reward's
    parse). ``parsed`` is the option letter the response names (for string-match benchmarks: the option whose text it
    matches, None when none or several).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    return bench.score(response, answer, choices, rule)
