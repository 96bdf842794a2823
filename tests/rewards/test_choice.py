import pytest

from verl_modality.rewards.choice import choice_score, compute_score, extract_choice


@pytest.mark.parametrize(
    ("reply", "n", "expected"),
    [
        ("The dog barks, so [B].", 4, "B"),
        ("[A] at first, but on reflection [C]", 4, "C"),  # the last bracketed letter wins
        ("I think the answer is D", 4, "D"),  # no brackets: last standalone letter
        ("[E]", 4, None),  # only the first n options count
        ("Bark And Cat", 4, None),  # capitals inside words are not answers
        ("[ b ]", 4, None),  # lower case is not an option letter
        ("A or [B]? final: C", 4, "B"),  # brackets beat standalone letters
        ("", 4, None),
    ],
)
def test_extract_choice(reply, n, expected):
    assert extract_choice(reply, n) == expected


def test_scores():
    assert choice_score("so [B]", "B") == {"score": 1.0, "acc": 1.0, "formatted": 1.0}
    assert choice_score("B", " b ") == {"score": 1.0, "acc": 1.0, "formatted": 0.0}
    assert choice_score("[A]", "B")["score"] == 0.0
    assert compute_score("verl_modality/demo", "[C]", "C", {"n_choices": 2})["score"] == 0.0  # C is not an option
    with pytest.raises(ValueError, match="'Z'"):
        choice_score("[A]", "Z")
