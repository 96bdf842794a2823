"""Qwen2.5-Omni support pieces, on the tiny checkpoint: processor, config, placeholders, vLLM weight names."""

import types

import pytest
import torch
from safetensors import safe_open

from verl_modality.models import qwen2_5_omni as omni


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_model_dir


def test_verl_hf_processor_recognises_omni(tiny):
    from verl.utils import hf_processor

    processor = hf_processor(str(tiny))
    assert processor.__class__.__name__ == "Qwen2_5OmniProcessor"
    assert processor.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert callable(processor.get_rope_index) and callable(processor.get_rope_index_kwargs)


def test_hf_model_config_describes_the_thinker(tiny):
    from verl.utils.model import get_hf_auto_model_class
    from verl.workers.config import HFModelConfig

    cfg = HFModelConfig(path=str(tiny), override_config={"attn_implementation": "sdpa"})
    assert cfg.hf_config.model_type == "qwen2_5_omni_thinker"
    assert cfg.architectures == ["Qwen2_5OmniThinkerForConditionalGeneration"]
    assert cfg.omni_full_config.model_type == "qwen2_5_omni"
    assert get_hf_auto_model_class(cfg.hf_config).__name__ == "AutoModelForImageTextToText"


def test_vllm_weight_names_are_the_full_checkpoint_names(tiny):
    from verl_modality.models.qwen2_5_omni import load_thinker

    thinker_names = set(load_thinker(str(tiny)).state_dict())
    with safe_open(str(tiny / "model.safetensors"), "pt") as f:
        ckpt = {k for k in f.keys() if k.startswith("thinker.")}
    mapped = {omni.vllm_weight_name(n) for n in thinker_names}
    assert mapped == ckpt
    assert omni.vllm_weight_name("thinker.model.norm.weight") == "thinker.model.norm.weight"


def test_collapse_placeholders_restores_one_token_per_item():
    a, v, i = 7, 8, 9
    ids = [1, a, a, a, 2, v, v, 3, a, a, 4, i, 5]
    assert omni.collapse_placeholders(ids, [a, v, i]) == [1, a, 2, v, 3, a, 4, i, 5]
    assert omni.collapse_placeholders([a, a, v, v, a], [a, v]) == [a, v, a]


def test_vllm_server_patch_only_touches_omni(tiny):
    from verl.utils import hf_processor

    calls = []
    fake = types.SimpleNamespace(
        qwen2_5_vl_dedup_image_tokens=lambda ids, p: calls.append("orig") or ids,
        get_vision_placeholder_token_ids=lambda p: ["orig"],
    )
    from verl_modality.integrations.verl_rollout import patch_vllm_server

    patch_vllm_server(fake)
    other = types.SimpleNamespace()
    assert fake.qwen2_5_vl_dedup_image_tokens([1, 1, 2], other) == [1, 1, 2] and calls == ["orig"]
    assert fake.get_vision_placeholder_token_ids(other) == ["orig"]
    processor = hf_processor(str(tiny))
    a = processor.audio_token_id
    assert fake.qwen2_5_vl_dedup_image_tokens([1, a, a, a, 2], processor) == [1, a, 2]
    banned = fake.get_vision_placeholder_token_ids(processor)
    tok = processor.tokenizer
    assert set(banned) == {tok.convert_tokens_to_ids(t) for t in omni.NEVER_SAMPLE_TOKENS}


def test_collapsed_prompt_reprocesses_to_the_same_inputs(tiny):
    """Rollout keeps expanded ids; decoding the collapsed ids and re-running the processor gives them back."""
    import numpy as np
    from verl.utils import hf_processor

    from verl_modality.models.omni_inputs import encode_prompt

    processor = hf_processor(str(tiny))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": None},
                {"type": "video", "video": None},
                {"type": "text", "text": "What colour?"},
            ],
        }
    ]
    audio = np.sin(np.linspace(0, 2000, 32000)).astype(np.float32)
    video = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    first = encode_prompt(processor, messages, videos=[video], audios=[audio])
    ids = omni.collapse_placeholders(first.input_ids.tolist(), omni.placeholder_token_ids(processor.tokenizer).values())
    text = processor.tokenizer.decode(ids, skip_special_tokens=False)
    again = processor(text=[text], audio=[audio], videos=[video], return_tensors="pt")
    assert again["input_ids"][0].tolist() == first.input_ids.tolist()
    torch.testing.assert_close(again["input_features"], first.multi_modal_inputs["input_features"])
