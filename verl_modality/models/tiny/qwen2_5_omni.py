"""Tiny Qwen2.5-Omni checkpoint builder (see :func:`verl_modality.models.tiny.make_tiny_model`).

The directory is laid out like ``Qwen/Qwen2.5-Omni-3B`` on the hub: the full
``Qwen2_5OmniConfig`` (``architectures: ["Qwen2_5OmniModel"]``), safetensors weights with ``thinker.*``, ``talker.*``
and ``token2wav.*`` keys, ``spk_dict.pt``, ``generation_config.json``, and a ``Qwen2_5OmniProcessor`` (Whisper
features, Qwen2-VL image and video processors, a byte-level BPE tokenizer trained here, an Omni chat template). It is
loaded by the same code as the real checkpoint (:func:`verl_modality.models.omni.load_thinker`,
:func:`verl_modality.models.omni.load_omni_processor`).

Token ids keep Qwen's layout: the 22 added tokens follow the BPE vocabulary in Qwen's order, and the embedding is
padded past them (Qwen2.5-Omni: 151643 BPE tokens, added tokens at 151643-151664, 152064 rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Qwen2.5-Omni's added tokens, in Qwen's order (ids base+0 ... base+21); the flag says "special".
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|AUDIO|>", True),
    ("<|audio_bos|>", True),
    ("<|audio_eos|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_bos|>", True),
    ("<|vision_eos|>", True),
    ("<|vision_pad|>", True),
    ("<|IMAGE|>", True),
    ("<|VIDEO|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
# Named special tokens the Omni processor reads off the tokenizer.
TOKENIZER_NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
# Last rows of the padded embedding: the talker's text pad/start/end ids (Qwen: 151859-151861), then speaker bos ids.
RESERVED_TAIL = 8
SPEAKERS = ("Chelsie", "Ethan")

DEFAULT_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)

# Renders like Qwen2.5-Omni's template: a default system turn, one placeholder triple per media item, string or list
# content, optional "Audio N: " / "Picture N: " / "Video N: " labels. No whitespace control: transformers renders with
# trim_blocks, so no literal newline may follow a block tag.
CHAT_TEMPLATE = (
    "{% set counts = namespace(audio=0, image=0, video=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% set kind = part['type'] if part['type'] is defined else '' %}"
    "{% if kind == 'audio' or part['audio'] is defined or part['audio_url'] is defined %}"
    "{% set counts.audio = counts.audio + 1 %}"
    "{% if add_audio_id %}Audio {{ counts.audio }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif kind == 'image' or part['image'] is defined or part['image_url'] is defined %}"
    "{% set counts.image = counts.image + 1 %}"
    "{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif kind == 'video' or part['video'] is defined %}"
    "{% set counts.video = counts.video + 1 %}"
    "{% if add_vision_id %}Video {{ counts.video }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
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

# Pixel budget of the image/video processors: 56x56 up to 112x112 (4 to 16 merged tokens per frame pair).
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16 * 28 * 28


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------
def tiny_config(token_ids: dict[str, int], vocab_size: int) -> Any:
    """Full ``Qwen2_5OmniConfig`` with a tiny thinker, talker and token2wav; ``token_ids`` maps token -> id."""
    from transformers import Qwen2_5OmniConfig

    ids = {
        "audio_token_index": token_ids["<|AUDIO|>"],
        "image_token_index": token_ids["<|IMAGE|>"],
        "video_token_index": token_ids["<|VIDEO|>"],
        "audio_start_token_id": token_ids["<|audio_bos|>"],
        "audio_end_token_id": token_ids["<|audio_eos|>"],
        "vision_start_token_id": token_ids["<|vision_bos|>"],
        "vision_end_token_id": token_ids["<|vision_eos|>"],
    }
    special = {
        "bos_token_id": token_ids["<|im_start|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    hidden = 64
    # Text attention: 2 heads of 32 (vLLM's CPU attention kernels take head sizes of 32 and more), 1 KV head.
    text_heads, text_kv_heads = 2, 1
    text_mrope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}  # sum = head_dim/2
    talker_mrope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}  # head_dim 16
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": text_heads,
        "num_key_value_heads": text_kv_heads,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "rope_parameters": dict(text_mrope),
        "tie_word_embeddings": False,
        **special,
    }
    audio_config = {
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "output_dim": hidden,
        "max_source_positions": 1500,
        "n_window": 100,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "out_hidden_size": hidden,
        "fullatt_block_indexes": [1],
    }
    thinker_config = {
        "audio_config": audio_config,
        "vision_config": vision_config,
        "text_config": text_config,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "user_token_id": token_ids.get("user", 0),
        "vision_token_id": token_ids["<|vision_pad|>"],
        "tie_word_embeddings": False,
        **ids,
        **special,
    }
    tail = vocab_size - RESERVED_TAIL
    talker_config = {
        "vocab_size": 8448,
        "embedding_size": hidden,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_window_layers": 2,
        "rope_parameters": dict(talker_mrope),
        "tts_text_pad_token_id": tail,
        "tts_text_start_token_id": tail + 1,
        "tts_text_end_token_id": tail + 2,
        "spatial_merge_size": 2,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        **ids,
    }
    token2wav_config = {
        "dit_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "head_dim": 16,
            "ff_mult": 2,
            "emb_dim": 16,
            "num_embeds": 8447,  # every talker code embeds, so random codes never index past the table
            "mel_dim": 80,
            "repeats": 2,
            "block_size": 24,
            "look_ahead_layers": [1],
            "look_backward_layers": [0],
            "dropout": 0.0,
            "enc_emb_dim": 16,
            "enc_dim": 16,
            "enc_channels": [16, 16, 16, 16, 48],
            "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_dilations": [1, 2, 3, 4, 1],
            "enc_attention_channels": 8,
            "enc_res2net_scale": 2,
            "enc_se_channels": 8,
        },
        "bigvgan_config": {
            "mel_dim": 80,
            "upsample_initial_channel": 64,
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3, 5]],
            "upsample_rates": [5, 3, 2, 2, 2, 2],
            "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
        },
    }
    return Qwen2_5OmniConfig(
        thinker_config=thinker_config,
        talker_config=talker_config,
        token2wav_config=token2wav_config,
        enable_audio_output=True,
    )


# --------------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------------
def build_processor(tokenizer: Any) -> Any:
    """``Qwen2_5OmniProcessor`` with Whisper features (16 kHz, 128 mels) and a small Qwen2-VL pixel budget."""
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, return_attention_mask=True
    )
    vision = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **vision)
    video_processor = Qwen2VLVideoProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **vision)
    return Qwen2_5OmniProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------------------------------------
def _speaker_dict(config: Any, vocab_size: int) -> dict[str, dict[str, Any]]:
    """``spk_dict.pt`` content: per speaker a text bos id (thinker vocab), an x-vector and a reference mel."""
    dit = config.token2wav_config.dit_config
    tail = vocab_size - RESERVED_TAIL + 3
    speakers = {}
    for i, name in enumerate(SPEAKERS):
        speakers[name] = {
            "bos_token": tail + i,
            "cond": torch.randn(1, dit.enc_emb_dim),
            "ref_mel": torch.randn(1, 48, dit.mel_dim),
        }
    return speakers


def write_checkpoint(out: Path, config: Any, token_ids: dict[str, int], vocab_size: int) -> None:
    """Build the full model from ``config`` (under the caller's seed) and save it with ``spk_dict.pt`` and the
    generation config, as the hub checkpoint has them."""
    from transformers import GenerationConfig, Qwen2_5OmniForConditionalGeneration

    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    speakers = _speaker_dict(config, vocab_size)
    model.save_pretrained(out)
    torch.save(speakers, out / "spk_dict.pt")
    # save_pretrained records the class it saved; hub checkpoints declare the name vLLM registers.
    config.architectures = ["Qwen2_5OmniModel"]
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
    ).save_pretrained(out)
