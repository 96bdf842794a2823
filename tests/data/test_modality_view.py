"""The per-sample modality view (docs/method.md §1): policies, ablation forms, and the row transform."""

from __future__ import annotations

import copy
import itertools

import pytest
from omegaconf import OmegaConf

from verl_modality import protocol, vocabulary
from verl_modality.data import prompts, schema
from verl_modality.data.modality_view import (
    ModalityView,
    apply_view,
    choose_streams,
    parse_policy,
    plan_views,
)
from verl_modality.vocabulary import TAGS


@pytest.fixture(scope="module")
def rows(demo_data):
    out, _ = demo_data
    return schema.read_rows(out / "train.parquet")


def _by_tag(rows, tag):
    return next(r for r in rows if r[schema.MODALITY_TAG] == tag)


def test_parse_policy_normalises_and_rejects():
    assert parse_policy("exact") == "exact"
    assert parse_policy("av") == "VA"
    assert parse_policy("SAV") == "VAS"
    assert parse_policy("none") == ""
    with pytest.raises(ValueError, match="unknown modality policy 'everything'"):
        parse_policy("everything")
    with pytest.raises(ValueError, match="ablation='mute'"):
        ModalityView(policy="exact", ablation="mute")


@pytest.mark.parametrize("tag", TAGS)
def test_exact_full_and_explicit_sets(tag):
    assert choose_streams(tag, "VAS", tag, "exact") == (tag, True)
    assert choose_streams(tag, "VAS", tag, "full") == ("VAS", True)
    assert choose_streams(tag, "VAS", "VA", "as_stored") == ("VA", True)
    assert choose_streams(tag, "VS", tag if set(tag) <= {"V", "S"} else "V", "VA")[0] == "V"  # A not in the record


@pytest.mark.parametrize("tag", TAGS)
def test_superset_and_deficit_respect_the_stratum_definition(tag):
    seen_super, seen_deficit = set(), set()
    for i in range(60):
        shown, honoured = choose_streams(tag, "VAS", tag, "superset", seed=1, sample_id=f"s{i}")
        if tag == "VAS":
            assert (shown, honoured) == ("VAS", False)  # nothing to add: shown exactly, reported as a fallback
        else:
            assert honoured and vocabulary.stratum_of(tag, shown) == "superset"
        seen_super.add(shown)
        shown, honoured = choose_streams(tag, "VAS", tag, "deficit", seed=1, sample_id=f"s{i}")
        assert honoured and vocabulary.stratum_of(tag, shown) == "deficit"
        seen_deficit.add(shown)
    # every admissible set is reachable: supersets of the tag / sets missing a required stream
    subsets = {"".join(c) for k in range(4) for c in itertools.combinations("VAS", k)}
    assert seen_super == ({s for s in subsets if set(s) > set(tag)} or {"VAS"})
    assert seen_deficit == {s for s in subsets if not set(tag) <= set(s)}


def test_choice_is_seeded_per_sample_id():
    a = [choose_streams("V", "VAS", "V", "superset", seed=3, sample_id=f"x{i}") for i in range(20)]
    b = [choose_streams("V", "VAS", "V", "superset", seed=3, sample_id=f"x{i}") for i in range(20)]
    c = [choose_streams("V", "VAS", "V", "superset", seed=4, sample_id=f"x{i}") for i in range(20)]
    assert a == b and a != c


def test_exact_without_the_required_media_names_the_sample():
    with pytest.raises(ValueError, match="sample 'q7'.*tag 'VA'.*only has 'V'"):
        choose_streams("VA", "V", "V", "exact", sample_id="q7")


def test_remove_drops_placeholders_items_and_subtitle(rows):
    row = _by_tag(rows, "V")
    snapshot = copy.deepcopy(row)
    full = apply_view(row, ModalityView(policy="full"))
    assert row == snapshot  # pure
    assert schema.count_placeholders(full[schema.PROMPT])["<audio>"] == 1
    assert row[schema.SUBTITLE] in full[schema.PROMPT][0]["content"]
    assert (full[schema.AVAILABLE], full[schema.STRATUM]) == ("VAS", "superset")

    only_a = apply_view(row, ModalityView(policy="A"))
    counts = schema.count_placeholders(only_a[schema.PROMPT])
    assert (counts["<video>"], counts["<audio>"]) == (0, 1)
    assert only_a[schema.VIDEOS] == [] and len(only_a[schema.AUDIOS]) == 1
    assert row[schema.SUBTITLE] not in only_a[schema.PROMPT][0]["content"]
    assert (only_a[schema.AVAILABLE], only_a[schema.STRATUM]) == ("A", "deficit")
    # the stored exact view is left as it is
    assert apply_view(row, ModalityView(policy="exact")) == row


def test_blank_keeps_every_slot_and_marks_the_hidden_items(rows):
    row = _by_tag(rows, "VS")
    full = apply_view(row, ModalityView(policy="full"))
    blank = apply_view(row, ModalityView(policy="exact", ablation="blank"))
    assert schema.count_placeholders(blank[schema.PROMPT]) == schema.count_placeholders(full[schema.PROMPT])
    assert [bool(item.get(protocol.MEDIA_BLANK)) for item in blank[schema.VIDEOS]] == [False]
    assert [bool(item.get(protocol.MEDIA_BLANK)) for item in blank[schema.AUDIOS]] == [True]
    assert blank[schema.SUBTITLE] in blank[schema.PROMPT][0]["content"]  # S is shown
    assert (blank[schema.AVAILABLE], blank[schema.STRATUM]) == ("VS", "exact")

    hidden_s = apply_view(row, ModalityView(policy="VA", ablation="blank"))
    text = hidden_s[schema.PROMPT][0]["content"]
    assert row[schema.SUBTITLE] not in text and 'Subtitles: ""' in text and "\x00" not in text
    assert not any(item.get(protocol.MEDIA_BLANK) for item in hidden_s[schema.AUDIOS] + hidden_s[schema.VIDEOS])


def test_by_source_overrides_the_default(rows):
    row = _by_tag(rows, "A")
    view = ModalityView(policy="exact", by_source={row[schema.DATA_SOURCE]: "full"})
    assert apply_view(row, view)[schema.AVAILABLE] == "VAS"
    assert apply_view(row, ModalityView(policy="exact", by_source={"other": "full"}))[schema.AVAILABLE] == "A"


def test_from_config_reads_the_data_section():
    cfg = OmegaConf.create({"modality": {"policy": "full", "ablation": "blank", "seed": 5, "by_source": {"x": "A"}}})
    view = ModalityView.from_config(cfg)
    assert view == ModalityView(policy="full", ablation="blank", seed=5, by_source={"x": "A"})
    assert ModalityView.from_config(OmegaConf.create({"max_prompt_length": 8})).is_identity
    with pytest.raises(ValueError, match=r"unknown option\(s\) data.modality.\['polcy'\]"):
        ModalityView.from_config(OmegaConf.create({"modality": {"polcy": "exact"}}))
    # every message names the option, before any conversion
    with pytest.raises(ValueError, match=r"data.modality.seed='abc': expected an integer"):
        ModalityView.from_config({"policy": "exact", "seed": "abc"})
    with pytest.raises(ValueError, match=r"data.modality.by_source.mmau: unknown modality policy 'all'"):
        ModalityView.from_config({"policy": "exact", "by_source": {"mmau": "all"}})
    with pytest.raises(ValueError, match=r"data.modality.policy: unknown modality policy 'x'"):
        ModalityView.from_config({"policy": "x"})
    with pytest.raises(ValueError, match=r"data.modality must be a mapping of options"):
        ModalityView.from_config({"modality": "exact"})


def test_plan_views_counts_fallbacks_and_lists_infeasible_rows(rows):
    plan = plan_views(rows, ModalityView(policy="superset"))
    n_vas = sum(r[schema.MODALITY_TAG] == "VAS" for r in rows)
    assert len(plan.fallbacks) == n_vas and not plan.errors
    assert sum(plan.shown.values()) == len(rows)

    bad = dict(rows[0], **{schema.MODALITY_TAG: "VA", schema.MEDIA_STREAMS: "V", schema.AVAILABLE: "V"})
    plan = plan_views([rows[1], bad], ModalityView(policy="exact"), source="f.parquet: ")
    assert len(plan.errors) == 1 and plan.errors[0].startswith(f"f.parquet: row 1 (id {bad[schema.ID]}): ")
    assert "needs media for its tag 'VA'" in plan.errors[0]


# ------------------------------------------------------------------------------------ prompts the view re-renders

PROMPT = {"style": "answer_tag", "qa_template": "described", "system_prompt": "Be brief."}


def _prepared(rows, tag, available, prompt):
    """``tag``'s first row as augment-qa writes its ``available`` variant with ``--prompt-config``."""
    from verl_modality.data.augmentation import AugmentConfig, augment_sample
    from verl_modality.data.prompts import PromptConfig

    config = AugmentConfig(prompt=PromptConfig.from_config(prompt) if prompt is not None else None)
    variants = augment_sample(schema.Sample.from_row(_by_tag(rows, tag)), config)
    return next(v for v in variants if v.available == available).to_row()


def test_a_prompt_re_rendered_under_exact_uses_the_configured_template(rows):
    row = _prepared(rows, "A", "VA", PROMPT)  # a superset row, prepared with the config
    assert "Sources available to you: the video and the audio track." in row[schema.PROMPT][1]["content"]
    out = apply_view(row, ModalityView(policy="exact", prompt=PROMPT))
    options = "\n".join(f"{'ABCDEFGH'[i]}. {c}" for i, c in enumerate(row[schema.CHOICES]))
    user = (
        "Audio: <audio>\n\nSources available to you: the audio track. Answer from what these sources show.\n\n"
        f"Question: {row[schema.QUESTION]}\nOptions:\n{options}\n\nReason briefly if you need to, then finish your "
        "reply with the letter of the chosen option between answer tags, for example <answer>B</answer>."
    )
    assert out[schema.PROMPT] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}]
    assert (out[schema.AVAILABLE], out[schema.STRATUM]) == ("A", "exact")
    # the same wording as augment-qa gives the exact variant (same streams; options may differ by a none-answer)
    exact = _prepared(rows, "A", "A", PROMPT)
    assert (
        out[schema.PROMPT][1]["content"].split("Question:")[0]
        == exact[schema.PROMPT][1]["content"].split("Question:")[0]
    )
    # blanked streams keep their slots, worded by the config too
    blank = apply_view(row, ModalityView(policy="exact", ablation="blank", prompt=PROMPT))
    assert blank[schema.PROMPT][0] == {"role": "system", "content": "Be brief."}
    assert blank[schema.PROMPT][1]["content"].startswith(
        'Video: <video>\n\nAudio: <audio>\n\nSubtitles: ""\n\nSources available to you: the video, the audio track '
        "and the subtitles."
    )


def test_without_a_prompt_option_the_schemas_prompt_is_unchanged(rows):
    row = _prepared(rows, "A", "VA", None)
    out = apply_view(row, ModalityView(policy="exact"))
    expected = prompts.build_prompt(row[schema.QUESTION], list(row[schema.CHOICES]), 0, 1, None)
    assert out[schema.PROMPT] == expected
    assert out[schema.PROMPT][0]["content"].startswith("Audio: <audio>\n\nQuestion: ")
    assert apply_view(row, ModalityView(policy="exact", prompt={})) == out  # every default: the same text
    caption = dict(row, **{schema.TASK: "caption"})  # captions keep their stored instruction, config or not
    assert apply_view(caption, ModalityView(policy="exact", prompt=PROMPT))[
        schema.PROMPT
    ] == prompts.build_caption_prompt(row[schema.QUESTION], 0, 1, None)


def test_the_prompt_option_is_read_by_the_option_loader(tmp_path):
    path = tmp_path / "prompt.yaml"
    path.write_text("prompt:\n  style: answer_tag\n  qa_template: described\n")
    view = ModalityView.from_config(OmegaConf.create({"modality": {"policy": "exact", "prompt": str(path)}}))
    assert (view.prompt.style, view.prompt.qa_template) == ("answer_tag", "described")
    assert ModalityView.from_config(OmegaConf.create({"modality": {"policy": "exact", "prompt": PROMPT}})).prompt == (
        ModalityView(prompt=PROMPT).prompt
    )
    assert ModalityView.from_config({"policy": "exact"}).prompt is None
    with pytest.raises(ValueError, match=r"data.modality.prompt: prompt.style='x': expected one of"):
        ModalityView.from_config({"policy": "exact", "prompt": {"style": "x"}})
    with pytest.raises(ValueError, match=r"data.modality.prompt: prompt config file '.*nope.yaml' does not exist"):
        ModalityView.from_config({"policy": "exact", "prompt": str(tmp_path / "nope.yaml")})
    with pytest.raises(ValueError, match=r"data.modality.prompt.caption_template='brief': caption rows keep"):
        ModalityView(policy="exact", prompt={"caption_template": "brief"})


def test_rows_prepared_with_another_wording_are_found(rows):
    from verl_modality.data.modality_view import prompt_mismatches

    prepared = [_prepared(rows, "A", "VA", PROMPT), _prepared(rows, "V", "V", None)]
    assert prompt_mismatches(prepared, ModalityView(policy="exact"), "f: ") == [f"f: row 0 (id {prepared[0]['id']})"]
    assert prompt_mismatches(prepared, ModalityView(policy="exact", prompt=PROMPT)) == [
        f"row 1 (id {prepared[1]['id']})"
    ]
    assert prompt_mismatches(rows, ModalityView(policy="exact")) == []  # the demo data: the schema's prompt
