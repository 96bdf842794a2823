"""Multiple-choice answer reward for QA rows (ground truth: the answer letter; docs/method.md §4, §6).

Plain functions on strings, usable as verl's ``reward.custom_reward_function`` (``compute_score``) and by the
evaluation code.

Reading the answer (:func:`extract_choice`, the *letter rule*). Text inside complete ``<think>...</think>`` blocks is
reasoning and never the answer. Wherever a span is read as a whole (a tag, a bracket, the reply), a span that is exactly
one option's text names that option, before any letter reading: with options ``["G", "A#", "D", "E"]`` the reply ``D``
is the third option (``C``), not the fourth. Then:

* ``<answer>...</answer>`` (R1-AQA / AudioMCQ / MAPO-AT convention). When a reply has such a tag, its last tag
  decides. The tag may hold the letter (``B``, ``[B]``, ``(B)``, ``B.``, ``Option B``), one option's text (compared
  without regard to case, spacing or a final full stop), a letter followed by that option's text (``B. red video``),
  or a *none-answer*. A tag that names two different options (``B or C``, ``B. <text of C>``, ``B or none of the
  above``), or nothing readable, gives no answer.
* Otherwise the last ``[...]`` of the reply that names an option (MAPLE's format): a letter, an option's text, a
  letter with its text, or a none-answer; brackets that name nothing (``[laughs]``) are skipped. A reply whose whole
  text is a none-answer counts as one. Failing all that, the last standalone option letter counts, as many benchmark
  scorers accept.

None-answers (MAPLE-QA+, docs/method.md §3): a reply text that is one of the project's none-answer statements
(:mod:`verl_modality.data.none_answers`) or a generic form ("none of the above", "none of the options", "cannot be
determined", "not enough information", ...) selects the row's none-answer option: ``extra_info["none_index"]``
(-1: the row has none), or, for rows without that key, the one option whose text is itself a none-answer. Without a
none-answer option such a reply names no option and is wrong. An option whose text equals the reply exactly wins over
the none-answer reading.

MMAU / MMSU / MMAR rows (``data_source`` starting with ``mmau``, ``mmsu``, ``mmar``, or ``match="string"``) are scored
with MMAU's string-match rule (:mod:`verl_modality.rewards.string_match`) against the answer text
(``extra_info["answer_text"]``, else the answer letter's option text). What the rule judges depends on
``string_rule``:

* ``lenient`` (the training default): the last ``<answer>`` tag's content, else the last bracket that names an option,
  else the reply without its think blocks; a span that is exactly an option's text stays as it is, otherwise a leading
  option letter (``B``, ``(B) ...``) is replaced by that option's text, and a none-answer by the none-answer option's
  text.
* ``official``: the raw reply, exactly as the benchmarks' own scripts (MMAU ``evaluation.py``, MMAR
  ``code/evaluation.py``) receive the model's output: think blocks, tags and letters are words like any other, so a
  letter-only reply (``(B)``) matches no option text and scores 0.

Format (``formatted``, :func:`format_ok`):

* ``bracket``: after a leading think block (optional; required with ``require_think``) there is no think/answer tag
  and the reply ends with a non-empty ``[...]`` (a final full stop and spaces allowed).
* ``answer_tag``: the whole reply is an optional ``<think>...</think>`` block (required with ``require_think``)
  followed by exactly one non-empty ``<answer>...</answer>`` and nothing else but whitespace; no other think/answer
  tags anywhere. This is the structure R1-style format rewards check (the audio-contribution recipe's 0.5 bonus).
* ``any``: either of the two.

Score: ``answer_weight * acc + format_weight * formatted`` (defaults 1.0 and 0.0: the plain 1/0 reward; the
audio-contribution recipe uses 2.0 and 0.5 with ``answer_format=answer_tag``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from verl_modality import options, protocol
from verl_modality.data.none_answers import NONE_ANSWERS
from verl_modality.options import option
from verl_modality.rewards.string_match import matched_option, mmau_string_match, word_tokens
from verl_modality.vocabulary import LETTERS

#: data_source prefixes scored with MMAU's string-match rule (docs/method.md §8).
STRING_MATCH_SOURCES = ("mmau", "mmsu", "mmar")
ANSWER_FORMATS = ("any", "bracket", "answer_tag")
MATCH_RULES = ("auto", "letter", "string")
#: How the string-match rule reads a reply: ``official`` (the raw reply, as the benchmark scripts do) or ``lenient``.
STRING_RULES = ("official", "lenient")
SECTION = "reward.custom_reward_function.reward_kwargs"  # where verl's config holds these options
#: Where caption rows are scored instead.
CAPTION_JUDGE = "pkg://verl_modality.rewards.caption_judge"

_BRACKETED = re.compile(r"\[\s*([A-F])\s*\]")
_BRACKET_ANY = re.compile(r"\[([^\[\]]{1,300})\]")
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-F])(?![A-Za-z])")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LETTER_ONLY = re.compile(r"^[\s\[\(\"'*]*(?:(?i:option)\s+)?([A-F])[\s\]\)\"'*.:]*$")
_LETTER_PREFIX = re.compile(r"^[\s\[\(\"'*]*(?:(?i:option)\s+)?([A-F])\s*[\]\).:-]\s*(.+)$", re.DOTALL)
_SPACES = re.compile(r"\s+")
_ANY_TAG = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)
_TAG_REPLY = re.compile(
    r"\s*(?P<think><think>(?P<reason>.*?)</think>\s*)?<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL | re.IGNORECASE
)
_BRACKET_END = re.compile(r"\[[^\[\]]*\S[^\[\]]*\]\s*\.?\s*$")
_LEADING_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL | re.IGNORECASE)

_NONE_GENERIC = re.compile(
    r"(?:the answer is |answer: )?(?:"
    r"none|none of (?:these|them|those)|neither|neither of them"
    r"|none of the (?:above|below|options|choices|answers|listed|given|provided)"
    r"|none of the (?:given|provided|listed|above) (?:options|choices|answers)"
    r"|no (?:correct|right|valid) (?:answer|option|choice)|there is no (?:correct|right) (?:answer|option|choice)"
    r"|no option is (?:correct|right)|no answer"
    r"|(?:it )?(?:cannot|can't|can not) (?:be determined|be told|tell|be answered|determine)|undeterminable"
    r"|not determinable|unanswerable|unknown|i (?:don't|do not) know|not sure"
    r"|(?:there is )?(?:not enough|insufficient) (?:information|evidence)(?: to (?:answer|tell|decide))?"
    r")(?: (?:is|are) (?:correct|right|applicable))?"
)
_NONE_SEARCH = re.compile(r"\bnone of (?:the|these|them|those)\b", re.IGNORECASE)

_NONE_REPLY = "none"  # marker: the reply gave a none-answer but the row has no none-answer option
_AMBIGUOUS = "ambiguous"  # marker: the text names two different options


def _norm(text: str) -> str:
    """Case-, space- and trailing-punctuation-insensitive form of an option text."""
    return _SPACES.sub(" ", str(text)).strip().strip(".!\"'").strip().casefold()


@lru_cache(maxsize=1)
def _none_statements() -> frozenset[str]:
    return frozenset(_norm(s) for s in NONE_ANSWERS)


def is_none_answer(text: str) -> bool:
    """Whether ``text`` is a none-answer: one of the project's statements or a generic form ("none of the above")."""
    norm = _norm(text)
    return norm in _none_statements() or _NONE_GENERIC.fullmatch(norm) is not None


def none_option_index(choices: Sequence[str] | None, none_index: Any = None) -> int | None:
    """The index of the row's none-answer option, or None. ``none_index`` is ``extra_info["none_index"]`` (-1: none;
    None/absent: the single option whose text is a none-answer, if there is exactly one)."""
    if none_index is not None:
        idx = int(none_index)
        if idx < 0:
            return None
        if choices is not None and idx >= len(choices):
            raise ValueError(f"extra_info.none_index {idx} is outside the {len(choices)} options {list(choices)!r}")
        return idx
    if not choices:
        return None
    hits = [i for i, c in enumerate(choices) if is_none_answer(c)]
    return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True)
class _Options:
    allowed: str  # letters that name an option
    choices: tuple[str, ...] | None  # option texts, when known
    none_letter: str | None  # letter of the none-answer option


def _options(n_choices: int, choices: Sequence[str] | None, none_index: Any) -> _Options:
    if choices is not None:
        choices = tuple(str(c) for c in choices)
        n_choices = min(n_choices, len(choices))
    allowed = LETTERS[:n_choices]
    idx = none_option_index(choices, none_index)
    none_letter = LETTERS[idx] if idx is not None and idx < len(allowed) else None
    return _Options(allowed, choices, none_letter)


def _text_match(text: str, opts: _Options) -> str | None:
    """The letter of the one option whose text equals ``text`` (normalised), else None."""
    if not opts.choices:
        return None
    want = _norm(text)
    hits = {LETTERS[i] for i, c in enumerate(opts.choices) if i < len(opts.allowed) and _norm(c) == want}
    return hits.pop() if len(hits) == 1 else None


def _resolve(content: str, opts: _Options) -> str | None:
    """What ``content`` names as a whole: a letter, :data:`_NONE_REPLY` (a none-answer with no none option),
    :data:`_AMBIGUOUS` (a letter with another option's text), or None (nothing)."""
    by_text = _text_match(content, opts)
    if by_text is not None:  # an option's own text wins over a letter reading ("D" among notes G, A#, D, E)
        return by_text
    m = _LETTER_ONLY.match(content)
    if m:
        return m.group(1) if m.group(1) in opts.allowed else None
    if is_none_answer(content):
        return opts.none_letter or _NONE_REPLY
    m = _LETTER_PREFIX.match(content)
    if m and m.group(1) in opts.allowed:
        letter, rest = m.group(1), m.group(2)
        named = _text_match(rest, opts)
        if named is None and is_none_answer(rest):
            named = opts.none_letter or _NONE_REPLY
        if named is not None:
            return letter if named == letter else _AMBIGUOUS  # "B. <text of C>"
    return None


def _read_tag(content: str, opts: _Options) -> str | None:
    """The option an ``<answer>`` tag's content names, or None when it names none or two different ones."""
    named = _resolve(content, opts)
    if named is not None:
        return None if named in (_NONE_REPLY, _AMBIGUOUS) else named
    for pattern in (_BRACKETED, _STANDALONE):
        found = set(pattern.findall(content))
        if found:
            if len(found) != 1 or not found <= set(opts.allowed):
                return None
            letter = found.pop()
            if _NONE_SEARCH.search(content) and letter != opts.none_letter:
                return None  # "B or none of the above"
            return letter
    return None


def _strip_think(text: str) -> str:
    return _THINK_BLOCK.sub(" ", text)


def _last_bracket(body: str, opts: _Options) -> tuple[str, str] | None:
    """``(content, named)`` of the last ``[...]`` that names an option (or is a none-answer), else None."""
    for m in reversed(list(_BRACKET_ANY.finditer(body))):
        named = _resolve(m.group(1), opts)
        if named is not None:
            return m.group(1), named
    return None


def _extract(text: str, opts: _Options) -> str | None:
    body = _strip_think(str(text))
    tagged = _ANSWER_TAG.findall(body)
    if tagged:
        return _read_tag(tagged[-1], opts)
    whole = _text_match(body, opts)
    if whole is not None:
        return whole
    bracket = _last_bracket(body, opts)
    if bracket is not None:
        return None if bracket[1] in (_NONE_REPLY, _AMBIGUOUS) else bracket[1]
    if body.strip() and is_none_answer(body):
        return opts.none_letter
    found = [m for m in _STANDALONE.findall(body) if m in opts.allowed]
    return found[-1] if found else None


def extract_choice(
    text: str, n_choices: int = len(LETTERS), choices: Sequence[str] | None = None, none_index: int | None = None
) -> str | None:
    """The option letter a reply commits to, or None (letter rule, see the module doc). Only letters of the first
    ``n_choices`` options count; ``choices`` (the option texts) lets option texts count as well; ``none_index`` is the
    none-answer option (-1: none; None: the one option whose text is a none-answer, if any)."""
    return _extract(text, _options(n_choices, choices, none_index))


def format_ok(reply: str, answer_format: str = "any", require_think: bool = False) -> bool:
    """Whether ``reply`` has the structure ``answer_format`` asks for (``any`` | ``bracket`` | ``answer_tag``; see the
    module doc). ``require_think`` demands a leading ``<think>...</think>`` block in either format."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format {answer_format!r} is not one of {ANSWER_FORMATS}")
    reply = str(reply)
    tag_ok = False
    m = _TAG_REPLY.fullmatch(reply)
    if m and m.group("answer").strip() and not _ANY_TAG.search(m.group("answer")):
        reason = m.group("reason")
        tag_ok = (reason is None or not _ANY_TAG.search(reason)) and (not require_think or m.group("think") is not None)
    if answer_format == "answer_tag":
        return tag_ok
    lead = _LEADING_THINK.match(reply)
    rest = reply[lead.end() :] if lead else reply
    bracket_ok = (
        (lead is not None or not require_think) and not _ANY_TAG.search(rest) and _BRACKET_END.search(rest) is not None
    )
    if answer_format == "bracket":
        return bracket_ok
    return tag_ok or bracket_ok


@dataclass(frozen=True)
class AnswerRewardConfig:
    """``reward.custom_reward_function.reward_kwargs`` of :func:`compute_score`."""

    answer_weight: float = (
        1.0  # docs/method.md §4: 1/0 for the answer; the audio-contribution recipe (section 6) uses 2.0
    )
    format_weight: float = 0.0  # docs/method.md §4: optional format bonus; the audio-contribution recipe uses 0.5
    # which structure earns the bonus: any | bracket | answer_tag
    answer_format: str = option("any", choices=ANSWER_FORMATS)
    require_think: bool = False  # the bonus also needs a leading <think>...</think> (R1-style format reward)
    # auto (string rule for mmau/mmsu/mmar data sources) | letter | string (docs/method.md §8)
    match: str = option("auto", choices=MATCH_RULES)
    # how the string-match rule reads a reply: lenient (answer span, letters read) | official (raw reply, as MMAU's
    # and MMAR's scripts do; letter-only replies score 0)
    string_rule: str = option("lenient", choices=STRING_RULES)

    def __post_init__(self) -> None:
        options.validate(self, SECTION)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> AnswerRewardConfig:
        """From ``reward_kwargs``; an unknown key raises ``ValueError`` naming it (see :data:`ANSWER_KWARGS`)."""
        return options.load(cls, {k: v for k, v in kwargs.items() if k not in _VERL_KWARGS}, SECTION)


#: The reward_kwargs :func:`compute_score` accepts.
ANSWER_KWARGS: tuple[str, ...] = tuple(f.name for f in fields(AnswerRewardConfig))
# passed by verl's naive reward manager when a reward router is configured; not ours, ignored
_VERL_KWARGS = ("reward_router_address", "reward_model_tokenizer")


def _starts_with_option(span: str, opts: _Options) -> bool:
    """Whether ``span`` begins with a whole option text (``D:maj/M3 fits``), so its first letter is not a label."""
    norm = _SPACES.sub(" ", span).strip().casefold()
    for choice in opts.choices or ():
        text = _norm(choice)
        if text and norm.startswith(text) and not norm[len(text) : len(text) + 1].isalnum():
            return True
    return False


def _string_prediction(reply: str, opts: _Options) -> str:
    """The text MMAU's rule judges under the lenient reading: the committed answer span, with option letters and
    none-answers expanded (an exact option text is kept as it is)."""
    body = _strip_think(str(reply))
    tagged = _ANSWER_TAG.findall(body)
    if tagged:
        span = tagged[-1]
    else:
        bracket = _last_bracket(body, opts)
        span = bracket[0] if bracket is not None else body
    if opts.choices is None:
        return span
    texts = opts.choices

    def text_of(letter: str | None) -> str:
        return texts[LETTERS.index(letter)] if letter is not None and letter in opts.allowed else ""

    if _text_match(span, opts) is not None:
        return span
    m = _LETTER_ONLY.match(span)
    if m:
        return text_of(m.group(1)) or span
    if is_none_answer(span):
        return text_of(opts.none_letter)  # "" (no tokens: wrong) when the row has no none-answer option
    m = _LETTER_PREFIX.match(span)
    if m and m.group(1) in opts.allowed and not _starts_with_option(span, opts):
        rest = m.group(2)
        if _text_match(rest, opts) is None and is_none_answer(rest):
            rest = text_of(opts.none_letter)
        return f"{text_of(m.group(1))} {rest}"
    return span


def string_prediction(
    reply: str, choices: Sequence[str], none_index: int | None = None, string_rule: str = "lenient"
) -> str:
    """The text MMAU's string-match rule compares with the option texts (see :func:`score_reply`): the raw reply for
    ``string_rule="official"``, the lenient reading of it otherwise."""
    if string_rule not in STRING_RULES:
        raise ValueError(f"string_rule {string_rule!r} is not one of {STRING_RULES}")
    if string_rule == "official":
        return str(reply)
    return _string_prediction(reply, _options(len(choices), [str(c) for c in choices], none_index))


def _row(row_id: Any) -> str:
    return f" (row {row_id!r})" if row_id is not None else ""


def _answer_letter(ground_truth: Any, n_options: int, row_id: Any = None) -> str:
    answer = str(ground_truth).strip().upper()
    where = _row(row_id)
    if len(answer) != 1 or answer not in LETTERS:
        raise ValueError(f"ground truth {ground_truth!r} is not an option letter A-F{where}")
    if LETTERS.index(answer) >= n_options:
        span = f" (A-{LETTERS[n_options - 1]})" if n_options else ""
        raise ValueError(f"ground truth {ground_truth!r} is outside the row's {n_options} options{span}{where}")
    return answer


def score_reply(
    reply: str,
    answer: str,
    choices: Sequence[str] | None = None,
    *,
    n_choices: int = len(LETTERS),
    none_index: int | None = None,
    answer_text: str | None = None,
    string_match: bool = False,
    config: AnswerRewardConfig | None = None,
    row_id: Any = None,
) -> dict[str, float | str]:
    """The full reward record of one reply: ``score``, ``acc``, ``formatted`` (floats), ``parsed`` (letter or ""),
    ``pred_none``/``gold_none`` (1.0 when the parsed/correct option is the none-answer option), ``string_match``
    (1.0 when MMAU's rule decided; ``config.string_rule`` says how it reads the reply). ``string_match=True`` needs
    ``choices`` or ``answer_text``. A ground truth outside the row's options raises, naming ``row_id``."""
    config = config or AnswerRewardConfig()
    opts = _options(n_choices, choices, none_index)
    answer = _answer_letter(answer, len(opts.allowed), row_id)
    if string_match:
        if answer_text is None:
            if opts.choices is None:
                raise ValueError(f"string matching needs the answer's text: no option texts given{_row(row_id)}")
            answer_text = opts.choices[LETTERS.index(answer)]
        if not word_tokens(answer_text):
            raise ValueError(f"answer text {answer_text!r} has no word tokens to string-match{_row(row_id)}")
        if config.string_rule == "official":
            prediction = str(reply)
        else:
            prediction = _string_prediction(reply, opts)
        correct = mmau_string_match(prediction, answer_text, opts.choices or ())
        hit = matched_option(prediction, opts.choices[: len(opts.allowed)]) if opts.choices else None
        parsed = LETTERS[hit] if hit is not None else ""
    else:
        parsed = _extract(reply, opts) or ""
        correct = parsed == answer
    formatted = format_ok(reply, config.answer_format, config.require_think)
    acc = float(correct)
    return {
        "score": float(config.answer_weight) * acc + float(config.format_weight) * float(formatted),
        protocol.REWARD_ACC: acc,
        "formatted": float(formatted),
        "parsed": parsed,
        "pred_none": float(bool(parsed) and parsed == opts.none_letter),
        "gold_none": float(answer == opts.none_letter),
        "string_match": float(string_match),
    }


def choice_score(
    reply: str, answer: str, n_choices: int = len(LETTERS), choices: Sequence[str] | None = None
) -> dict[str, float]:
    """``{"score", "acc", "formatted"}``: 1.0/0.0 for a correct letter (letter rule), and whether the reply used the
    ``[...]`` or ``<answer>`` format."""
    full = score_reply(reply, answer, choices, n_choices=n_choices)
    return {"score": full["score"], "acc": full["acc"], "formatted": full["formatted"]}


def uses_string_match(data_source: str) -> bool:
    """Whether ``data_source`` is an MMAU / MMSU / MMAR one (scored with MMAU's string-match rule)."""
    return str(data_source).strip().lower().startswith(STRING_MATCH_SOURCES)


def string_matched(data_source: str, match: str = "auto") -> bool:
    """Whether ``match`` (``auto`` | ``letter`` | ``string``) scores rows of ``data_source`` with the string rule."""
    return match == "string" or (match == "auto" and uses_string_match(data_source))


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, float | str]:
    """verl's custom reward function for QA rows
    (``reward.custom_reward_function.path=pkg://verl_modality.rewards.choice``,
    ``name=compute_score``); ``reward_kwargs`` are the fields of :class:`AnswerRewardConfig`.

    ``extra_info`` may carry ``choices`` (option texts), ``n_choices``, ``none_index``, ``answer_text``. Caption rows
    (``sample_task == "caption"``) raise: they are scored by the caption judge."""
    config = AnswerRewardConfig.from_kwargs(kwargs)
    info = extra_info or {}
    if info.get(protocol.INFO_TASK) == "caption":
        raise ValueError(
            f"row {info.get(protocol.INFO_ID)!r} ({data_source}) is a caption row: {__name__}.compute_score scores multiple choice "
            f"only; score captions with the caption judge ({CAPTION_JUDGE})"
        )
    n_choices = int(info["n_choices"]) if info.get("n_choices") else len(LETTERS)
    raw = info.get(protocol.INFO_CHOICES)
    choices = [str(c) for c in raw] if raw is not None and len(raw) else None
    none_index = info.get(protocol.INFO_NONE_INDEX)
    answer_text = info.get(protocol.INFO_ANSWER_TEXT)
    return score_reply(
        solution_str,
        ground_truth,
        choices,
        n_choices=n_choices,
        none_index=None if none_index is None else int(none_index),
        answer_text=str(answer_text) if answer_text is not None and str(answer_text) != "" else None,
        string_match=string_matched(data_source, config.match),
        config=config,
        row_id=info.get(protocol.INFO_ID),
    )


def score_row(row: Mapping[str, Any], reply: str, **kwargs: Any) -> dict[str, float | str]:
    """:func:`compute_score` for a schema row (a plain dict: ``data_source``, ``answer``, ``choices``,
    ``extra_info``), exactly as training scores it; ``kwargs`` are :class:`AnswerRewardConfig` fields."""
    info = dict(row.get("extra_info") or {})
    if info.get(protocol.INFO_CHOICES) is None or not len(info[protocol.INFO_CHOICES]):
        info[protocol.INFO_CHOICES] = [str(c) for c in (row.get("choices") if row.get("choices") is not None else [])]
    if row.get("id") is not None:
        info.setdefault(protocol.INFO_ID, row["id"])
    return compute_score(str(row["data_source"]), reply, str(row["answer"]), info, **kwargs)
