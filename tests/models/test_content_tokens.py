"""Content tokens: the word rule on decoded strings, and token ids decoded with the tiny model's tokenizer."""

import torch

from verl_modality.models.content_tokens import STOPWORDS, content_mask_from_strings, content_token_mask


def test_content_words():
    rows = [["The", " dog", " bark", "s", " 3", " times", ".", "<|im_end|>"], ["It", " is", " very", " loud", "!", " "]]
    mask = content_mask_from_strings(rows[:1], special=["<|im_end|>"]).tolist()[0]
    assert mask == [False, True, True, True, True, True, False, False]
    assert content_mask_from_strings([rows[1]]).tolist()[0] == [False, False, False, True, False, False]
    assert content_mask_from_strings([["x2", " ab", " cat_dog"]]).tolist()[0] == [True, False, True]
    assert {"the", "and", "is", "of", "which"} <= STOPWORDS


def test_content_token_mask_with_the_tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode("The dog barks 3 times.<|im_end|>")
    mask = content_token_mask(torch.tensor([ids]), tok)
    pieces = [tok.decode([i]) for i in ids]
    assert "".join(p for p, m in zip(pieces, mask[0].tolist(), strict=True) if m).replace(" ", "") == "dogbarks3times"
    for p, m in zip(pieces, mask[0].tolist(), strict=True):
        assert m == (p.strip() not in {"The", ".", "", "<|im_end|>"}), p
    resp = torch.ones((1, len(ids)), dtype=torch.long)
    resp[0, :2] = 0
    assert not content_token_mask(torch.tensor([ids]), tok, mask=resp)[0, :2].any()
