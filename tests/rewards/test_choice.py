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


OPTIONS = ["red video", "blue video", "The clip gives no way to tell.", "green video"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("thinking... <answer>B</answer>", "B"),
        ("<answer> [C] </answer>", "C"),
        ("<answer>(D)</answer>", "D"),
        ("<answer>A.</answer>", "A"),
        ("<answer>Option B</answer>", "B"),
        ("<answer>blue video</answer>", "B"),  # the option's text
        ("<answer>  Blue   Video. </answer>", "B"),  # case, spaces and a final full stop do not matter
        ("<answer>the clip gives no way to tell</answer>", "C"),
        ("<answer>B. blue video</answer>", "B"),
        ("<answer>(D) green video</answer>", "D"),
        ("<answer>B. green video</answer>", None),  # letter and text disagree
        ("<answer>B or C</answer>", None),  # two different letters
        ("<answer>purple video</answer>", None),  # no such option
        ("<answer>E</answer>", None),  # outside the 4 options
        ("<answer></answer> [B]", None),  # an empty tag is the committed (empty) answer
        ("[A] then <answer>C</answer>", "C"),  # the tag beats brackets
        ("<answer>A</answer> no wait <ANSWER>D</ANSWER>", "D"),  # the last tag counts
        ("<answer>\nC\n</answer>", "C"),
    ],
)
def test_extract_answer_tag(reply, expected):
    assert extract_choice(reply, 4, OPTIONS) == expected


def test_answer_tag_without_option_texts():
    assert extract_choice("<answer>C</answer>", 4) == "C"
    assert extract_choice("<answer>blue video</answer>", 4) is None  # text needs the options
    assert extract_choice("<answer>B</answer>", choices=["x", "y"]) == "B"
    assert extract_choice("<answer>C</answer>", choices=["x", "y"]) is None  # only 2 options


def test_answer_tag_scores():
    assert choice_score("<answer>B</answer>", "B") == {"score": 1.0, "acc": 1.0, "formatted": 1.0}
    assert choice_score("<answer>blue video</answer>", "B", 4, OPTIONS)["score"] == 1.0
    info = {"n_choices": 4, "choices": OPTIONS}
    assert compute_score("mine", "<answer>green video</answer>", "D", info)["score"] == 1.0
    assert compute_score("mine", "<answer>green video</answer>", "D", {"n_choices": 4})["score"] == 0.0
