"""The model-family adapters, on each family's tiny checkpoint: registry, processor, config, placeholders, position
ids, FSDP wrap classes, weight names against the checkpoint's own keys, MAPO-AT's q/k capture."""

import json
import types

import numpy as np
import pytest
import torch
from safetensors import safe_open

from verl_modality.models import omni
from verl_modality.models.family import (
    UnknownFamilyError,
    families,
    family_named,
    family_of,
    family_of_tokenizer,
    require_family,
)

MESSAGES = [
    {
        "role": "user",
        "content": [
            {"type": "audio", "audio": None},
            {"type": "video", "video": None},
            {"type": "text", "text": "What colour?"},
        ],
    }
]


def _media():
    audio = np.sin(np.linspace(0, 2000, 32000)).astype(np.float32)
    video = np.random.RandomState(0).randint(0, 255, (4, 64, 64, 3)).astype(np.uint8)
    return audio, video


def _checkpoint_keys(model_dir):
    index = model_dir / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    keys = set()
    for name in files:
        with safe_open(str(model_dir / name), "pt") as f:
            keys |= set(f.keys())
    return keys


def test_registry_knows_both_families_and_names_them_in_errors():
    assert [f.name for f in families()] == ["qwen2_5_omni", "qwen3_omni"]
    assert family_named("qwen3_omni").moe and not family_named("qwen2_5_omni").moe
    with pytest.raises(UnknownFamilyError, match="unknown model family 'llama'.*qwen2_5_omni.*qwen3_omni"):
        family_named("llama")
    plain = types.SimpleNamespace(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    assert family_of(plain) is None
    with pytest.raises(UnknownFamilyError, match=r"ckpt/: architecture Qwen2ForCausalLM \(model_type 'qwen2'\).*Qwen3"):
        require_family(plain, "ckpt/")


def test_an_unknown_checkpoint_is_refused_with_its_architecture(tmp_path):
    from transformers import Qwen2Config

    config = Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    config.architectures = ["Qwen2ForCausalLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(UnknownFamilyError, match="Qwen2ForCausalLM.*known: qwen2_5_omni"):
        omni.load_thinker(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        omni.load_thinker(tmp_path / "missing")


def test_config_thinker_and_processor_of_each_family(family_model_dir):
    name, model_dir = family_model_dir
    family = family_named(name)
    config = omni.load_config(model_dir)
    assert family_of(config) is family and config.model_type == family.full_model_type
    assert config.architectures[0] == family.full_architectures[0]  # the name vLLM registers
    thinker = omni.to_thinker_config(config)
    assert thinker.model_type == family.thinker_model_type
    assert thinker.architectures == [family.thinker_class_name]
    processor = omni.load_omni_processor(str(model_dir))
    assert type(processor).__name__ == family.processor_class_name
    assert family_of_tokenizer(processor.tokenizer) is family
    tok = processor.tokenizer
    for kind, token in family.placeholder_tokens.items():
        assert getattr(processor, f"{kind}_token_id") == tok.convert_tokens_to_ids(token)
    assert getattr(thinker, "audio_token_id", None) or getattr(thinker, "audio_token_index", None) == (
        processor.audio_token_id
    )
    banned = set(omni.never_sample_token_ids(processor))
    assert banned == {tok.convert_tokens_to_ids(t) for t in family.never_sample_tokens}
    # a sampled run start would make multimodal RoPE read past the response's end (its next token is the stream's)
    starts = {getattr(thinker, name, None) for name in ("vision_start_token_id", "audio_start_token_id")}
    assert starts - {None} <= banned, (starts, banned)


def test_verl_hf_model_config_describes_the_thinker(family_model_dir):
    from verl.utils import hf_processor
    from verl.utils.model import get_hf_auto_model_class
    from verl.workers.config import HFModelConfig

    name, model_dir = family_model_dir
    family = family_named(name)
    processor = hf_processor(str(model_dir))
    assert type(processor).__name__ == family.processor_class_name and callable(processor.get_rope_index)
    cfg = HFModelConfig(path=str(model_dir), override_config={"attn_implementation": "sdpa"})
    assert cfg.hf_config.model_type == family.thinker_model_type
    assert cfg.architectures == [family.thinker_class_name]
    assert cfg.omni_full_config.model_type == family.full_model_type
    assert get_hf_auto_model_class(cfg.hf_config).__name__ == "AutoModelForImageTextToText"


def test_weight_names_are_the_checkpoint_keys(family_model_dir):
    """Thinker state dict -> full-checkpoint names (what vLLM and the checkpoint export take) equals the saved keys,
    experts split one by one for the MoE family, each tensor equal to the checkpoint's."""
    name, model_dir = family_model_dir
    family = family_named(name)
    state = omni.load_thinker(model_dir).state_dict()
    mapped = dict(family.checkpoint_weights(state.items()))
    ckpt = {k for k in _checkpoint_keys(model_dir) if k.startswith("thinker.")}
    assert set(mapped) == ckpt
    fused = [k for k in state if k.endswith("mlp.experts.gate_up_proj")]
    assert bool(fused) == family.moe
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for key in sorted(ckpt)[:: max(1, len(ckpt) // 40)] + [k for k in ckpt if ".experts.1." in k][:3]:
            torch.testing.assert_close(mapped[key], f.get_tensor(key), rtol=0, atol=0)
    again = dict(family.checkpoint_weights(mapped.items()))  # idempotent: verl may have split the experts already
    assert set(again) == ckpt


def test_verl_hf_model_config_under_lora_adapts_the_language_model_only(family_model_dir):
    """verl's default target (``all-linear``) and exclusion (None) become the language model's linear layers and the
    encoders; explicit values are the user's. A family whose vLLM model serves no adapters syncs merged weights."""
    from verl.workers.config import HFModelConfig

    from verl_modality.models.lora import ENCODERS, LANGUAGE_MODEL_LINEAR

    name, model_dir = family_model_dir
    family = family_named(name)
    plain = HFModelConfig(path=str(model_dir))
    assert (plain.target_modules, plain.exclude_modules, plain.lora.get("merge", False)) == ("all-linear", None, False)
    lora = HFModelConfig(path=str(model_dir), lora_rank=8)
    assert (lora.target_modules, lora.exclude_modules) == (LANGUAGE_MODEL_LINEAR, ENCODERS)
    assert bool(lora.lora.get("merge", False)) == (not family.vllm_serves_lora) == (name == "qwen3_omni")
    mine = HFModelConfig(path=str(model_dir), lora_rank=8, target_modules=["q_proj"], exclude_modules="lm_head")
    assert (mine.target_modules, mine.exclude_modules) == (["q_proj"], "lm_head")


def test_lora_adapter_names_reach_vllms_language_model_modules(family_model_dir):
    """Unmerged LoRA: the adapter names verl sends, renamed for vLLM, resolve (by vLLM's own parser and the model's
    checkpoint mapper) to modules of vLLM's language model; adapters on an encoder are refused before sending."""
    import importlib

    from vllm.lora.utils import parse_fine_tuned_lora_name

    from verl_modality.integrations.verl_rollout import refuse_encoder_adapters

    name, model_dir = family_model_dir
    family = family_named(name)
    module = {"qwen2_5_omni": "qwen2_5_omni_thinker", "qwen3_omni": "qwen3_omni_moe_thinker"}[name]
    vllm_model = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), family.thinker_class_name)
    sent = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(1),
        "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight": torch.zeros(1),
    }
    renamed = [k for k, _ in family.checkpoint_weights(sent.items())]
    parsed = [parse_fine_tuned_lora_name(k, vllm_model.hf_to_vllm_mapper) for k in renamed]
    assert parsed == [
        ("language_model.model.layers.0.self_attn.q_proj", True),
        ("language_model.model.layers.1.mlp.down_proj", False),
    ]
    # what verl's own names gave before: no vLLM module of that name, so vLLM applied nothing
    assert parse_fine_tuned_lora_name(f"thinker.{next(iter(sent))}", vllm_model.hf_to_vllm_mapper)[0].startswith(
        "model."
    )
    refuse_encoder_adapters(sent)
    with pytest.raises(ValueError, match="audio_tower.layers.0.self_attn.q_proj.*lora.merge=true"):
        refuse_encoder_adapters([*sent, "base_model.model.audio_tower.layers.0.self_attn.q_proj.lora_A.weight"])


def test_fsdp_layer_classes_are_the_leaf_layers(family_model_dir):
    name, model_dir = family_model_dir
    family = family_named(name)
    model = omni.load_thinker(model_dir)
    present = {type(m).__name__ for m in model.modules()}
    assert set(family.fsdp_layer_classes) <= present
    towers = {type(model.audio_tower).__name__, type(model.visual).__name__}
    assert not towers & set(family.fsdp_layer_classes)
    layers = [m for m in model.modules() if type(m).__name__ in family.fsdp_layer_classes]
    assert len(layers) == (
        model.config.audio_config.encoder_layers + model.config.vision_config.depth + len(model.model.layers)
    )


def test_position_ids_are_the_models_own(family_model_dir):
    """The (4, L) ids built for verl's batches: text row 0..L-1, t/h/w rows equal to the thinker's get_rope_index,
    and a forward with them equals the forward where the model computes them itself."""
    from verl_modality.models.omni_inputs import encode_prompt

    _, model_dir = family_model_dir
    processor = omni.load_omni_processor(str(model_dir))
    model = omni.load_thinker(model_dir).eval()
    audio, video = _media()
    enc = encode_prompt(processor, MESSAGES, videos=[video], audios=[audio])
    ids, mask = enc.input_ids[None], torch.ones_like(enc.input_ids)[None]
    mm = enc.multi_modal_inputs
    pos = omni.compute_position_ids(processor, enc.input_ids, mask[0], mm)
    assert pos.shape == (4, ids.shape[1]) and pos[0].tolist() == list(range(ids.shape[1]))
    kw = {"audio_seqlens": mm["feature_attention_mask"].sum(-1), "second_per_grids": mm.get("video_second_per_grid")}
    own, _ = model.get_rope_index(ids, video_grid_thw=mm["video_grid_thw"], attention_mask=mask, **kw)
    assert torch.equal(pos[1:], own[:, 0].long())
    with torch.no_grad():
        given = model(input_ids=ids, attention_mask=mask, position_ids=pos[:, None], **mm).logits
        itself = model(input_ids=ids, attention_mask=mask, **mm).logits
    torch.testing.assert_close(given, itself)


def test_collapsed_prompt_reprocesses_to_the_same_inputs(family_model_dir):
    """Rollout keeps expanded ids; decoding the collapsed ids and re-running the processor gives them back."""
    from verl_modality.models.omni_inputs import encode_prompt

    _, model_dir = family_model_dir
    processor = omni.load_omni_processor(str(model_dir))
    audio, video = _media()
    first = encode_prompt(processor, MESSAGES, videos=[video], audios=[audio])
    placeholders = omni.placeholder_token_ids(processor.tokenizer)
    ids = omni.collapse_placeholders(first.input_ids.tolist(), placeholders.values())
    assert ids.count(placeholders["audio"]) == 1 and ids.count(placeholders["video"]) == 1
    text = processor.tokenizer.decode(ids, skip_special_tokens=False)
    again = processor(text=[text], audio=[audio], videos=[video], return_tensors="pt")
    assert again["input_ids"][0].tolist() == first.input_ids.tolist()
    torch.testing.assert_close(again["input_features"], first.multi_modal_inputs["input_features"])


def test_captured_queries_and_keys_are_the_attention_inputs(family_model_dir):
    """The family's q/k recomputation reproduces the attention module's own output: softmax(q k^T) v through o_proj
    equals what the module returned in the same forward."""
    from verl_modality.models.attention_capture import decoder_layers, query_key_states
    from verl_modality.models.omni_inputs import encode_prompt

    _, model_dir = family_model_dir
    processor = omni.load_omni_processor(str(model_dir))
    model = omni.load_thinker(model_dir, attn_implementation="eager").eval()
    audio, video = _media()
    enc = encode_prompt(processor, MESSAGES, videos=[video], audios=[audio])
    attn = decoder_layers(model)[-1].self_attn
    seen = {}

    def hook(module, args, kwargs, output):
        seen["qk"] = query_key_states(module, kwargs["hidden_states"], kwargs["position_embeddings"])
        seen["v"] = module.v_proj(kwargs["hidden_states"])
        seen["out"] = output[0]

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=enc.input_ids[None], **enc.multi_modal_inputs)
    finally:
        handle.remove()
    q, k = seen["qk"]
    b, length = q.shape[0], q.shape[2]
    v = seen["v"].view(b, length, -1, attn.head_dim).transpose(1, 2)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)) * attn.scaling
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, -1)
    torch.testing.assert_close(attn.o_proj(out), seen["out"], rtol=1e-4, atol=1e-5)


def test_vllm_server_patch_only_touches_omni(family_model_dir):
    from verl.utils import hf_processor

    from verl_modality.integrations.verl_rollout import patch_vllm_server

    name, model_dir = family_model_dir
    calls = []
    fake = types.SimpleNamespace(
        qwen2_5_vl_dedup_image_tokens=lambda ids, p: calls.append("orig") or ids,
        get_vision_placeholder_token_ids=lambda p: ["orig"],
    )
    patch_vllm_server(fake)
    other = types.SimpleNamespace()
    assert fake.qwen2_5_vl_dedup_image_tokens([1, 1, 2], other) == [1, 1, 2] and calls == ["orig"]
    assert fake.get_vision_placeholder_token_ids(other) == ["orig"]
    processor = hf_processor(str(model_dir))
    a = processor.audio_token_id
    assert fake.qwen2_5_vl_dedup_image_tokens([1, a, a, a, 2], processor) == [1, a, 2]
    tok = processor.tokenizer
    expected = {tok.convert_tokens_to_ids(t) for t in family_named(name).never_sample_tokens}
    assert set(fake.get_vision_placeholder_token_ids(processor)) == expected


def test_export_thinker_writes_the_hub_layout(family_model_dir, tmp_path):
    """A trained thinker state (bare names, fused experts) written back into the full checkpoint loads again equal."""
    from verl_modality.models.checkpoint import export_thinker

    _, model_dir = family_model_dir
    state = {k: v + 1.0 for k, v in omni.load_thinker(model_dir).state_dict().items()}
    out = export_thinker(model_dir, state, tmp_path / "out")
    again = omni.load_thinker(out).state_dict()
    for key, value in state.items():
        torch.testing.assert_close(again[key], value)
    assert _checkpoint_keys(out) == _checkpoint_keys(model_dir)


def test_hub_ids_go_to_the_hub_loader(family_model_dir, monkeypatch):
    """A hub id is handed to transformers as it is (no local-path check), and the family's thinker class loads it
    with the family's thinker config; offline, transformers' own error surfaces."""
    import transformers

    name, model_dir = family_model_dir
    family = family_named(name)
    hub_id = family.hub_ids[0]
    with pytest.raises(OSError) as err:
        omni.load_config(hub_id, local_files_only=True)
    assert "no such model directory" not in str(err.value)

    config = omni.load_config(model_dir)
    seen = {}
    monkeypatch.setattr(
        transformers.AutoConfig, "from_pretrained", lambda path, **kw: seen.update(config=path) or config
    )

    def fake_from_pretrained(path, **kw):
        seen.update(model=path, thinker_type=kw["config"].model_type)
        return "thinker", {"missing_keys": []}

    monkeypatch.setattr(family.thinker_class(), "from_pretrained", fake_from_pretrained)
    assert omni.load_thinker(hub_id) == "thinker"
    assert seen == {"config": hub_id, "model": hub_id, "thinker_type": family.thinker_model_type}
