"""Multiple-choice answer matching: the reward for QA items (``reward_model.ground_truth`` is the answer letter).

Plain functions on strings, usable as verl's ``reward.custom_reward_function`` (``compute_score``) and by the
evaluation code. Two answer formats are read (SPEC section 4):

* ``<answer>...</answer>`` (R1-AQA / AudioMCQ convention). When a reply has such a tag, its last tag decides: the
  tag may hold the letter (``B``, ``[B]``, ``(B)``, ``B.``, ``Option B``) or, when the option texts are known, one
  option's text (``<answer>red video</answer>``, also ``B. red video``). A tag that names two different options,
  or nothing readable, gives no answer.
* Otherwise the last ``[X]`` of the reply (the format the default prompts ask for); a reply without one falls back
  to its last standalone option letter, which many benchmark scorers also accept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

LETTERS = "ABCDEF"
_BRACKETED = re.compile(r"\[\s*([A-F])\s*\]")
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-F])(?![A-Za-z])")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LETTER_ONLY = re.compile(r"^[\s\[\(\"'*]*([A-F])[\s\]\)\"'*.:]*$")
_LETTER_PREFIX = re.compile(r"^[\s\[\(\"'*]*([A-F])\s*[\]\).:-]\s*(.+)$", re.DOTALL)
_SPACES = re.compile(r"\s+")


def _norm(text: str) -> str:
    """Case-, space- and trailing-punctuation-insensitive form of an option text."""
    return _SPACES.sub(" ", str(text)).strip().strip(".!\"'").strip().casefold()


def _text_match(text: str, allowed: str, choices: Sequence[str] | None) -> str | None:
    """The letter of the one option whose text equals ``text`` (normalised), else None."""
    if not choices:
        return None
    want = _norm(text)
    hits = {LETTERS[i] for i, c in enumerate(choices) if i < len(allowed) and _norm(c) == want}
    return hits.pop() if len(hits) == 1 else None


def _read_tag(content: str, allowed: str, choices: Sequence[str] | None) -> str | None:
    """The option a tag's content names, or None when it names none or two different ones."""
    m = _LETTER_ONLY.match(content)
    if m:
        return m.group(1) if m.group(1) in allowed else None
    by_text = _text_match(content, allowed, choices)
    if by_text is not None:
        return by_text
    m = _LETTER_PREFIX.match(content)
    if m and choices and m.group(1) in allowed:
        named = _text_match(m.group(2), allowed, choices)
        if named is not None:
            return m.group(1) if named == m.group(1) else None  # "B. <text of C>" is ambiguous
    for pattern in (_BRACKETED, _STANDALONE):
        found = set(pattern.findall(content))
        if found:
            return found.pop() if len(found) == 1 and found <= set(allowed) else None
    return None


def extract_choice(text: str, n_choices: int = len(LETTERS), choices: Sequence[str] | None = None) -> str | None:
    """The option letter a reply commits to, or None. Only letters of the first ``n_choices`` options count;
    ``choices`` (the option texts) lets ``<answer>option text</answer>`` count as well."""
    if choices is not None:
        choices = [str(c) for c in choices]
        n_choices = min(n_choices, len(choices))
    allowed = LETTERS[:n_choices]
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return _read_tag(tagged[-1], allowed, choices)
    for pattern in (_BRACKETED, _STANDALONE):
        found = [m for m in pattern.findall(text) if m in allowed]
        if found:
            return found[-1]
    return None


def is_formatted(reply: str) -> bool:
    """Whether the reply uses one of the two answer formats (``[X]`` or ``<answer>...</answer>``)."""
    return bool(_BRACKETED.search(reply) or _ANSWER_TAG.search(reply))


def choice_score(
    reply: str, answer: str, n_choices: int = len(LETTERS), choices: Sequence[str] | None = None
) -> dict[str, float]:
    """``{"score", "acc", "formatted"}``: 1.0/0.0 for a correct letter, and whether the reply used ``[X]`` or an
    ``<answer>`` tag."""
    answer = str(answer).strip().upper()
    if len(answer) != 1 or answer not in LETTERS:
        raise ValueError(f"ground truth {answer!r} is not an option letter A-F")
    pred = extract_choice(reply, n_choices, choices)
    correct = float(pred == answer)
    return {"score": correct, "acc": correct, "formatted": float(is_formatted(reply))}


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, float]:
    """verl's custom reward function signature (``reward.custom_reward_function.path=pkg://verl_modality.rewards.choice``).

    ``extra_info`` may carry ``n_choices`` and ``choices`` (the option texts, for ``<answer>option text</answer>``).
    """
    n_choices = len(LETTERS)
    choices = None
    if extra_info:
        if extra_info.get("n_choices"):
            n_choices = int(extra_info["n_choices"])
        raw = extra_info.get("choices")
        if raw is not None and len(raw):
            choices = [str(c) for c in raw]
    return choice_score(solution_str, ground_truth, n_choices, choices)
