"""models/lora.py against PEFT itself: merged weights equal to PEFT's own merge, the scale (rsLoRA included), the
configs it refuses, malformed adapter entries, and which thinker modules LANGUAGE_MODEL_LINEAR adapts."""

import copy
import math
import re

import peft
import pytest
import torch
from peft.tuners.lora import LoraLayer

from verl_modality.models import lora
from verl_modality.models.omni import load_thinker


def _seeded_lora_b(model, seed=0):
    """PEFT starts ``lora_B`` at zero (the adapter a no-op); random values make the merge visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    return model


def _peft_mlp(seed=0, **config):
    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))
    config = {"r": 2, "lora_alpha": 6, "target_modules": ["0", "2"], **config}
    return _seeded_lora_b(peft.get_peft_model(base, peft.LoraConfig(**config)), seed)


def _lora_modules(model):
    return sorted(lora.base_name(n) for n, m in model.named_modules() if isinstance(m, LoraLayer))


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_merge_peft_state_equals_peft_merge_and_unload(use_rslora):
    model = _peft_mlp(use_rslora=use_rslora)
    config = model.peft_config["default"].to_dict()
    merged = lora.merge_peft_state(model.state_dict(), config)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], atol=1e-6, rtol=0)
    # the adapted weights changed, the third layer (not a target) is the base's own tensor
    base = model.get_base_model()
    assert not torch.allclose(merged["0.weight"], base[0].base_layer.weight)
    assert torch.equal(merged["3.weight"], base[3].weight)


def test_merged_weights_of_a_tiny_thinker_equal_peft_merge_and_unload(tiny_model_dir):
    model = peft.get_peft_model(
        load_thinker(tiny_model_dir), peft.LoraConfig(r=4, lora_alpha=8, target_modules=lora.LANGUAGE_MODEL_LINEAR)
    )
    _seeded_lora_b(model)
    state = model.state_dict()
    adapters = {k: v for k, v in state.items() if lora.is_adapter_name(k)}
    base = {lora.base_name(k): v for k, v in state.items() if k not in adapters}
    merged = lora.merged_weights(base, adapters, model.peft_config["default"].to_dict())
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert len(merged) == 14 and set(merged) <= set(expected)
    for key, value in merged.items():
        assert value.dtype == base[key].dtype
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_lora_scaling_equals_peft_scaling(use_rslora):
    model = _peft_mlp(use_rslora=use_rslora)
    scaling = lora.lora_scaling(model.peft_config["default"].to_dict())
    assert scaling == pytest.approx(model.get_base_model()[0].scaling["default"])
    assert scaling == pytest.approx(6 / math.sqrt(2) if use_rslora else 6 / 2)


def test_lora_scaling_defaults_alpha_to_the_rank_as_verls_meta_allows():
    assert lora.lora_scaling({"r": 4}) == 1.0
    assert lora.lora_scaling({"r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM"}) == 2.0


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"rank_pattern": {"0": 4}}, "rank_pattern"),
        ({"alpha_pattern": {"0": 4}}, "alpha_pattern"),
        ({"use_dora": True}, "use_dora"),
        ({"r": 0}, "r=0"),
        ({"r": None}, "r=None"),
    ],
)
def test_lora_scaling_refuses_what_one_scale_cannot_merge(config, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        lora.lora_scaling({"r": 2, "lora_alpha": 4, **config})


def test_lora_scaling_refuses_a_peft_config_with_a_rank_pattern():
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"], rank_pattern={"0": 8}).to_dict()
    with pytest.raises(ValueError, match="rank_pattern"):
        lora.lora_scaling(config)


def test_adapter_pairs_groups_names_with_and_without_adapter_name_and_prefix():
    a, b = torch.zeros(2, 6), torch.zeros(5, 2)
    pairs = lora.adapter_pairs(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": a,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": b,
            "model.layers.1.mlp.up_proj.lora_A.weight": a,
            "model.layers.1.mlp.up_proj.lora_B.weight": b,
        }
    )
    assert set(pairs) == {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"}
    assert all(pair[0] is a and pair[1] is b for pair in pairs.values())


def test_adapter_pairs_refuses_a_module_with_only_lora_a():
    with pytest.raises(ValueError, match=r"without both lora_A and lora_B: \['model.layers.0.self_attn.q_proj'\]"):
        lora.adapter_pairs(
            {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(2, 6)}
        )


@pytest.mark.parametrize(
    "name",
    [
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
        "model.layers.0.self_attn.q_proj.lora_A.default.bias",
        "model.layers.0.embed_tokens.lora_embedding_A.default",
    ],
)
def test_adapter_pairs_refuses_an_entry_that_is_no_adapter_matrix(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        lora.adapter_pairs({name: torch.zeros(2, 2)})


def test_merged_weights_refuses_an_adapter_without_a_base_weight_or_of_another_shape():
    adapters = {"m.lora_A.weight": torch.ones(2, 6), "m.lora_B.weight": torch.ones(5, 2)}
    with pytest.raises(KeyError, match="m.weight"):
        lora.merged_weights({"other.weight": torch.zeros(5, 6)}, adapters, {"r": 2})
    with pytest.raises(ValueError, match=re.escape("adapter shape (5, 6) != weight (6, 5)")):
        lora.merged_weights({"m.weight": torch.zeros(6, 5)}, adapters, {"r": 2})


def test_merged_weights_keep_the_base_dtype():
    base = {"m.weight": torch.zeros(5, 6, dtype=torch.bfloat16)}
    adapters = {"m.lora_A.weight": torch.ones(2, 6), "m.lora_B.weight": torch.ones(5, 2)}
    merged = lora.merged_weights(base, adapters, {"r": 2, "lora_alpha": 1})
    assert merged["m.weight"].dtype == torch.bfloat16
    assert torch.equal(merged["m.weight"], torch.ones(5, 6, dtype=torch.bfloat16))  # 0 + 1/2 * (B @ A = 2)


def test_is_peft_state():
    assert lora.is_peft_state(["base_model.model.model.norm.weight", "base_model.model.lm_head.weight"])
    assert not lora.is_peft_state(["base_model.model.model.norm.weight", "lm_head.weight"])
    assert not lora.is_peft_state([])


def test_thinker_target_modules():
    assert lora.thinker_target_modules("all-linear") == lora.LANGUAGE_MODEL_LINEAR
    assert lora.thinker_target_modules(["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert lora.thinker_target_modules(r".*\.q_proj") == r".*\.q_proj"
    assert lora.thinker_target_modules(None) is None


def _linear_modules(model, prefix):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix)]


def test_language_model_linear_adapts_the_seven_projections_of_each_qwen2_5_omni_decoder_layer(tiny_model_dir):
    thinker = load_thinker(tiny_model_dir)
    layers = thinker.config.text_config.num_hidden_layers
    encoders = _linear_modules(thinker, "audio_tower.") + _linear_modules(thinker, "visual.")
    assert encoders and _linear_modules(thinker, "lm_head")  # linear layers the target must leave alone
    model = peft.get_peft_model(thinker, peft.LoraConfig(r=4, lora_alpha=8, target_modules=lora.LANGUAGE_MODEL_LINEAR))
    projections = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"] + [f"self_attn.{p}_proj" for p in "koqv"]
    expected = sorted(f"model.layers.{i}.{p}" for i in range(layers) for p in projections)
    assert _lora_modules(model) == expected and len(expected) == 7 * layers


def test_thinker_modules_adapted_with_the_encoders_excluded(family_model_dir):
    """With verl's default exclude_modules read as the encoders, both families adapt their decoder layers only:
    Qwen2.5-Omni's 7 projections per layer; Qwen3-Omni's 4 attention projections (its MoE layers have no dense MLP;
    the fused experts and the router are no nn.Linear)."""
    family, model_dir = family_model_dir
    thinker = load_thinker(model_dir)
    layers = thinker.config.text_config.num_hidden_layers
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=lora.thinker_target_modules("all-linear"),
        exclude_modules=lora.thinker_exclude_modules(None),
    )
    adapted = _lora_modules(peft.get_peft_model(thinker, config))
    per_layer = {"qwen2_5_omni": 7, "qwen3_omni": 4}[family]
    assert len(adapted) == per_layer * layers
    assert all(re.fullmatch(lora.LANGUAGE_MODEL_LINEAR, name) for name in adapted)
