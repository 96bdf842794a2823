"""Benchmark scorer registry: rules, versions, data sources, and scoring of single responses."""

import pytest

from verl_modality.evaluation.scorers import (
    BENCHMARKS,
    answer_index,
    benchmark_for_data_source,
    get_benchmark,
    score_record,
    string_match_prediction,
)
from verl_modality.rewards.string_match import mmau_string_match

# Two items of MMAU test-mini (mmau-test-mini.json, ids 3fe64f3d-... and 72fb5481-...): answers are option texts.
SOURCE = ["Man", "Woman", "Child", "Robot"]
SPEECH = ["A child", "A woman", "An adult man", "A teenager"]


def test_registry_rules_and_versions():
    assert {n: b.rule for n, b in BENCHMARKS.items()} == {
        "mmau": "string_match",
        "mmsu": "string_match",
        "mmar": "string_match",
        "daily_omni": "letter",
        "maple_qa": "letter",
    }
    mmau = get_benchmark("mmau")
    assert mmau.version == "v05.15.25"
    assert get_benchmark("mmau", "original").version == "original"
    assert mmau.version == "v05.15.25"  # the registry entry is not changed by choosing another version
    with pytest.raises(ValueError, match="no version 'v2'; known: v05.15.25, original"):
        get_benchmark("mmau", "v2")
    with pytest.raises(ValueError, match="unknown benchmark 'omnibench'; registered: mmau, mmsu"):
        get_benchmark("omnibench")


def test_data_sources_of_the_converters_map_to_benchmarks():
    from verl_modality.data.converters import CONVERTERS

    sources = {c.data_source for c in CONVERTERS.values()}
    expected = {"mmau/test-mini": "mmau", "mmsu": "mmsu", "mmar": "mmar", "daily-omni": "daily_omni"}
    expected["maple-bench"] = "maple_qa"
    for source, name in expected.items():
        assert source in sources  # the converters really write this data_source
        assert benchmark_for_data_source(source) == name
    assert benchmark_for_data_source("audiomcq") is None


@pytest.mark.parametrize("name", ["mmau", "mmsu", "mmar"])
@pytest.mark.parametrize(
    ("response", "answer", "choices", "official", "lenient"),
    [
        ("The speaker is a man.", "Man", SOURCE, ("A", True), ("A", True)),
        ("It sounds like a woman, not a man.", "Man", SOURCE, (None, False), (None, False)),  # names two options
        ("Thinking... <answer>A woman</answer>", "A woman", SPEECH, ("B", True), ("B", True)),
        # official: the raw reply's words decide, and "child" in the reasoning is option A's word
        ("Thinking about a child... <answer>(B)</answer>", "A woman", SPEECH, ("A", False), ("B", True)),
        ("A child or a woman? Final: [B]", "B", SPEECH, (None, False), ("B", True)),  # answer given as letter
        ("An adult man is speaking.", "A woman", SPEECH, ("C", False), ("C", False)),
        ("", "Man", SOURCE, (None, False), (None, False)),
    ],
)
def test_string_match_benchmarks(name, response, answer, choices, official, lenient):
    assert score_record(name, response, answer, choices) == official  # the default
    assert score_record(name, response, answer, choices, "official") == official
    assert score_record(name, response, answer, choices, "lenient") == lenient


def test_rule_names_and_unknown_rule():
    assert get_benchmark("mmau").rule_name() == "string_match:official"
    assert get_benchmark("mmar").rule_name("lenient") == "string_match:lenient"
    assert get_benchmark("daily_omni").rule_name("official") == "letter"
    with pytest.raises(ValueError, match="rule 'strict' is not one of official, lenient"):
        score_record("mmau", "Man", "Man", SOURCE, "strict")


def test_string_match_agrees_with_the_rule_on_plain_predictions():
    for pred in ["man", "a robot", "child voice", "woman or man", "it is a Man."]:
        for answer in SOURCE:
            _, correct = score_record("mmau", pred, answer, SOURCE)
            assert correct == mmau_string_match(pred, answer, SOURCE)


def test_string_match_prediction_text():
    reply = "x <answer>a</answer> <answer> C. </answer>"
    assert string_match_prediction(reply, SPEECH, "official") == reply
    assert string_match_prediction(reply, SPEECH) == "An adult man"
    assert string_match_prediction("<answer>the woman</answer>", SPEECH) == "the woman"
    assert string_match_prediction("[E]", SPEECH) == "[E]"  # E is not an option of a 4-option item
    assert string_match_prediction("no letter here", SPEECH) == "no letter here"


@pytest.mark.parametrize("name", ["daily_omni", "maple_qa"])
@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("The drum starts after the speech, so [C]", "C", ("C", True)),
        ("The drum starts after the speech, so [C]", "A", ("C", False)),
        ("<answer>Blue</answer>", "C", ("C", True)),  # option text inside the tag
        ("<answer>B or C</answer>", "C", (None, False)),  # ambiguous
        ("[B]", "Green", ("B", True)),  # answer given as option text
    ],
)
def test_letter_benchmarks(name, response, answer, expected):
    assert score_record(name, response, answer, ["Red", "Green", "Blue", "None of the above"]) == expected


def test_bad_items():
    with pytest.raises(ValueError, match="neither an option letter A-D nor an option text"):
        answer_index("E", SOURCE)
    with pytest.raises(ValueError, match="choices is empty"):
        score_record("maple_qa", "[A]", "A", [])
    assert answer_index("robot", SOURCE) == 3
