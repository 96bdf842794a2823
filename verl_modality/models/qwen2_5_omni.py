"""The Qwen2.5-Omni family (``Qwen/Qwen2.5-Omni-3B`` / ``-7B``): thinker + talker + token2wav.

What differs from other families is data (model types, class names, placeholder tokens, FSDP leaf layers) and one
function: the thinker's attention applies multimodal RoPE to q/k itself (``apply_multimodal_rotary_pos_emb`` with
``mrope_section``), so MAPO-AT's capture does the same.
"""

from __future__ import annotations

import torch

from verl_modality.models.family import OmniFamily, module_function, register_family


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
    never_sample_tokens = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>")
    hub_ids = ("Qwen/Qwen2.5-Omni-3B", "Qwen/Qwen2.5-Omni-7B")

    def query_key_states(
        self, module: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q/k projections, then multimodal RoPE with the config's ``mrope_section`` (cos/sin ``(3, B, L, D)``)."""
        bsz, length, _ = hidden_states.shape
        q = module.q_proj(hidden_states).view(bsz, length, -1, module.head_dim).transpose(1, 2)
        k = module.k_proj(hidden_states).view(bsz, length, -1, module.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        rotary = module_function(module, "apply_multimodal_rotary_pos_emb")
        return rotary(q, k, cos, sin, module.config.rope_parameters["mrope_section"])
