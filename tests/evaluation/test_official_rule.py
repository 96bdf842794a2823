"""Benchmark scoring against the benchmarks' own scripts, on the real MMAU test-mini items.

MMAU's ``evaluation.py`` and MMAR's ``code/evaluation.py`` score a reply with one ``string_match(answer, prediction,
choices)`` function, given the model's output as it is. :func:`official` below restates that rule independently of the
project's code: lower-case each text and cut it into word runs (``\\w+``); a reply without words is wrong; otherwise it
must contain every word of the answer and no word that only belongs to options whose word set is not the answer's.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers import MMAU_FIXTURE

from verl_modality.evaluation.scorers import get_benchmark, score_record
from verl_modality.evaluation.scoring import score_qa
from verl_modality.rewards.choice import compute_score, extract_choice
from verl_modality.vocabulary import LETTERS


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def official(answer: str, prediction: str, choices: list[str]) -> bool:
    """The benchmark scripts' verdict on ``prediction`` (restated, see the module doc)."""
    said = _words(prediction)
    if not said:
        return False
    gold = _words(answer)
    foreign: set[str] = set()
    for choice in choices:
        if _words(choice) != gold:
            foreign |= _words(choice) - gold
    return gold.issubset(said) and not (said & foreign)


def official_parsed(prediction: str, choices: list[str]) -> str | None:
    """The first option the official rule would credit ``prediction`` with, as a letter."""
    for i, choice in enumerate(choices):
        if official(choice, prediction, choices):
            return LETTERS[i]
    return None


@pytest.fixture(scope="module")
def items() -> dict[str, dict]:
    if not MMAU_FIXTURE.is_file():
        pytest.fail(f"the vendored MMAU fixture is missing: {MMAU_FIXTURE}")
    data = json.loads(MMAU_FIXTURE.read_text(encoding="utf-8"))
    return {x["id"]: x for x in data if len(x["choices"]) <= len(LETTERS)}  # one garbled item has 8 options


def _row(item: dict) -> dict:
    """The item as the MMAU converter stores it: repeated options dropped, the answer as a letter."""
    kept: list[str] = []
    for c in item["choices"]:
        if c not in kept:
            kept.append(c)
    letter = LETTERS[kept.index(item["answer"])]
    extra = {"answer_text": item["answer"], "id": item["id"]}
    return {"id": item["id"], "data_source": "mmau/test-mini", "answer": letter, "choices": kept, "extra_info": extra}


def _replies(item: dict) -> list[str]:
    """One reply per style, built from the item's own options."""
    choices, gold = item["choices"], item["answer"]
    g = LETTERS[choices.index(gold)]
    wrong_i = next(i for i, c in enumerate(choices) if c != gold)
    w, wl = choices[wrong_i], LETTERS[wrong_i]
    return [
        gold,  # exact option text
        f"({g})",  # letter only, several forms
        f"{g}.",
        f"[{g}]",
        g,
        f"Option {g}",
        f"<answer>{g}</answer>",
        f"{g}. {gold}",  # letter + text
        f"({wl}) {gold}",  # a wrong letter with the right text
        f"The answer is {gold}.",  # text in a sentence
        f"<think>It could be {w}.</think><answer>{gold}</answer>",  # tags, a wrong option in the reasoning
        f"<think>Listening closely.</think>\n<answer>{gold}</answer>",
        w,  # wrong option
        f"{gold} or {w}",  # two options named
        "None of the above.",
        "",
    ]


def test_benchmark_scores_equal_the_official_scripts_on_every_item(items):
    mmau, n = get_benchmark("mmau"), 0
    for item in items.values():
        row = _row(item)
        for reply in _replies(item):
            expected = official(item["answer"], reply, item["choices"])
            raw = (official_parsed(reply, item["choices"]), expected)
            assert score_record(mmau, reply, item["answer"], item["choices"]) == raw, (item["id"], reply)
            # as eval stores and scores the row (answer as a letter; repeated options dropped, so letters may move)
            stored = (official_parsed(reply, row["choices"]), expected)
            assert score_qa(row, reply, mmau) == stored, (item["id"], reply)  # --benchmark mmau
            assert score_qa(row, reply) == stored, (item["id"], reply)  # without --benchmark
            info = {**row["extra_info"], "choices": row["choices"]}
            out = compute_score("mmau/test-mini", reply, row["answer"], info, string_rule="official")
            assert (out["parsed"] or None, out["acc"] == 1.0) == stored, (item["id"], reply)
            n += 1
    assert n == 999 * 16


def _by_prefix(items: dict[str, dict], prefix: str) -> dict:
    (item,) = [x for i, x in items.items() if i.startswith(prefix)]
    return item


# Hand-worked verdicts on named items (by id prefix; a letter is the option's position).
@pytest.mark.parametrize(
    ("prefix", "reply", "official_verdict", "lenient_verdict"),
    [
        # notes G, A#, D, E; gold "D" is option C: the reply "D" is the text, not the letter D ("E")
        ("b11438e7", "D", ("C", True), ("C", True)),
        ("b11438e7", "<answer>D</answer>", ("C", True), ("C", True)),
        ("b11438e7", "(C)", (None, False), ("C", True)),  # letter only: no word "d" in the raw reply
        ("b11438e7", "E", ("D", False), ("D", False)),
        # chords C, Gm, Cm7b5, Eb/G; gold Cm7b5 (letter C): "C" is option A's text, wrong
        ("6976d332", "C", ("A", False), ("A", False)),
        ("6976d332", "Cm7b5", ("C", True), ("C", True)),
        ("6976d332", "[C]", ("A", False), ("A", False)),  # the bracketed text is still option A's text
        # options are the letters A-D themselves; gold D
        ("660c8ed0", "D", ("D", True), ("D", True)),
        ("660c8ed0", "(D)", ("D", True), ("D", True)),
        ("660c8ed0", "A or D", (None, False), (None, False)),
        # Kennedy, Nixon, Lyndon B. Johnson, Ford; gold Richard Nixon (B): "b" is a word of Lyndon B. Johnson
        ("7e68bc7b", "B. Richard Nixon", (None, False), ("B", True)),
        ("7e68bc7b", "Richard Nixon", ("B", True), ("B", True)),
        ("7e68bc7b", "B", (None, False), ("B", True)),
        # Man, Woman, Child, Robot; gold Man
        ("3fe64f3d", "(A)", (None, False), ("A", True)),
        ("3fe64f3d", "<think>not a woman</think><answer>Man</answer>", (None, False), ("A", True)),
        ("3fe64f3d", "It is a man.", ("A", True), ("A", True)),
        ("3fe64f3d", "None of the above.", (None, False), (None, False)),
        ("3fe64f3d", "", (None, False), (None, False)),
    ],
)
def test_hand_worked_items(items, prefix, reply, official_verdict, lenient_verdict):
    item = _by_prefix(items, prefix)
    assert score_record("mmau", reply, item["answer"], item["choices"]) == official_verdict
    assert score_record("mmau", reply, item["answer"], item["choices"], "lenient") == lenient_verdict
    assert official(item["answer"], reply, item["choices"]) is official_verdict[1]


def test_exact_option_text_wins_over_letters_in_every_rule(items):
    """Each option's own text, as the whole reply (bare, bracketed or tagged), names that option under the letter
    rule and the lenient string rule on every item, label-like options (notes, chords, letters) included."""
    label_like = 0
    for item in items.values():
        row = _row(item)
        choices = row["choices"]
        if any(re.fullmatch(r"[A-F][#b]?", c) for c in choices):
            label_like += 1
        for i, text in enumerate(choices):
            letter = LETTERS[i]
            bracketed = [] if "[" in text or "]" in text else [f"[{text}]"]  # some options are lists in brackets
            for reply in (text, *bracketed, f"<answer>{text}</answer>"):
                assert extract_choice(reply, len(choices), choices) == letter, (item["id"], reply)
                info = {**row["extra_info"], "answer_text": text}
                out = compute_score("mmau/test-mini", reply, letter, {**info, "choices": choices})  # lenient default
                # options with the same words in another order are one option to the string rule: the first counts
                first = LETTERS[next(j for j, c in enumerate(choices) if _words(c) == _words(text))]
                assert (out["acc"], out["parsed"]) == (1.0, first), (item["id"], reply)
                letter_rule = compute_score(
                    "mmau/test-mini", reply, letter, {**info, "choices": choices}, match="letter"
                )
                assert letter_rule["acc"] == 1.0, (item["id"], reply)
    assert label_like >= 10  # the note-name and letter items are among them
