"""Benchmark scorers: a registry name -> how a response is scored, and which benchmark version it refers to.

SPEC section 8: MMAU (test-mini), MMSU and MMAR score multiple choice with MMAU's string-match rule
(:func:`verl_modality.rewards.string_match.mmau_string_match`); Daily-Omni and MAPLE-QA with the option letter
(:func:`verl_modality.rewards.choice.extract_choice`). Every benchmark carries a version string that the evaluation
records and the report prints: MMAU test-mini was revised on 2025-05-15 (about a quarter of its items changed), so
a number on ``v05.15.25`` is not comparable with one on the original release.

Responses are parsed exactly as the training reward parses them (:func:`verl_modality.rewards.choice.score_reply`):
string match compares the committed answer span (the last ``<answer>...</answer>``, else the last ``[...]`` naming an
option, else the response, ``<think>`` removed) with the option texts; an option letter stands for its text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from verl_modality.rewards.choice import LETTERS, score_reply, string_prediction

RULES = ("string_match", "letter")


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

    def score(self, response: str, answer: str, choices: Sequence[str]) -> tuple[str | None, bool]:
        """``(parsed option letter or None, correct)``; see :func:`score_record`."""
        choices = [str(c) for c in choices]
        if not choices:
            raise ValueError(f"{self.name}: a multiple-choice item needs its option texts (choices is empty)")
        if len(choices) > len(LETTERS):
            raise ValueError(f"{self.name}: {len(choices)} options, at most {len(LETTERS)} are supported")
        index = answer_index(answer, choices)
        # the training reward's own parser and string-match rule, so evaluation and reward agree on every response
        out = score_reply(response, LETTERS[index], choices, n_choices=len(choices), string_match=self.rule != "letter")
        return (out["parsed"] or None), out["acc"] == 1.0


def answer_index(answer: str, choices: Sequence[str]) -> int:
    """0-based index of the correct option: ``answer`` is an option text (exact, case- and space-insensitive) or an
    option letter."""
    norm = " ".join(str(answer).split()).casefold()
    by_text = [i for i, c in enumerate(choices) if " ".join(str(c).split()).casefold() == norm]
    if by_text:
        return by_text[0]
    letter = str(answer).strip().upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return LETTERS.index(letter)
    raise ValueError(f"answer {answer!r} is neither an option letter A-{LETTERS[len(choices) - 1]} nor an option text")


def string_match_prediction(response: str, choices: Sequence[str]) -> str:
    """The text that string match compares: the committed answer span (last ``<answer>``, else the last ``[...]``
    naming an option, else the response), with an option letter replaced by its option text."""
    return string_prediction(response, choices)


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
    benchmark: str | Benchmark, response: str, answer: str, choices: Sequence[str]
) -> tuple[str | None, bool]:
    """Score one response: ``(parsed, correct)``.

    ``answer`` is the correct option's letter or text, ``choices`` the option texts. ``parsed`` is the option letter
    the response names (for string-match benchmarks: the option whose text it matches, None when none or several).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    return bench.score(response, answer, choices)
