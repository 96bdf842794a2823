"""Prompt templates for QA and captioning that name the streams shown to the policy.

A template is a ``str.format`` string whose blank-line separated paragraphs are filled from these fields:

* ``{media}``: the media block, one labelled paragraph per shown stream (``Video: <video>``, ``Audio: <audio>``,
  ``Subtitles: "..."``). It carries the ``<video>`` / ``<audio>`` placeholders that verl fills, so a template
  without it gets the block put in front.
* ``{streams}``: the shown streams in words ("the video and the audio track"; "no media, only this text").
* ``{question}``: the question text; ``{options}``: the lettered options, one per line.
* ``{instruction}``: the answer-format sentence of the style (``bracket``: ``[B]``; ``answer_tag``:
  ``<answer>B</answer>``). A template without it gets it appended as the last paragraph.

A paragraph that renders to nothing (e.g. ``{media}`` of a text-only prompt) is dropped, so the default QA template
gives exactly the prompt :func:`build_prompt` has always built.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_modality import options
from verl_modality.options import option
from verl_modality.vocabulary import AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER, letter

#: The default answer instruction of multiple-choice prompts (style ``bracket``).
ANSWER_INSTRUCTION = (
    "Reason briefly if you need to, then end your reply with the letter of the chosen option in square brackets, "
    "for example [B]."
)
#: The default caption instruction.
CAPTION_INSTRUCTION = "Describe the clip in a few sentences, using every input you are given."

STYLES = ("bracket", "answer_tag")
#: how the options are named in messages
SECTION = "prompt"
PROMPT_TASKS = ("qa", "caption")
FIELDS = ("media", "streams", "question", "options", "instruction")

#: Answer-format sentences of the QA task, by style. ``bracket`` is the schema's historical instruction.
QA_INSTRUCTIONS = {
    "bracket": ANSWER_INSTRUCTION,
    "answer_tag": (
        "Reason briefly if you need to, then finish your reply with the letter of the chosen option between answer "
        "tags, for example <answer>B</answer>."
    ),
}
#: Closing sentences of the caption task, by style.
CAPTION_INSTRUCTIONS = {
    "bracket": "Write the description as one or two plain paragraphs, without lists or headings.",
    "answer_tag": (
        "You may plan briefly first; then give the finished description between answer tags, as in "
        "<answer>your description</answer>."
    ),
}

_SOURCES = "Sources available to you: {streams}."
#: Built-in QA templates. ``default`` is the historical prompt; ``described`` also names the shown streams in words.
QA_TEMPLATES = {
    "default": "{media}\n\nQuestion: {question}\nOptions:\n{options}\n\n{instruction}",
    "described": (
        "{media}\n\n"
        + _SOURCES
        + " Answer from what these sources show.\n\nQuestion: {question}\nOptions:\n{options}\n\n{instruction}"
    ),
}
#: Built-in caption templates.
CAPTION_TEMPLATES = {
    "default": (
        "{media}\n\n" + _SOURCES + "\n\nDescribe this clip in detail using every source listed above: what can be "
        "seen, what can be heard and what is said, and how these fit together. Report only what the sources support."
        "\n\n{instruction}"
    ),
    "brief": "{media}\n\n" + _SOURCES + "\n\nSum up the clip in two or three sentences.\n\n{instruction}",
}

_STREAM_WORDS = {"V": "the video", "A": "the audio track", "S": "the subtitles"}
NO_STREAMS = "no media, only this text"


def stream_phrase(n_videos: int = 0, n_audios: int = 0, subtitle: str | None = None) -> str:
    """The shown streams in words: "the video", "the video and the subtitles", "the video, the audio track and the
    subtitles"; several files are counted ("2 videos"). Text only gives :data:`NO_STREAMS`."""
    words = []
    if n_videos:
        words.append(_STREAM_WORDS["V"] if n_videos == 1 else f"{n_videos} videos")
    if n_audios:
        words.append(_STREAM_WORDS["A"] if n_audios == 1 else f"{n_audios} audio tracks")
    if subtitle:
        words.append(_STREAM_WORDS["S"])
    if not words:
        return NO_STREAMS
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def media_block(n_videos: int = 0, n_audios: int = 0, subtitle: str | None = None) -> str:
    """The labelled placeholder paragraphs of the shown streams, ``""`` when none is shown."""
    parts = []
    if n_videos:
        parts.append("Video: " + " ".join([VIDEO_PLACEHOLDER] * n_videos))
    if n_audios:
        parts.append("Audio: " + " ".join([AUDIO_PLACEHOLDER] * n_audios))
    if subtitle:
        parts.append(f'Subtitles: "{subtitle}"')
    return "\n\n".join(parts)


def options_block(choices: Sequence[str]) -> str:
    """``A. text`` lines, one per option."""
    return "\n".join(f"{letter(i)}. {text}" for i, text in enumerate(choices))


def template_fields(template: str, what: str = "template") -> list[str]:
    """The field names of a format string; ``ValueError`` for malformed strings, unknown fields, positional fields."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"{what} {template!r} is not a valid format string ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            raise ValueError(
                f"{what} uses the unknown field {{{name}}}; the fields are " + ", ".join(f"{{{f}}}" for f in FIELDS)
            )
        names.append(name)
    return names


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are worded.

    ``style``: answer format, ``bracket`` (``[B]``) or ``answer_tag`` (``<answer>B</answer>``).
    ``qa_template`` / ``caption_template``: a built-in name (:data:`QA_TEMPLATES`, :data:`CAPTION_TEMPLATES`) or a
    format string with the fields of this module's docstring. ``instruction``: replaces the style's closing
    sentence ("" drops it). ``system_prompt``: when set, a system message in front of the user message.
    """

    style: str = option("bracket", choices=STYLES)
    qa_template: str = "default"
    caption_template: str = "default"
    instruction: str | None = None
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        options.validate(self, SECTION)
        qa = self.template("qa")
        used = template_fields(qa, "qa_template")
        missing = [f for f in ("question", "options") if f not in used]
        if missing:
            raise ValueError(
                f"qa_template {self.qa_template!r} lacks "
                + " and ".join(f"{{{f}}}" for f in missing)
                + f"; a QA prompt needs both (built-in names: {', '.join(QA_TEMPLATES)})"
            )
        template_fields(self.template("caption"), "caption_template")

    def template(self, task: str) -> str:
        """The format string of ``task`` (a built-in name resolved)."""
        if task == "qa":
            return QA_TEMPLATES.get(self.qa_template, self.qa_template)
        if task == "caption":
            return CAPTION_TEMPLATES.get(self.caption_template, self.caption_template)
        raise ValueError(f"unknown prompt task {task!r}; expected one of {', '.join(PROMPT_TASKS)}")

    def instruction_for(self, task: str) -> str:
        if self.instruction is not None:
            return self.instruction
        self.template(task)  # validates the task
        return (QA_INSTRUCTIONS if task == "qa" else CAPTION_INSTRUCTIONS)[self.style]

    @classmethod
    def from_config(cls, config: Any = None) -> PromptConfig:
        """From None (defaults), a PromptConfig, a dict or OmegaConf node, or the path of a YAML file.

        A mapping may hold the fields directly or under a single ``prompt`` key. Unknown keys raise ``ValueError``.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        section, file = SECTION, None
        if isinstance(config, str | os.PathLike):
            import yaml

            path = Path(config)
            if not path.is_file():
                raise ValueError(f"prompt config file {os.fspath(path)!r} does not exist")
            try:
                config = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as err:
                raise ValueError(
                    f"prompt config file {os.fspath(path)!r} is not valid YAML: {' '.join(str(err).split())}"
                ) from None
            file = os.fspath(path)
            section = f"{SECTION} (file {file!r})"
            if not isinstance(config, Mapping):
                raise ValueError(f"{section} must be a mapping, got {type(config).__name__}")
        config = options.plain(config)
        if isinstance(config, Mapping) and set(config) == {"prompt"} and isinstance(config["prompt"], Mapping):
            config = config["prompt"]
        try:
            return options.load(cls, config, section)
        except ValueError as err:
            if file is None or file in str(err):
                raise
            raise ValueError(f"prompt config file {file!r}: {err}") from None  # a bad value: the field and its file


def render_user_text(
    question: str,
    choices: Sequence[str] = (),
    n_videos: int = 0,
    n_audios: int = 0,
    subtitle: str | None = None,
    task: str = "qa",
    config: PromptConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    instruction: str | None = None,
) -> str:
    """The user message text for the shown streams (``subtitle`` None or "" when S is not shown).

    ``instruction`` overrides the configured closing sentence. ``task="qa"`` needs 2 or more choices; captions
    ignore them.
    """
    cfg = PromptConfig.from_config(config)
    template = cfg.template(task)
    if task == "qa" and not choices:
        raise ValueError(f"a QA prompt needs options; got none for the question {question!r}")
    values = {
        "media": media_block(n_videos, n_audios, subtitle),
        "streams": stream_phrase(n_videos, n_audios, subtitle),
        "question": question,
        "options": options_block(choices) if task == "qa" else "",
        "instruction": cfg.instruction_for(task) if instruction is None else instruction,
    }
    used = template_fields(template)
    if "media" not in used:
        template = "{media}\n\n" + template
    if "instruction" not in used:
        template = template + "\n\n{instruction}"
    paragraphs = [p.format(**values) for p in template.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p.strip())


def render_messages(
    question: str,
    choices: Sequence[str] = (),
    n_videos: int = 0,
    n_audios: int = 0,
    subtitle: str | None = None,
    task: str = "qa",
    config: PromptConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    instruction: str | None = None,
) -> list[dict[str, str]]:
    """The chat message list: the system prompt (when configured), then the user message of
    :func:`render_user_text`."""
    cfg = PromptConfig.from_config(config)
    text = render_user_text(question, choices, n_videos, n_audios, subtitle, task, cfg, instruction=instruction)
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return [*messages, {"role": "user", "content": text}]


def build_prompt(
    question: str,
    choices: Sequence[str],
    n_videos: int = 0,
    n_audios: int = 0,
    subtitle: str | None = None,
    instruction: str = ANSWER_INSTRUCTION,
) -> list[dict[str, str]]:
    """The standard single-turn user prompt: media placeholders, subtitle (when shown), question, options, format.
    The default wording of this module (other styles and templates: :func:`render_messages`)."""
    return render_messages(question, choices, n_videos, n_audios, subtitle, instruction=instruction)


def build_caption_prompt(
    instruction: str = CAPTION_INSTRUCTION, n_videos: int = 0, n_audios: int = 0, subtitle: str | None = None
) -> list[dict[str, str]]:
    """The caption prompt: media placeholders, subtitle (when shown), then the caption instruction (no options)."""
    block = media_block(n_videos, n_audios, subtitle)
    parts = [block] if block else []
    parts.append(instruction or CAPTION_INSTRUCTION)
    return [{"role": "user", "content": "\n\n".join(parts)}]
