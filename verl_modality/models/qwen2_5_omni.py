"""The Qwen2.5-Omni family (``Qwen/Qwen2.5-Omni-3B`` / ``-7B``): thinker + talker + token2wav.

What differs from other families is data only: model types, class names, placeholder tokens, FSDP leaf layers, and
the RoPE its attention applies to q/k (``apply_multimodal_rotary_pos_emb`` with ``mrope_section``), which MAPO-AT's
capture repeats.
"""

from __future__ import annotations

from verl_modality.models.family import OmniFamily, register_family


@register_family
class Qwen25Omni(OmniFamily):
    name = "qwen2_5_omni"
    title = "Qwen2.5-Omni"
    full_model_type = "qwen2_5_omni"
    thinker_model_type = "qwen2_5_omni_thinker"
    full_architectures = ("Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration")
    thinker_class_name = "Qwen2_5OmniThinkerForConditionalGeneration"
    processor_class_name = "Qwen2_5OmniProcessor"
    modeling_module = "transformers.models.qwen2_5_omni.modeling_qwen2_5_omni"
    rope_owner_class = "Qwen2_5OmniPreTrainedModelForConditionalGeneration"
    fsdp_layer_classes = ("Qwen2_5OmniAudioEncoderLayer", "Qwen2_5OmniVisionBlock", "Qwen2_5OmniDecoderLayer")
    placeholder_tokens = {"audio": "<|AUDIO|>", "image": "<|IMAGE|>", "video": "<|VIDEO|>"}
    # the placeholders, and the starts of their runs: multimodal RoPE reads the token after a start as its stream
    never_sample_tokens = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>")
    hub_ids = ("Qwen/Qwen2.5-Omni-3B", "Qwen/Qwen2.5-Omni-7B")
    rotary_function = "apply_multimodal_rotary_pos_emb"  # cos/sin (3, B, L, D): sections split here
    rotary_takes_mrope_section = True
