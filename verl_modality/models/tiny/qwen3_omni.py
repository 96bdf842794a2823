"""Tiny Qwen3-Omni (MoE) checkpoint builder (see :func:`verl_modality.models.tiny.make_tiny_model`).

The directory is laid out like ``Qwen/Qwen3-Omni-30B-A3B-Instruct`` on the hub: the full ``Qwen3OmniMoeConfig``
(``architectures: ["Qwen3OmniMoeForConditionalGeneration"]``, the name vLLM registers), safetensors weights with
``thinker.*``, ``talker.*`` and ``code2wav.*`` keys (experts one by one: ``mlp.experts.<e>.gate_proj.weight``, the
hub's layout, which transformers fuses on load), ``generation_config.json`` and a ``Qwen3OmniMoeProcessor``.

The thinker is small but keeps what matters to the code around it: a mixture-of-experts text decoder (4 experts, 2
per token) with q/k norms and interleaved multimodal RoPE, text head_dim 32 (vLLM's CPU attention kernels take head
sizes of 32 and more), an audio encoder with the 100-frame blocks the processor assumes, a vision encoder with 16-pixel
patches and deepstack layers. Token ids follow Qwen3-Omni's order of added tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Qwen3-Omni's added tokens, in Qwen's order (hub ids 151643 ... 151675); the flag says "special".
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
)
# Named special tokens the Omni processor reads off the tokenizer.
TOKENIZER_NAMED_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
RESERVED_TAIL = 0

# One placeholder triple per media item, string or list content; no default system turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% set kind = part['type'] if part['type'] is defined else '' %}"
    "{% if kind == 'audio' or part['audio'] is defined or part['audio_url'] is defined %}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif kind == 'image' or part['image'] is defined or part['image_url'] is defined %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif kind == 'video' or part['video'] is defined %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['text'] is defined %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Pixel budget: 16-pixel patches merged 2x2, so 64x64 up to 128x128 (4 to 16 merged tokens per frame pair).
PATCH = 16
MIN_PIXELS = 4 * (2 * PATCH) ** 2
MAX_PIXELS = 16 * (2 * PATCH) ** 2


def tiny_config(token_ids: dict[str, int], vocab_size: int) -> Any:
    """Full ``Qwen3OmniMoeConfig`` with a tiny MoE thinker, talker and code2wav; ``token_ids`` maps token -> id."""
    from transformers import Qwen3OmniMoeConfig

    media = {
        "audio_token_id": token_ids["<|audio_pad|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "audio_start_token_id": token_ids["<|audio_start|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
    }
    special = {
        "bos_token_id": token_ids["<|im_start|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    hidden = 64
    mrope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6], "interleaved": True}
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "moe_intermediate_size": 32,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "max_position_embeddings": 32768,
        "rope_parameters": mrope,
        "tie_word_embeddings": False,  # read by vLLM's text model (not a field of transformers' text config)
        **special,
    }
    audio_config = {
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "output_dim": hidden,
        "n_window": 50,  # blocks of 2 * 50 mel frames: the processor's token count assumes 100
        "n_window_infer": 800,
        "downsample_hidden_size": 16,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": PATCH,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": hidden,
        "num_position_embeddings": 64,  # an 8 x 8 grid of learned positions
        "deepstack_visual_indexes": [0, 1],
        # not fields of transformers' config class, but in the hub's config.json and read by vLLM's vision encoder
        "image_size": 8 * PATCH,
        "apply_vit_abs_pos_embed": True,
    }
    thinker_config = {
        "audio_config": audio_config,
        "vision_config": vision_config,
        "text_config": text_config,
        "position_id_per_seconds": 25,
        "user_token_id": token_ids["user"],
        "tie_word_embeddings": False,
        **media,
    }
    talker_rope = {"rope_type": "default", "rope_theta": 1000000.0}
    talker_config = {
        "text_config": {
            "vocab_size": 128,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "moe_intermediate_size": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "shared_expert_intermediate_size": 32,
            "rope_parameters": dict(talker_rope),
        },
        "code_predictor_config": {
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "num_code_groups": 4,
        },
        "num_code_groups": 4,
        "thinker_hidden_size": hidden,
        "accept_hidden_layer": 1,
        "codec_eos_token_id": 100,
        "codec_nothink_id": 101,
        "codec_think_bos_id": 102,
        "codec_think_eos_id": 103,
        "codec_pad_id": 104,
        "codec_bos_id": 105,
        "speaker_id": {"ethan": 110, "chelsie": 111},
        "spatial_merge_size": 2,
        **media,
    }
    code2wav_config = {
        "codebook_size": 64,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_quantizers": 4,
        "upsample_rates": [2, 2],
        "upsampling_ratios": [2],
        "decoder_dim": 32,
        "sliding_window": 8,
    }
    return Qwen3OmniMoeConfig(
        thinker_config=thinker_config,
        talker_config=talker_config,
        code2wav_config=code2wav_config,
        enable_audio_output=True,
        im_start_token_id=token_ids["<|im_start|>"],
        im_end_token_id=token_ids["<|im_end|>"],
        tts_pad_token_id=token_ids["<tts_pad>"],
        tts_bos_token_id=token_ids["<tts_text_bos>"],
        tts_eos_token_id=token_ids["<tts_text_eod>"],
        system_token_id=token_ids["system"],
        user_token_id=token_ids["user"],
        assistant_token_id=token_ids["assistant"],
    )


def build_processor(tokenizer: Any) -> Any:
    """``Qwen3OmniMoeProcessor`` with Whisper features (16 kHz, 128 mels) and a small 16-pixel-patch budget."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3OmniMoeProcessor,
        WhisperFeatureExtractor,
    )

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, return_attention_mask=True
    )
    vision = {"patch_size": PATCH, "temporal_patch_size": 2, "merge_size": 2}
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    return Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **vision),
        video_processor=Qwen2VLVideoProcessor(size=size, **vision),
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def write_checkpoint(out: Path, config: Any, token_ids: dict[str, int], vocab_size: int) -> None:
    """Build the full model from ``config`` (under the caller's seed) and save it with its generation config."""
    from transformers import GenerationConfig, Qwen3OmniMoeForConditionalGeneration

    model = Qwen3OmniMoeForConditionalGeneration(config).eval()
    # transformers 5.9.0 leaves the talker's fused experts as allocated (torch.empty): random bytes, not a function of
    # the seed. The thinker's are initialised.
    with torch.no_grad():
        for module in model.talker.modules():
            if type(module).__name__.endswith("Experts"):
                for param in module.parameters():
                    param.normal_(0.0, config.talker_config.initializer_range)
    model.save_pretrained(out)
    config.architectures = ["Qwen3OmniMoeForConditionalGeneration"]
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
    ).save_pretrained(out)
