"""MMAU's string-match rule for multiple choice (docs/method.md §8: MMAU, MMSU and MMAR are scored with it).

The rule, reimplemented from the benchmark's published evaluation:

1. Every text is turned into a *set* of word tokens by :func:`word_tokens`: lower-cased with ``str.lower``, then
   every maximal run of word characters (Unicode letters, digits, underscore: Python's ``\\w``) is one token.
   Punctuation, spaces and order do not matter; repeated words count once.
2. A prediction with no tokens at all is wrong.
3. The *wrong-only* tokens are the tokens of every option whose token set differs from the answer's, minus the
   answer's own tokens (so words the answer shares with a wrong option never count against it; an option with
   exactly the answer's token set, such as the answer itself, adds nothing).
4. The prediction is correct when it holds every answer token and none of the wrong-only tokens.

Consequences worth knowing: an answer that is a word-subset of a wrong option ("dog" vs "dog barking") is matched by
a prediction naming the wrong option only if that option's extra words are absent, i.e. never; the prediction's
other words (reasoning, "the answer is") are free as long as they avoid wrong-only tokens; and an answer with no word
tokens is matched by any prediction that avoids the wrong-only tokens.

The benchmarks' own scripts (MMAU ``evaluation.py``, MMAR ``code/evaluation.py``) apply the rule to the model's raw
output with the answer text and all option texts; a bare letter such as ``(B)`` then matches nothing. Which text the
project passes as the prediction (the raw reply, or a parsed answer span) is decided in
:mod:`verl_modality.rewards.choice` (``string_rule``) and :mod:`verl_modality.evaluation.scorers` (``rule``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> frozenset[str]:
    """The set of lower-cased word tokens of ``text`` (maximal runs of ``\\w`` characters)."""
    return frozenset(_WORD.findall(str(text).lower()))


def wrong_only_tokens(answer_text: str, choices: Sequence[str]) -> frozenset[str]:
    """Tokens of the options that differ from the answer, less the answer's own tokens."""
    answer = word_tokens(answer_text)
    wrong: set[str] = set()
    for choice in choices:
        tokens = word_tokens(choice)
        if tokens != answer:
            wrong |= tokens - answer
    return frozenset(wrong)


def mmau_string_match(prediction: str, answer_text: str, choices: Sequence[str]) -> bool:
    """Whether ``prediction`` names ``answer_text`` under MMAU's rule: it holds every answer token and no token that
    only a wrong option has. ``choices`` are all option texts (the answer's included or not: either way works)."""
    predicted = word_tokens(prediction)
    if not predicted:
        return False
    return word_tokens(answer_text) <= predicted and predicted.isdisjoint(wrong_only_tokens(answer_text, choices))


def matched_option(prediction: str, choices: Sequence[str]) -> int | None:
    """Index of the option ``prediction`` names under the rule, or None. At most one option's token set can match
    (two matching options must have equal token sets); when equal-token options tie, the first one is returned."""
    for index, choice in enumerate(choices):
        if mmau_string_match(prediction, choice, choices):
            return index
    return None
