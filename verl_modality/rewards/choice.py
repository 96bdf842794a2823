"""Multiple-choice answer matching: the reward for QA items (``reward_model.ground_truth`` is the answer letter).

Plain functions on strings, usable as verl's ``reward.custom_reward_function`` (``compute_score``) and by the
evaluation code. The reply's answer is the last ``[X]`` it contains (the format the prompts ask for); a reply without
one falls back to its last standalone option letter, which many benchmark scorers also accept.
"""

from __future__ import annotations

import re
from typing import Any

LETTERS = "ABCDEF"
_BRACKETED = re.compile(r"\[\s*([A-F])\s*\]")
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-F])(?![A-Za-z])")


def extract_choice(text: str, n_choices: int = len(LETTERS)) -> str | None:
    """The option letter a reply commits to, or None. Only letters of the first ``n_choices`` options count."""
    allowed = LETTERS[:n_choices]
    for pattern in (_BRACKETED, _STANDALONE):
        found = [m for m in pattern.findall(text) if m in allowed]
        if found:
            return found[-1]
    return None


def choice_score(reply: str, answer: str, n_choices: int = len(LETTERS)) -> dict[str, float]:
    """``{"score", "acc", "formatted"}``: 1.0/0.0 for a correct letter, and whether the reply used ``[X]``."""
    answer = str(answer).strip().upper()
    if len(answer) != 1 or answer not in LETTERS:
        raise ValueError(f"ground truth {answer!r} is not an option letter A-F")
    pred = extract_choice(reply, n_choices)
    correct = float(pred == answer)
    return {"score": correct, "acc": correct, "formatted": float(bool(_BRACKETED.search(reply)))}


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, float]:
    """verl's custom reward function signature (``reward.custom_reward_function.path=pkg://verl_modality.rewards.choice``)."""
    n_choices = len(LETTERS)
    if extra_info and extra_info.get("n_choices"):
        n_choices = int(extra_info["n_choices"])
    return choice_score(solution_str, ground_truth, n_choices)
