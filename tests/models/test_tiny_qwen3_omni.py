"""The tiny offline Qwen3-Omni (MoE) checkpoint: hub layout, token ids against the config, determinism, forward and
backward through the experts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from verl_modality.models import omni
from verl_modality.models.tiny import make_tiny_model
from verl_modality.models.tiny.qwen3_omni import ADDED_TOKENS, CHAT_TEMPLATE


def test_layout_is_the_hub_checkpoints(tiny_qwen3_model_dir):
    config = json.loads((tiny_qwen3_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3_omni_moe"
    assert config["architectures"] == ["Qwen3OmniMoeForConditionalGeneration"]
    text = config["thinker_config"]["text_config"]
    assert text["head_dim"] >= 32  # the smallest head size vLLM's CPU attention supports
    assert text["num_experts"] > text["num_experts_per_tok"] >= 2
    vision = config["thinker_config"]["vision_config"]  # vLLM sizes its position grid from image_size
    assert (vision["image_size"] // vision["patch_size"]) ** 2 == vision["num_position_embeddings"]
    keys = load_file(tiny_qwen3_model_dir / "model.safetensors").keys()
    assert {k.split(".", 1)[0] for k in keys} == {"thinker", "talker", "code2wav"}
    experts = {k for k in keys if k.startswith("thinker.model.layers.0.mlp.experts.")}
    n = text["num_experts"]
    assert experts == {
        f"thinker.model.layers.0.mlp.experts.{e}.{p}_proj.weight" for e in range(n) for p in ("gate", "up", "down")
    }
    assert "thinker.model.layers.0.self_attn.q_norm.weight" in keys


def test_token_ids_match_the_config(tiny_qwen3_model_dir):
    processor = omni.load_omni_processor(str(tiny_qwen3_model_dir))
    tok = processor.tokenizer
    thinker = omni.load_config(tiny_qwen3_model_dir).thinker_config
    ids = {text: tok.convert_tokens_to_ids(text) for text, _ in ADDED_TOKENS}
    base = ids["<|endoftext|>"]
    assert list(ids.values()) == list(range(base, base + len(ADDED_TOKENS)))  # Qwen's order, contiguous
    assert thinker.audio_token_id == ids["<|audio_pad|>"] == base + 32  # hub: 151643 + 32 = 151675
    assert thinker.image_token_id == ids["<|image_pad|>"] and thinker.video_token_id == ids["<|video_pad|>"]
    assert thinker.audio_start_token_id == ids["<|audio_start|>"]
    assert thinker.vision_start_token_id == ids["<|vision_start|>"]
    assert tok.eos_token_id == ids["<|im_end|>"] and tok.pad_token_id == ids["<|endoftext|>"]
    assert len(tok) <= thinker.text_config.vocab_size
    assert processor.chat_template == CHAT_TEMPLATE


def test_deterministic(tiny_qwen3_model_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again", seed=0, family="qwen3_omni")
    other = make_tiny_model(tmp_path / "other", seed=1, family="qwen3_omni")
    ref, same, diff = (load_file(d / "model.safetensors") for d in (tiny_qwen3_model_dir, again, other))
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert any(not torch.equal(ref[k], diff[k]) for k in ref if ref[k].numel() > 1 and ref[k].std() > 0)


def test_gradients_reach_every_expert(tiny_qwen3_model_dir):
    model = omni.load_thinker(tiny_qwen3_model_dir).train()
    torch.manual_seed(0)
    ids = torch.randint(0, 900, (2, 64))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    experts = model.model.layers[0].mlp.experts
    per_expert = experts.gate_up_proj.grad.flatten(1).abs().sum(1)
    assert torch.isfinite(loss) and bool((per_expert > 0).all())  # 128 tokens, 2 of 4 experts each: all are hit


def test_unknown_family_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'qwen4'.*qwen2_5_omni, qwen3_omni"):
        make_tiny_model(tmp_path / "m", family="qwen4")
