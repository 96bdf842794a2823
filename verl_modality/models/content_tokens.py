"""Content tokens of a response (docs/method.md §5): the tokens MAPO-AT's attention loss runs over.

A token is a content token when it overlaps a content word (roughly: noun, verb, adjective, adverb or number) of the
decoded response; :func:`content_token_mask` decodes token ids with the policy's tokenizer,
:func:`content_mask_from_strings` applies the word rule to decoded token strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = ["STOPWORDS", "content_mask_from_strings", "content_token_mask"]

# English function words: articles, pronouns, determiners, prepositions, conjunctions, auxiliaries and modal verbs,
# and a few frequent discourse words. Everything else of three or more letters counts as a content word.
STOPWORDS: frozenset[str] = frozenset(
    """
    a an the this that these those there here
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves one ones someone something anyone anything everyone
    everything nobody nothing what which who whom whose whatever whichever whoever
    and but nor yet for because although though while whereas unless until since than whether either neither both
    also too very just only even still then thus hence therefore however moreover furthermore otherwise instead
    of in on at to from by with without within into onto upon about above below under over after before between
    among through throughout during against toward towards across along around behind beside besides beyond near off
    out per via like unlike
    am is are was were be been being have has had having do does did doing done
    can could may might must shall should will would ought
    not no yes all any each every few more most other some such own same so than
    how when where why
    let lets get gets got okay well
    """.split()
)
_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits


def _is_content_word(word: str) -> bool:
    if any(ch.isdigit() for ch in word):
        return True
    return word.isalpha() and len(word) >= 3 and word.lower() not in STOPWORDS


def content_mask_from_strings(rows: Iterable[Sequence[str]], special: Iterable[str] = ()) -> torch.Tensor:
    """Bool ``(B, T)`` content mask from decoded token strings (rows of equal length ``T``).

    The rule (no POS tagger): the token strings of a row are concatenated and split into words, a word being a
    maximal run of letters and digits (so sub-word pieces without a space between them form one word, and
    punctuation, spaces and ``_`` separate words). A word is a *content word* (roughly: noun, verb, adjective,
    adverb or number) when it contains a digit, or when it is alphabetic, has at least 3 letters and is not in
    :data:`STOPWORDS` (English function words). Every token overlapping a content word is a content token; the
    strings in ``special`` (special tokens) act as word breaks and are never content.
    """
    special_set = set(special)
    out = []
    for row in rows:
        texts = [" " if s in special_set else s for s in row]
        owner: list[int] = []  # token index of every character of the joined row
        for j, s in enumerate(texts):
            owner.extend([j] * len(s))
        flags = [False] * len(texts)
        for match in _WORD_RE.finditer("".join(texts)):
            if _is_content_word(match.group()):
                for pos in range(match.start(), match.end()):
                    flags[owner[pos]] = True
        for j, s in enumerate(row):
            if s in special_set:
                flags[j] = False
        out.append(flags)
    return torch.tensor(out, dtype=torch.bool) if out else torch.zeros((0, 0), dtype=torch.bool)


def content_token_mask(token_ids: torch.Tensor, tokenizer: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``(B, T)`` content mask of ``token_ids`` ``(B, T)`` (rule: :func:`content_mask_from_strings`).

    Each id is decoded on its own (``tokenizer.decode([id])``); the tokenizer's special and added tokens never count.
    ``mask`` (e.g. the response mask) is applied last.
    """
    ids = torch.as_tensor(token_ids)
    special = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    special.update(str(t) for t in getattr(tokenizer, "get_added_vocab", dict)().keys())
    cache: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        return cache[i]

    rows = [[text(int(i)) for i in row] for row in ids.tolist()] if ids.numel() else [[] for _ in range(ids.shape[0])]
    out = content_mask_from_strings(rows, special=special).to(ids.device).reshape(ids.shape)
    return out & mask.bool() if mask is not None else out
