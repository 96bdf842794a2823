"""The Qwen3-Omni family (``Qwen/Qwen3-Omni-30B-A3B-Instruct`` / ``-Thinking``): MoE thinker + talker + code2wav.

Differences from Qwen2.5-Omni that the plugin meets: a mixture-of-experts text decoder (transformers 5 fuses each
layer's experts into ``mlp.experts.gate_up_proj`` / ``down_proj``; the hub checkpoint and vLLM keep them one by one,
and verl's FSDP engine splits them again before a weight sync), q/k RMS norms before RoPE, RoPE whose multimodal
sections are interleaved inside the rotary embedding (so attention applies plain RoPE), placeholder tokens
``<|audio_pad|>`` / ``<|image_pad|>`` / ``<|video_pad|>``, and deepstack vision features.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from verl_modality.models.family import OmniFamily, register_family


@register_family
class Qwen3Omni(OmniFamily):
    name = "qwen3_omni"
    title = "Qwen3-Omni"
    full_model_type = "qwen3_omni_moe"
    thinker_model_type = "qwen3_omni_moe_thinker"
    full_architectures = ("Qwen3OmniMoeForConditionalGeneration",)
    thinker_class_name = "Qwen3OmniMoeThinkerForConditionalGeneration"
    processor_class_name = "Qwen3OmniMoeProcessor"
    modeling_module = "transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe"
    rope_owner_class = "Qwen3OmniMoePreTrainedModelForConditionalGeneration"
    fsdp_layer_classes = (
        "Qwen3OmniMoeAudioEncoderLayer",
        "Qwen3OmniMoeVisionBlock",
        "Qwen3OmniMoeThinkerTextDecoderLayer",
    )
    placeholder_tokens = {"audio": "<|audio_pad|>", "image": "<|image_pad|>", "video": "<|video_pad|>"}
    never_sample_tokens = (
        "<|audio_pad|>",
        "<|audio_start|>",
        "<|audio_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_start|>",
    )
    hub_ids = ("Qwen/Qwen3-Omni-30B-A3B-Instruct", "Qwen/Qwen3-Omni-30B-A3B-Thinking")
    moe = True
    vllm_serves_lora = False  # vLLM 0.24's Qwen3OmniMoeThinkerForConditionalGeneration: "does not support LoRA yet"
    rotary_function = "apply_rotary_pos_emb"  # the multimodal sections are interleaved inside cos/sin already
    rotary_takes_mrope_section = False

    def checkpoint_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """``thinker.*`` names with fused experts split one by one (``experts.<e>.gate_proj.weight`` ...), the hub
        checkpoint's layout, which is also what vLLM's Qwen3-Omni loader takes."""
        return super().checkpoint_weights(split_experts(weights))

    def module_weights(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-expert entries (verl's FSDP engine splits the experts before every weight sync) fused back."""
        return fuse_experts(weights)


def split_experts(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Fused expert tensors ``(E, 2I, H)`` / ``(E, H, I)`` as per-expert ``(I, H)`` / ``(H, I)`` entries; others as
    they are. Already split names pass through, so applying it after verl's own split changes nothing."""
    for name, tensor in weights:
        if name.endswith(".mlp.experts.gate_up_proj") and tensor.dim() == 3:
            base = name.removesuffix(".gate_up_proj")
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                yield f"{base}.{e}.gate_proj.weight", gate[e]
                yield f"{base}.{e}.up_proj.weight", up[e]
        elif name.endswith(".mlp.experts.down_proj") and tensor.dim() == 3:
            base = name.removesuffix(".down_proj")
            for e in range(tensor.shape[0]):
                yield f"{base}.{e}.down_proj.weight", tensor[e]
        else:
            yield name, tensor


_EXPERT = re.compile(r"^(?P<base>.*\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")


def fuse_experts(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert ``(I, H)`` / ``(H, I)`` entries as the fused ``gate_up_proj`` ``(E, 2I, H)`` and ``down_proj``
    ``(E, H, I)`` of transformers 5; other entries as they are. An expert set with a gap is an error."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, tensor in weights.items():
        match = _EXPERT.match(name)
        if match is None:
            out[name] = tensor
            continue
        groups.setdefault(match["base"], {}).setdefault(match["proj"], {})[int(match["e"])] = tensor
    for base, projections in groups.items():
        n = 1 + max(max(p) for p in projections.values())
        for proj in ("gate", "up", "down"):
            have = projections.get(proj, {})
            if sorted(have) != list(range(n)):
                raise ValueError(f"{base}: {proj}_proj of experts {sorted(set(range(n)) - set(have))} missing")
        gate, up, down = (projections[p] for p in ("gate", "up", "down"))
        out[f"{base}.gate_up_proj"] = torch.stack([torch.cat([gate[e], up[e]], dim=0) for e in range(n)])
        out[f"{base}.down_proj"] = torch.stack([down[e] for e in range(n)])
    return out
