import pytest

from verl_modality.rewards.choice import (
    AnswerRewardConfig,
    choice_score,
    compute_score,
    extract_choice,
    format_ok,
    uses_string_match,
)


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
    with pytest.raises(ValueError, match="'Z'"):
        choice_score("[A]", "Z")


def test_ground_truth_outside_the_options_raises():
    # every reply would score 0 against such a row: a data error, named with the row
    with pytest.raises(ValueError, match=r"ground truth 'C' is outside the row's 2 options \(A-B\)$"):
        compute_score("verl_modality/demo", "[C]", "C", {"n_choices": 2})
    info = {"id": "mmau/17", "choices": ["Man", "Woman", "Child", "Robot"]}
    with pytest.raises(ValueError, match=r"ground truth 'E' is outside the row's 4 options \(A-D\) \(row 'mmau/17'\)"):
        compute_score("maple-qa", "[E]", "E", info)
    with pytest.raises(ValueError, match=r"'E' is outside the row's 4 options .*'mmau/17'"):
        compute_score("mmau/test-mini", "Robot", "E", info)  # the string rule too
    assert compute_score("maple-qa", "[D]", "D", info)["acc"] == 1.0


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


# --- none-answers, brackets with text, think blocks ------------------------------------------------------------

NONE_OPTS = ["red video", "blue video", "The clip gives no way to tell.", "green video"]  # none-answer at C


@pytest.mark.parametrize(
    ("reply", "none_index", "expected"),
    [
        ("<answer>none of the above</answer>", 2, "C"),
        ("<answer>None of the options.</answer>", 2, "C"),
        ("<answer>There is not enough information here to decide.</answer>", 2, "C"),  # another project statement
        ("<answer>NONE</answer>", 2, "C"),
        ("<answer>Cannot be determined</answer>", 2, "C"),
        ("I think so. [None of the above]", 2, "C"),
        ("None of the above.", 2, "C"),  # the whole reply is a none-answer
        ("<answer>C. none of the above</answer>", 2, "C"),  # letter and none-answer agree
        ("<answer>B. none of the above</answer>", 2, None),  # they disagree
        ("<answer>B or none of the above</answer>", 2, None),  # two answers
        ("<answer>none of the above</answer>", None, "C"),  # no none_index: the option whose text is a none-answer
        ("<answer>none of the above</answer>", -1, None),  # the row says it has no none-answer option
        ("<answer>the clip gives no way to tell</answer>", -1, "C"),  # an option's own text still counts
        ("So [none of the above] ... no, [B]", 2, "B"),  # the last bracket that names an option
    ],
)
def test_none_answers(reply, none_index, expected):
    assert extract_choice(reply, 4, NONE_OPTS, none_index=none_index) == expected


def test_none_answer_without_none_option():
    plain = ["red video", "blue video", "green video"]
    assert extract_choice("<answer>none of the above</answer>", choices=plain) is None
    assert extract_choice("[Not enough information]", choices=plain) is None
    assert extract_choice("[not enough information] [B]", choices=plain) == "B"
    # an option whose text is exactly the reply wins over the none-answer reading
    assert extract_choice("<answer>None</answer>", choices=["one", "two", "None"], none_index=-1) == "C"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("So the answer is [blue video].", "B"),  # an option's text in brackets
        ("[B. blue video]", "B"),
        ("[B. green video]", None),  # letter and text disagree: the last bracket is ambiguous
        ("[A] at first, then [green video]", "D"),
        ("[laughs] the dog, so [B]", "B"),
        ("[B] [laughs]", "B"),  # brackets naming nothing are skipped
        ("<think>maybe [A]</think> so [C]", "C"),  # reasoning is never the answer
        ("<think>it is [A]</think> I am not sure.", None),
        ("<think>A? </think><answer>B</answer>", "B"),
        ("<think><answer>A</answer></think><answer>D</answer>", "D"),
    ],
)
def test_brackets_and_think(reply, expected):
    assert extract_choice(reply, 4, OPTIONS) == expected


# --- format ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "fmt", "think", "expected"),
    [
        ("<think>x</think><answer>B</answer>", "answer_tag", False, True),
        ("<think>\nx\n</think>\n<answer> B </answer>\n", "answer_tag", True, True),
        ("<answer>B</answer>", "answer_tag", False, True),
        ("<answer>B</answer>", "answer_tag", True, False),  # the think block is required
        ("Sure. <answer>B</answer>", "answer_tag", False, False),  # text outside the tags
        ("<think>x</think><answer>B</answer> done", "answer_tag", False, False),
        ("<think>x</think><answer>  </answer>", "answer_tag", False, False),  # empty answer
        ("<answer>A</answer><answer>B</answer>", "answer_tag", False, False),  # two answers
        ("<think>a</think><think>b</think><answer>B</answer>", "answer_tag", False, False),
        ("<think>x<answer>A</answer></think><answer>B</answer>", "answer_tag", False, False),
        ("<think>x</think>[B]", "answer_tag", False, False),
        ("so [B]", "bracket", False, True),
        ("so [blue video].  ", "bracket", False, True),
        ("<think>x</think> so [B]", "bracket", True, True),
        ("so [B]", "bracket", True, False),
        ("[B] because it barks", "bracket", False, False),  # the bracket must end the reply
        ("so [ ]", "bracket", False, False),
        ("<answer>B</answer>", "bracket", False, False),
        ("<answer>x</answer> [B]", "bracket", False, False),
        ("<answer>B</answer>", "any", False, True),
        ("so [B]", "any", False, True),
        ("B", "any", False, False),
        ("so [B]", "any", True, False),
        ("<think>x</think>so [B]", "any", True, True),
    ],
)
def test_format_ok(reply, fmt, think, expected):
    assert format_ok(reply, fmt, think) is expected


def test_format_ok_rejects_unknown_format():
    with pytest.raises(ValueError, match="'xml'"):
        format_ok("[B]", "xml")


# --- compute_score: weights, fields, config --------------------------------------------------------------------

INFO = {"id": "q1", "sample_task": "qa", "choices": NONE_OPTS, "none_index": 2}
RECIPE = {"answer_weight": 2.0, "format_weight": 0.5, "answer_format": "answer_tag"}  # audio-contribution GRPO


@pytest.mark.parametrize(
    ("reply", "answer", "kwargs", "score"),
    [
        ("<think>barks</think><answer>B</answer>", "B", RECIPE, 2.5),
        ("<think>barks</think><answer>A</answer>", "B", RECIPE, 0.5),  # the bonus does not need a right answer
        ("so [B]", "B", RECIPE, 2.0),  # right, but not the answer_tag format
        ("so [A]", "B", RECIPE, 0.0),
        ("so [B]", "B", {"format_weight": 0.5, "answer_format": "bracket"}, 1.5),
        ("so [B]", "B", {"format_weight": 0.5}, 1.5),  # "any" format
        ("so [B]", "B", {}, 1.0),  # defaults: the plain 1/0 reward, no bonus
        ("<answer>B</answer>", "B", {"format_weight": 0.0, "answer_format": "answer_tag"}, 1.0),  # bonus off
        ("<answer>B</answer>", "B", {**RECIPE, "require_think": True}, 2.0),
        ("<answer>none of the above</answer>", "C", RECIPE, 2.5),
    ],
)
def test_compute_score_weights(reply, answer, kwargs, score):
    assert compute_score("maple-qa+", reply, answer, INFO, **kwargs)["score"] == score


def test_compute_score_fields():
    out = compute_score("maple-qa+", "<answer>none of the above</answer>", "C", INFO)
    assert out == {
        "score": 1.0,
        "acc": 1.0,
        "formatted": 1.0,
        "parsed": "C",
        "pred_none": 1.0,
        "gold_none": 1.0,
        "string_match": 0.0,
    }
    out = compute_score("maple-qa+", "no idea", "B", INFO)
    assert (out["parsed"], out["acc"], out["pred_none"], out["gold_none"]) == ("", 0.0, 0.0, 0.0)
    keys = set(out)
    assert set(compute_score("mmau/test-mini", "x", "A", {"choices": ["x", "y"]})) == keys  # same keys everywhere


def test_compute_score_config_errors():
    with pytest.raises(ValueError, match="answer_wieght"):
        compute_score("maple-qa+", "[B]", "B", INFO, answer_wieght=2.0)
    with pytest.raises(ValueError, match="'xml'"):
        compute_score("maple-qa+", "[B]", "B", INFO, answer_format="xml")
    with pytest.raises(ValueError, match="'regex'"):
        compute_score("maple-qa+", "[B]", "B", INFO, match="regex")
    with pytest.raises(ValueError, match=r"reward_kwargs\.answer_weight='two': expected a finite number"):
        compute_score("maple-qa+", "[B]", "B", INFO, answer_weight="two")
    with pytest.raises(ValueError, match=r"reward_kwargs\.require_think='yes': expected true or false"):
        compute_score("maple-qa+", "[B]", "B", INFO, require_think="yes")
    with pytest.raises(ValueError, match="none_index 7"):
        compute_score("maple-qa+", "[B]", "B", {**INFO, "none_index": 7})
    # verl's own extra kwargs (reward router) are accepted and ignored
    assert compute_score("maple-qa+", "[B]", "B", INFO, reward_router_address=None)["score"] == 1.0
    assert AnswerRewardConfig.from_kwargs(RECIPE) == AnswerRewardConfig(2.0, 0.5, "answer_tag")


def test_caption_rows_are_refused():
    with pytest.raises(ValueError, match=r"caption row.*pkg://verl_modality\.rewards\.caption_judge"):
        compute_score("maple-bench", "A dog barks.", "A", {"id": "c1", "sample_task": "caption"})


# --- MMAU string-match rule in compute_score -------------------------------------------------------------------

DOGS = ["Dog barking", "Cat meowing", "Dog growling", "Bird singing"]
MMAU_INFO = {"choices": DOGS, "answer_text": "Dog barking", "sample_task": "qa"}


@pytest.mark.parametrize(
    ("reply", "acc", "parsed"),
    [
        ("<answer>dog barking</answer>", 1.0, "A"),
        ("<answer>DOG-BARKING!</answer>", 1.0, "A"),  # case and punctuation do not matter
        ("<answer>A</answer>", 1.0, "A"),  # a letter stands for its option's text
        ("<answer>(A) Dog barking</answer>", 1.0, "A"),
        ("<answer>(B) Dog barking</answer>", 0.0, ""),  # letter B brings "cat meowing" in
        ("<answer>B</answer>", 0.0, "B"),
        ("<answer>a dog is barking</answer>", 1.0, "A"),  # free wording, answer words present
        ("<answer>dog</answer>", 0.0, ""),  # incomplete
        ("It sounds like a dog barking, not a cat meowing.", 0.0, ""),  # a wrong option's words
        ("The recording contains a dog barking.", 1.0, "A"),  # no tag or bracket: the whole reply
        ("<think>cat meowing? no</think> the dog is barking", 1.0, "A"),  # reasoning is not judged
        ("I hear it: [Dog barking]", 1.0, "A"),
        ("", 0.0, ""),
    ],
)
def test_string_match_rows(reply, acc, parsed):
    out = compute_score("mmau/test-mini", reply, "A", MMAU_INFO)
    assert (out["acc"], out["parsed"], out["string_match"]) == (acc, parsed, 1.0)


def test_string_match_answer_inside_wrong_option():
    info = {"choices": ["piano", "grand piano", "violin", "organ"]}
    assert compute_score("mmsu", "<answer>piano</answer>", "A", info)["acc"] == 1.0
    out = compute_score("mmsu", "<answer>grand piano</answer>", "A", info)
    assert (out["acc"], out["parsed"]) == (0.0, "B")
    assert compute_score("MMAR", "<answer>a grand piano</answer>", "B", info)["acc"] == 1.0


def test_string_match_selection():
    reply = "The recording contains a dog barking."
    assert uses_string_match("mmau/test-mini") and uses_string_match("MMSU") and uses_string_match("mmar")
    assert not uses_string_match("maple-qa+") and not uses_string_match("daily-omni")
    assert compute_score("mmau/test-mini", reply, "A", MMAU_INFO)["acc"] == 1.0
    assert compute_score("mmau/test-mini", reply, "A", MMAU_INFO, match="letter")["acc"] == 0.0  # no letter, no tag
    assert compute_score("audiomcq", reply, "A", MMAU_INFO)["acc"] == 0.0
    assert compute_score("audiomcq", reply, "A", MMAU_INFO, match="string")["acc"] == 1.0


def test_string_match_answer_text_and_none():
    # extra_info["answer_text"] is the reference when present (MMAU's answer field), else the letter's option text
    info = {"choices": ["male", "female"], "answer_text": "male speaker"}
    assert compute_score("mmau/test-mini", "<answer>male</answer>", "A", info)["acc"] == 0.0
    assert compute_score("mmau/test-mini", "<answer>a male speaker</answer>", "A", info)["acc"] == 1.0
    with pytest.raises(ValueError, match="outside the row's 2 options"):
        compute_score("mmau/test-mini", "<answer>A</answer>", "C", {"choices": ["x", "y"]})
    # a none-answer stands for the none option's text; without a none option it is wrong
    assert compute_score("x", "<answer>none of the above</answer>", "C", INFO, match="string")["acc"] == 1.0
    plain = {"choices": ["red video", "blue video"], "none_index": -1}
    assert compute_score("mmau", "<answer>none of the above</answer>", "A", plain)["acc"] == 0.0
    assert compute_score("mmau", "<answer>red video</answer>", "A", plain)["acc"] == 1.0


# --- option texts that look like letters (MMAU test-mini music items) -------------------------------------------

NOTES = ["G", "A#", "D", "E"]  # gold "D" is option C
CHORDS = ["C", "Gm", "Cm7b5", "Eb/G"]  # gold "Cm7b5" is option C
DEGREES = ["A:min/P5", "E:maj/P1", "D:maj/M3", "G:maj/P1"]


@pytest.mark.parametrize(
    ("reply", "choices", "expected"),
    [
        ("D", NOTES, "C"),  # the text "D", not the letter D
        ("<answer>D</answer>", NOTES, "C"),
        ("So it is [D].", NOTES, "C"),
        ("<answer>(D)</answer>", NOTES, "D"),  # a letter form that is no option's text is still a letter
        ("C", CHORDS, "A"),
        ("[C]", CHORDS, "A"),
        ("<answer>Cm7b5</answer>", CHORDS, "C"),
        ("<answer>Option C</answer>", CHORDS, "C"),
        ("D:maj/M3", DEGREES, "C"),
        ("<answer>D. D:maj/M3</answer>", DEGREES, None),  # letter D is G:maj/P1, the text is C
    ],
)
def test_exact_option_text_wins_over_the_letter(reply, choices, expected):
    assert extract_choice(reply, 4, choices) == expected


@pytest.mark.parametrize(
    ("reply", "choices", "answer", "acc", "parsed"),
    [
        ("D", NOTES, "C", 1.0, "C"),  # before the fix: read as letter D = "E", scored 0
        ("C", CHORDS, "C", 0.0, "A"),  # before the fix: read as letter C = "Cm7b5", scored 1
        ("<answer>Cm7b5</answer>", CHORDS, "C", 1.0, "C"),
        ("<answer>(C)</answer>", CHORDS, "C", 1.0, "C"),  # lenient: a letter form stands for its option
        ("D:maj/M3 fits the bass line", DEGREES, "C", 1.0, "C"),  # "D:" opens the option's text, not a label
        ("B. E:maj/P1", DEGREES, "B", 1.0, "B"),  # a label before the text
    ],
)
def test_string_rule_reads_option_texts_before_letters(reply, choices, answer, acc, parsed):
    out = compute_score("mmau/test-mini", reply, answer, {"choices": choices})
    assert (out["acc"], out["parsed"]) == (acc, parsed)


@pytest.mark.parametrize(
    ("reply", "lenient", "official"),
    [
        ("<answer>B</answer>", 1.0, 0.0),  # letter only: the raw reply holds no word of "Cat meowing"
        ("(B)", 1.0, 0.0),
        ("B. Cat meowing", 1.0, 1.0),  # "b" is no option's word here
        ("<think>a dog barking?</think><answer>Cat meowing</answer>", 1.0, 0.0),  # the raw reply names two options
        ("cat meowing", 1.0, 1.0),
        ("", 0.0, 0.0),
    ],
)
def test_string_rule_option(reply, lenient, official):
    info = {"choices": DOGS, "sample_task": "qa"}
    assert compute_score("mmau/test-mini", reply, "B", info)["acc"] == lenient  # training default
    assert compute_score("mmau/test-mini", reply, "B", info, string_rule="lenient")["acc"] == lenient
    assert compute_score("mmau/test-mini", reply, "B", info, string_rule="official")["acc"] == official
    with pytest.raises(ValueError, match=r"reward_kwargs\.string_rule='strict'"):
        compute_score("mmau/test-mini", reply, "B", info, string_rule="strict")


# option texts that open with a letter and a separator, as chord labels, note names and sentences do
LABEL_LIKE = [
    ["D:maj(2)/2", "A:min", "C#", "E"],
    ["A man speaks", "A woman sings", "B: bass", "C: cello"],
    ["A", "B flat", "C sharp", "D"],
    ["E:min7 / B", "A:maj", "D. major", "B minor"],
]


@pytest.mark.parametrize("choices", LABEL_LIKE, ids=lambda c: c[0])
@pytest.mark.parametrize("data_source", ["demo", "mmau-test-mini"])  # the letter rule and MMAU's string rule
def test_the_exact_option_text_scores_as_that_option_in_training(choices, data_source):
    """A reply that is exactly an option's text (bare, tagged, bracketed, after a think block, upper-cased) scores
    as that option, never as the option its first letter names."""
    for i, text in enumerate(choices):
        gold = "ABCD"[i]
        for reply in (text, f"<answer>{text}</answer>", f"[{text}]", f"<think>hmm</think>{text}", text.upper()):
            out = compute_score(data_source, reply, gold, {"choices": choices})
            assert (out["acc"], out["parsed"]) == (1.0, gold), (reply, out)
            wrong = "ABCD"[(i + 1) % 4]
            assert compute_score(data_source, reply, wrong, {"choices": choices})["acc"] == 0.0, reply
