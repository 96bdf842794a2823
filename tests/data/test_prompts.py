"""Prompt templates: the default equals the historical prompt, streams are named exactly, configs fail clearly."""

from __future__ import annotations

import re

import pytest

from verl_modality.data import prompts, schema
from verl_modality.data.prompts import PromptConfig, render_messages, render_user_text

CHOICES = ["red", "blue", "green"]
SUBTITLE = "Look, a goat {is} here."  # braces must pass through untouched
STREAM_SETS = ["", "V", "A", "S", "VA", "VS", "AS", "VAS"]
STREAM_WORDS = {"V": "video", "A": "audio", "S": "subtitle"}


def old_build_prompt(question, choices, n_videos=0, n_audios=0, subtitle=None, instruction=prompts.ANSWER_INSTRUCTION):
    """The formula prompts.build_prompt used before it delegated to prompts (copied by hand)."""
    parts = []
    if n_videos:
        parts.append("Video: " + " ".join(["<video>"] * n_videos))
    if n_audios:
        parts.append("Audio: " + " ".join(["<audio>"] * n_audios))
    if subtitle:
        parts.append(f'Subtitles: "{subtitle}"')
    options = "\n".join(f"{'ABCDEF'[i]}. {text}" for i, text in enumerate(choices))
    parts.append(f"Question: {question}\nOptions:\n{options}")
    parts.append(instruction)
    return [{"role": "user", "content": "\n\n".join(parts)}]


def _args(streams: str, n: int = 1):
    return (n if "V" in streams else 0, n if "A" in streams else 0, SUBTITLE if "S" in streams else None)


@pytest.mark.parametrize("streams", STREAM_SETS)
@pytest.mark.parametrize("n", [1, 2])
def test_default_equals_old_build_prompt(streams, n):
    nv, na, sub = _args(streams, n)
    old = old_build_prompt("Which colour is shown?", CHOICES, nv, na, sub)
    assert render_messages("Which colour is shown?", CHOICES, nv, na, sub) == old
    assert prompts.build_prompt("Which colour is shown?", CHOICES, nv, na, sub) == old
    assert prompts.build_prompt("Q?", CHOICES, nv, na, sub, instruction="Say [A].") == old_build_prompt(
        "Q?", CHOICES, nv, na, sub, instruction="Say [A]."
    )
    assert render_messages("Q?", CHOICES, nv, na, "") == old_build_prompt("Q?", CHOICES, nv, na, "")


def test_sample_prompt_unchanged():
    s = schema.Sample.create("x", "Which?", CHOICES, "B", "VS", videos=["v.mp4"], audios=["a.wav"], subtitle="hi")
    assert s.prompt == old_build_prompt("Which?", CHOICES, 1, 0, "hi")
    assert s.with_available("").prompt == old_build_prompt("Which?", CHOICES)


def _mentioned(text: str) -> set[str]:
    text = text.lower()
    return {s for s, word in STREAM_WORDS.items() if word in text}


@pytest.mark.parametrize("style", prompts.STYLES)
@pytest.mark.parametrize(
    ("task", "template"),
    [("qa", "default"), ("qa", "described"), ("caption", "default"), ("caption", "brief")],
)
def test_prompts_mention_exactly_the_shown_streams(style, task, template):
    key = "qa_template" if task == "qa" else "caption_template"
    cfg = PromptConfig(style=style, **{key: template})
    for streams in STREAM_SETS:
        nv, na, _ = _args(streams)
        text = render_user_text(
            "What happens here?", CHOICES, nv, na, "hello there" if "S" in streams else None, task, cfg
        )
        assert _mentioned(text) == set(streams), (streams, text)
        assert text.count("<video>") == nv and text.count("<audio>") == na
        if template != "default":
            assert prompts.stream_phrase(nv, na, "x" if "S" in streams else None) in text


def test_stream_phrase():
    assert prompts.stream_phrase(1, 1, "s") == "the video, the audio track and the subtitles"
    assert prompts.stream_phrase(0, 1, "s") == "the audio track and the subtitles"
    assert prompts.stream_phrase(2, 0, None) == "2 videos"
    assert prompts.stream_phrase() == prompts.NO_STREAMS


def test_answer_tag_style_and_system_prompt():
    cfg = PromptConfig(style="answer_tag", system_prompt="You are careful.")
    messages = render_messages("Q?", CHOICES, 1, 0, None, config=cfg)
    assert messages[0] == {"role": "system", "content": "You are careful."}
    assert messages[1]["role"] == "user"
    text = messages[1]["content"]
    assert text.endswith(prompts.QA_INSTRUCTIONS["answer_tag"]) and "<answer>B</answer>" in text
    assert "[B]" not in text
    caption = render_user_text("", (), 1, 1, None, "caption", cfg)
    assert "<answer>" in caption and "Options" not in caption


def test_custom_templates():
    cfg = PromptConfig(qa_template="{question} ({streams})\n{options}", instruction="")
    text = render_user_text("Q?", CHOICES, 1, 1, "sub", config=cfg)
    # {media} is put in front when the template leaves it out; an empty instruction is dropped
    assert text == (
        'Video: <video>\n\nAudio: <audio>\n\nSubtitles: "sub"\n\n'
        "Q? (the video, the audio track and the subtitles)\nA. red\nB. blue\nC. green"
    )
    cfg = PromptConfig(qa_template="{options}\n\n{media}\n\n{{literal}} {question}")
    text = render_user_text("Q?", CHOICES, 0, 1, None, config=cfg)
    assert text.startswith("A. red") and "Audio: <audio>\n\n{literal} Q?" in text
    assert text.endswith(prompts.ANSWER_INSTRUCTION)  # the style's instruction is appended
    assert render_user_text("Q?", CHOICES, 0, 0, None, instruction="Just the letter.").endswith("Just the letter.")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"style": "json"}, r"prompt.style='json': expected one of \('bracket', 'answer_tag'\)"),
        ({"qa_template": "{question} {options} {foo}"}, r"unknown field \{foo\}"),
        ({"qa_template": "{question} {options} {}"}, r"unknown field \{\}"),
        ({"qa_template": "{question} {options} {question.upper}"}, r"unknown field \{question.upper\}"),
        ({"caption_template": "Describe {clip}"}, r"caption_template uses the unknown field \{clip\}"),
        ({"qa_template": "{question} and no options"}, r"lacks \{options\}"),
        ({"qa_template": "{question {options}"}, "not a valid format string"),
        ({"system_prompt": 3}, "prompt.system_prompt=3: expected a string or null"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PromptConfig(**kwargs)


def test_task_errors():
    with pytest.raises(ValueError, match="unknown prompt task 'summary'"):
        render_user_text("Q?", CHOICES, task="summary")
    with pytest.raises(ValueError, match="needs options"):
        render_user_text("Q?", [])


def test_from_config(tmp_path):
    from omegaconf import OmegaConf

    assert PromptConfig.from_config(None) == PromptConfig()
    cfg = PromptConfig(style="answer_tag", qa_template="described")
    assert PromptConfig.from_config(cfg) is cfg
    assert PromptConfig.from_config({"style": "answer_tag", "qa_template": "described"}) == cfg
    assert (
        PromptConfig.from_config(OmegaConf.create({"prompt": {"style": "answer_tag", "qa_template": "described"}}))
        == cfg
    )
    path = tmp_path / "prompt.yaml"
    path.write_text("style: answer_tag\nqa_template: described\nsystem_prompt: Be brief.\n")
    loaded = PromptConfig.from_config(path)
    assert loaded.style == "answer_tag" and loaded.system_prompt == "Be brief."
    assert PromptConfig.from_config(str(path)) == loaded
    with pytest.raises(ValueError, match=r"unknown option\(s\) prompt.\['stlye'\]"):
        PromptConfig.from_config({"stlye": "bracket"})
    (tmp_path / "typo.yaml").write_text("stlye: bracket\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) prompt \(file '.*typo.yaml'\).\['stlye'\]"):
        PromptConfig.from_config(tmp_path / "typo.yaml")
    (tmp_path / "broken.yaml").write_text("style: [bracket\n")
    with pytest.raises(ValueError, match=r"prompt config file '.*broken.yaml' is not valid YAML"):
        PromptConfig.from_config(tmp_path / "broken.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        PromptConfig.from_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        PromptConfig.from_config(tmp_path / "list.yaml")


def test_instructions_hold_no_stray_letters():
    """The closing sentences name only the example letter B, so they never read as a different answer."""
    for text in [*prompts.QA_INSTRUCTIONS.values(), *prompts.CAPTION_INSTRUCTIONS.values()]:
        assert set(re.findall(r"(?<![A-Za-z])[A-F](?![A-Za-z])", text)) <= {"B"}
