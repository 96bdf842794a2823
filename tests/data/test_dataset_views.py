"""``OmniRLDataset`` under ``data.modality``: what the rollout's prompt ids hold for each policy and ablation form,
and twin batches (same responses, streams dropped) on each family's tiny thinker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_modality.data import schema
from verl_modality.data.dataset import OmniRLDataset
from verl_modality.models.omni import load_omni_processor, placeholder_token_ids
from verl_modality.models.omni_inputs import build_actor_batch, encode_prompt
from verl_modality.models.twin_inputs import build_twin_batch, encode_row, twin_row


@pytest.fixture(scope="module")
def processor(family_model_dir):
    return load_omni_processor(str(family_model_dir[1]))


@pytest.fixture(scope="module")
def token_ids(processor):
    ids = placeholder_token_ids(processor.tokenizer)
    return ids["audio"], ids["video"]


def _dataset(demo_data, processor, **modality):
    out, _ = demo_data
    cfg = {"max_prompt_length": 4096, "filter_overlong_prompts": False, "cache_dir": str(out / "cache")}
    if modality:
        cfg["modality"] = modality
    return OmniRLDataset(
        data_files=[str(out / "train.parquet")],
        tokenizer=processor.tokenizer,
        processor=processor,
        config=OmegaConf.create(cfg),
    )


def _rollout_prompt(ds, index):
    """What verl's agent loop does with a dataset item: decode the media of ``raw_prompt``, render, process."""
    item = ds[index]
    messages = item["raw_prompt"]
    _, videos, audios = type(ds)._process_multi_modal_info(messages, None, ds.config)
    return item, encode_prompt(ds.processor, messages, videos=videos, audios=audios), videos, audios


def _index_of(ds, tag):
    return next(i for i in range(len(ds)) if ds.dataframe[i][schema.MODALITY_TAG] == tag)


def test_exact_shows_only_the_required_streams(demo_data, processor, token_ids):
    audio_id, video_id = token_ids
    exact, full = _dataset(demo_data, processor, policy="exact"), _dataset(demo_data, processor, policy="full")
    for tag in ("V", "A", "S", "VA", "VAS"):
        i = _index_of(exact, tag)
        item, enc, _, _ = _rollout_prompt(exact, i)
        ids = enc.input_ids.tolist()
        assert (audio_id in ids) == ("A" in tag), tag
        assert (video_id in ids) == ("V" in tag), tag
        assert (item[schema.AVAILABLE], item[schema.STRATUM]) == (tag, "exact")
        _, enc_full, _, _ = _rollout_prompt(full, i)
        assert audio_id in enc_full.input_ids.tolist() and video_id in enc_full.input_ids.tolist()
        assert len(ids) <= len(enc_full.input_ids)


def test_blank_keeps_ids_and_positions_and_silences_the_audio(demo_data, processor, token_ids):
    from verl_modality.models.omni import compute_position_ids

    full, blank = (
        _dataset(demo_data, processor, policy="full"),
        _dataset(demo_data, processor, policy="VS", ablation="blank"),
    )
    i = _index_of(full, "VA")
    _, enc_full, _, audios_full = _rollout_prompt(full, i)
    item, enc_blank, videos, audios_blank = _rollout_prompt(blank, i)
    assert torch.equal(enc_full.input_ids, enc_blank.input_ids)
    ones = torch.ones_like(enc_full.input_ids)
    assert torch.equal(
        compute_position_ids(processor, enc_full.input_ids, ones, enc_full.multi_modal_inputs),
        compute_position_ids(processor, enc_blank.input_ids, ones, enc_blank.multi_modal_inputs),
    )
    assert len(audios_blank) == 1 and audios_blank[0].shape == audios_full[0].shape
    assert not np.any(audios_blank[0]) and np.any(audios_full[0])
    # the features are those of silence, and the video is untouched
    silence = encode_prompt(processor, item["raw_prompt"], videos=videos, audios=[np.zeros_like(audios_full[0])])
    mm_b, mm_f = enc_blank.multi_modal_inputs, enc_full.multi_modal_inputs
    assert torch.equal(mm_b["input_features"], silence.multi_modal_inputs["input_features"])
    assert not torch.equal(mm_b["input_features"], mm_f["input_features"])
    assert torch.equal(mm_b["pixel_values_videos"], mm_f["pixel_values_videos"])
    assert (item[schema.AVAILABLE], item[schema.STRATUM]) == ("VS", "deficit")


def test_infeasible_policy_fails_at_load_naming_the_row(demo_data, processor, tmp_path):
    out, _ = demo_data
    rows = schema.read_rows(out / "train.parquet")[:3]
    video_only = schema.Sample.from_row(rows[0])
    bad = schema.Sample.create(
        id="needs-audio",
        question=video_only.question,
        choices=video_only.choices,
        answer=video_only.answer,
        modality_tag="VA",
        videos=[str(out / p) for p in video_only.all_videos],
        available="V",
    )
    path = schema.write_rows([*rows, bad.to_row()], tmp_path / "mixed.parquet")
    cfg = OmegaConf.create({"filter_overlong_prompts": False, "media_root": str(out), "modality": {"policy": "exact"}})
    with pytest.raises(ValueError, match=r"cannot be applied to 1 row\(s\):\n  .*row 3 \(id needs-audio\)"):
        OmniRLDataset(data_files=[str(path)], tokenizer=processor.tokenizer, processor=processor, config=cfg)


def test_twin_batch_drops_or_silences_the_audio_of_the_same_responses(demo_data, processor, token_ids):
    audio_id, _ = token_ids
    full = _dataset(demo_data, processor, policy="full")
    idx = [_index_of(full, tag) for tag in ("A", "VA", "VAS")]
    rows = [full[i] for i in idx]
    for row in rows:  # dataset items have their media columns popped; twins rebuild them from the record
        assert schema.VIDEOS not in row
    responses = [[11, 12, 13], [14, 15], [16]]
    original = build_actor_batch(
        processor, [_rollout_prompt(full, i)[1] for i in idx], responses, processor.tokenizer.pad_token_id
    )

    removed = build_twin_batch(processor, rows, responses, drop="A", data_config=full.config)
    assert not (removed["input_ids"] == audio_id).any()
    assert torch.equal(removed["responses"], original["responses"])
    assert removed["input_ids"].shape[1] < original["input_ids"].shape[1]
    # identical to rendering each record without audio from scratch
    for k, row in enumerate(rows):
        direct = encode_row(twin_row(row, "A"), processor, full.config)
        n = direct.input_ids.numel()
        assert torch.equal(removed["prompts"][k, -n:], direct.input_ids)

    blanked = build_twin_batch(processor, rows, responses, drop="A", ablation="blank", data_config=full.config)
    for key in ("input_ids", "attention_mask", "position_ids", "responses", "response_mask"):
        assert torch.equal(blanked[key], original[key]), key
    for k in range(len(rows)):
        assert not torch.equal(
            blanked["multi_modal_inputs"][k]["input_features"], original["multi_modal_inputs"][k]["input_features"]
        )

    with pytest.raises(ValueError, match="shows 'A'; cannot drop 'V'"):
        twin_row(_dataset(demo_data, processor, policy="exact")[idx[0]], "V")


def test_decoding_errors_name_the_sample(demo_data, processor, tmp_path):
    from verl_modality.data.media import MediaError

    ds = _dataset(demo_data, processor, policy="full")
    item = ds[0]
    audio = next(c for m in item["raw_prompt"] for c in m["content"] if c["type"] == "audio")
    assert audio["sample_id"] == item[schema.ID]
    audio["audio"] = str(tmp_path / "gone.wav")
    with pytest.raises(MediaError, match=rf"sample {item[schema.ID]}: .*gone.wav"):
        type(ds)._process_multi_modal_info(item["raw_prompt"], None, ds.config)


def test_the_prepared_prompt_wording_survives_a_view_that_re_renders(demo_data, processor, tmp_path, caplog):
    """augment-qa --prompt-config wrote the file; data.modality.prompt (the same YAML) words what exact re-renders."""
    import logging

    from verl_modality.data.augmentation import AugmentConfig, augment_file
    from verl_modality.data.dataset import resolve_media_paths
    from verl_modality.data.prompts import PromptConfig, render_messages

    out, _ = demo_data
    prompt_file = tmp_path / "prompt.yaml"
    prompt_file.write_text("style: answer_tag\nqa_template: described\n")
    rows = [resolve_media_paths(r, out) for r in schema.read_rows(out / "train.parquet")[:4]]
    source = schema.write_rows(rows, tmp_path / "source.parquet")
    path = tmp_path / "plus.parquet"
    augment_file(source, path, AugmentConfig(prompt=PromptConfig.from_config(prompt_file)))

    def load(**modality):
        cfg = {"filter_overlong_prompts": False, "validate_media": False, "modality": {"policy": "exact", **modality}}
        return OmniRLDataset(
            data_files=[str(path)], tokenizer=processor.tokenizer, processor=processor, config=OmegaConf.create(cfg)
        )

    ds = load(prompt=str(prompt_file))
    i = next(i for i in range(len(ds)) if ds.dataframe[i][schema.STRATUM] == "superset")
    row, item = ds.dataframe[i], ds[i]
    assert item[schema.AVAILABLE] == row[schema.MODALITY_TAG] != row[schema.AVAILABLE]  # re-rendered under exact
    n_v, n_a = ("V" in row[schema.MODALITY_TAG]), ("A" in row[schema.MODALITY_TAG])
    subtitle = row[schema.SUBTITLE] if "S" in row[schema.MODALITY_TAG] else None
    expected = render_messages(
        row[schema.QUESTION],
        row[schema.CHOICES],
        int(n_v),
        int(n_a),
        subtitle,
        "qa",
        PromptConfig.from_config(prompt_file),
    )
    (message,) = item["raw_prompt"]  # verl's structured message: text segments around the media items
    text = "".join(part.get("text", "") for part in message["content"])
    assert "<answer>B</answer>" in text and "Sources available to you: " in text
    assert text == expected[0]["content"].replace("<video>", "").replace("<audio>", "")
    # without the option the file's wording is not reproduced: said when the file is read
    with caplog.at_level(logging.WARNING, logger="verl_modality.data.dataset"):
        load()
    assert f"{len(schema.read_rows(path))} row(s) have a stored prompt that data.modality.prompt" in caplog.text
