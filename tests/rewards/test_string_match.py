import pytest

from verl_modality.rewards.string_match import matched_option, mmau_string_match, word_tokens, wrong_only_tokens

DOGS = ["Dog barking", "Cat meowing", "Dog growling", "Bird singing"]


def test_word_tokens():
    assert word_tokens("The DOG's bark, (twice)!") == {"the", "dog", "s", "bark", "twice"}
    assert word_tokens("snake_case 3.5 kHz") == {"snake_case", "3", "5", "khz"}
    assert word_tokens("Über café") == {"über", "café"}  # \w is Unicode-aware
    assert word_tokens(" ...?! ") == frozenset()


def test_wrong_only_tokens():
    # "dog" is shared with the answer, so it never counts against a prediction
    assert wrong_only_tokens("Dog barking", DOGS) == {"cat", "meowing", "growling", "bird", "singing"}


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Dog barking", "Dog barking", True),
        ("dog BARKING.", "Dog barking", True),  # case and punctuation do not matter
        ("barking dog", "Dog barking", True),  # nor does order
        ("The answer is: dog barking!", "Dog barking", True),  # extra words are free
        ("dog", "Dog barking", False),  # an answer token is missing
        ("Dog barking, not a cat meowing", "Dog barking", False),  # a wrong-only token appears
        ("Dog growling", "Dog barking", False),
        ("Dog barking or dog growling", "Dog barking", False),  # two options named
        ("", "Dog barking", False),  # no tokens at all
        ("!!!", "Dog barking", False),
        ("(A) Dog barking", "Dog barking", True),  # "a" is no option's token here
    ],
)
def test_mmau_string_match(prediction, answer, expected):
    assert mmau_string_match(prediction, answer, DOGS) is expected


def test_answer_contained_in_a_wrong_option():
    # The answer's words are a subset of a wrong option: that option's extra word is wrong-only.
    choices = ["piano", "grand piano", "violin", "piano and violin"]
    assert mmau_string_match("piano", "piano", choices)
    assert not mmau_string_match("grand piano", "piano", choices)  # "grand" belongs only to a wrong option
    assert not mmau_string_match("piano and violin", "piano", choices)
    assert mmau_string_match("It is a grand piano.", "grand piano", choices)
    assert not mmau_string_match("piano", "grand piano", choices)  # "grand" missing
    # the longer answer: its tokens cover "piano" and "violin", so only "grand" is wrong-only
    assert mmau_string_match("piano and violin", "piano and violin", choices)
    assert not mmau_string_match("a piano", "piano", ["piano", "a violin"])  # "a" is a wrong-only token there


def test_numbers_and_duplicates():
    choices = ["2", "3", "4", "2"]  # a duplicated option adds no wrong-only token
    assert mmau_string_match("There are 2 speakers.", "2", choices)
    assert not mmau_string_match("2 or 3", "2", choices)
    assert not mmau_string_match("12 speakers", "2", choices)  # "12" is not the token "2"
    assert matched_option("2 speakers", choices) == 0  # equal-token options: the first one
    assert matched_option("3", choices) == 1
    assert matched_option("2 or 3", choices) is None
    assert matched_option("five", choices) is None


def test_answer_without_tokens():
    # An answer with no word tokens is matched by any prediction that avoids the wrong-only tokens.
    assert mmau_string_match("something else", "?", ["?", "yes"])
    assert not mmau_string_match("yes", "?", ["?", "yes"])


def test_answer_not_among_choices():
    # The answer's text need not be one of the options (extra_info["answer_text"]); every option then differs.
    assert mmau_string_match("male voice", "Male", ["male voice", "female voice"]) is False  # "voice" is wrong-only
    assert mmau_string_match("male", "Male", ["male voice", "female voice"]) is True
