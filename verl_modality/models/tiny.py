"""A tiny random-weight Qwen2.5-Omni checkpoint, built fully offline.

:func:`make_tiny_model` writes a directory laid out like ``Qwen/Qwen2.5-Omni-3B`` on the hub: the full
``Qwen2_5OmniConfig`` (``architectures: ["Qwen2_5OmniModel"]``), safetensors weights with ``thinker.*``, ``talker.*``
and ``token2wav.*`` keys, ``spk_dict.pt``, ``generation_config.json``, and a ``Qwen2_5OmniProcessor`` (Whisper
features, Qwen2-VL image and video processors, a byte-level BPE tokenizer trained here, an Omni chat template). It is
loaded by the same code as the real checkpoint (:func:`verl_modality.models.qwen2_5_omni.load_thinker`,
:func:`verl_modality.models.qwen2_5_omni.load_processor`).

Token ids keep Qwen's layout: the 22 added tokens follow the BPE vocabulary in Qwen's order, and the embedding is
padded past them (Qwen2.5-Omni: 151643 BPE tokens, added tokens at 151643-151664, 152064 rows).
"""

from __future__ import annotations

import itertools
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
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------
_GENERIC_LINES = """\
The quick brown fox jumps over the lazy dog.
A small model is trained on a tiny corpus so that every test runs in a few seconds.
Please read the question carefully and choose the best option.
Think step by step, then give the final answer.
She opened the window and listened to the rain falling on the roof.
The train leaves the station at seven o'clock in the morning.
We watched the video twice before we wrote down what we saw.
He played a short melody on the piano, first slowly and then faster.
Listen to the audio clip and tell me what you hear.
The weather is cold today, but tomorrow it will be warm and sunny.
There are three apples, two bananas and one orange on the table.
Numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100 and 2024 appear in many questions.
The answer is not in the list, so none of the options is correct.
It is impossible to tell from the information given.
The speaker says hello, then thanks everyone for coming.
Subtitles show the words that people say in the video.
A caption describes the scene: a cat sits next to a red ball.
Which of the following statements is true?
How many times does the sound repeat?
What is the main colour of the object in the middle of the frame?
Is the second tone higher or lower than the first one?
The sound gets louder, then quieter, and finally stops.
I think the correct choice is the one that matches both the picture and the sound.
Answer with the letter of the option only.
Could you describe what happens at the beginning, in the middle and at the end?
The dog barks loudly while the bird sings quietly in the tree.
Every morning the farmer feeds the cows, the sheep, the horses and the chickens.
Hello, how are you? I am fine, thank you!
Yes. No. Maybe. Sometimes. Always. Never.
(a) first, (b) second, (c) third, (d) fourth; "quoted text" and 'single quotes' too.
Email: test@example.com, website: https://example.com/path?query=1#top
Tabs\tand multiple   spaces, new lines, and punctuation: ! ? . , ; : - _ + = * / \\ | < > [ ] { } ( ) # $ % & @ ^ ~ `
"""

_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "black", "white", "pink", "brown", "grey", "gray")
_SHAPES = ("square", "circle", "triangle", "star", "ball", "box", "line", "dot")
_ANIMALS = ("dog", "cat", "cow", "bird", "sheep", "horse", "duck", "frog", "lion", "owl", "pig", "chicken")
_SOUNDS = ("beep", "beeps", "tone", "tones", "chirp", "click", "whistle", "buzz", "bark", "meow", "moo", "quack")
_PITCH = ("high", "low", "rising", "falling", "steady", "loud", "quiet", "short", "long", "higher", "lower")
_COUNTS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "zero", "once", "twice")
_WORDS = (
    "audio video subtitle subtitles caption speech transcript frame frames picture image clip sound sounds noise "
    "silence silent blank pitch frequency hertz Hz kHz volume loudness duration second seconds minute beginning end "
    "middle left right top bottom background foreground colour color colours colors shape shapes animal animals "
    "question answer option options choice correct incorrect wrong none above below cannot determined missing "
    "modality modalities stream visible audible shown heard seen says said spoken word words text reads display "
    "think reasoning because therefore first then finally both neither either only also count number how many which "
    "what where when who why is are was were does do did can could would should the a an of in on at to for with"
).split()


def tokenizer_corpus() -> list[str]:
    """The built-in training corpus: generic English plus the words of a small audio/video QA set."""
    lines = [line for line in _GENERIC_LINES.splitlines() if line]
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        lines.append(f"What colour is the {shape}? The {shape} is {colour}. A {colour} {shape} appears on screen.")
    for count, sound, pitch in zip(itertools.cycle(_COUNTS), _SOUNDS * 3, _PITCH * 4):
        lines.append(f"How many {sound}s do you hear? I hear {count} {pitch} {sound}s. The {sound} pitch is {pitch}.")
    for animal, sound in zip(_ANIMALS, itertools.cycle(_SOUNDS)):
        lines.append(f"Which animal makes this sound? Options: A. {animal} B. {_ANIMALS[-1]} C. none of the above.")
        lines.append(f"The {animal} makes a {sound} sound. The subtitle says: the {animal} is here.")
    letters = ("A", "B", "C", "D")
    for i, (colour, animal) in enumerate(zip(itertools.cycle(_COLOURS), _ANIMALS * 2)):
        answer = letters[i % 4]
        lines.append(
            f"Question: Which option matches the video? A. a {colour} {animal} B. a beep C. a high tone D. none. "
            f"<think>The video shows a {colour} {animal}.</think> <answer>{answer}</answer>"
        )
    for i in range(60):
        lines.append(" ".join(_WORDS[(i * 7 + k * 13) % len(_WORDS)] for k in range(12)) + ".")
    # Chat turns, so that role names become single tokens as in Qwen's vocabulary.
    for i, line in enumerate(lines[:120]):
        lines.append(f"system\nYou are a helpful assistant.\nuser\n{line}\nassistant\nThe answer is {letters[i % 4]}.")
    return lines


def build_tokenizer(bpe_vocab_size: int) -> Any:
    """Train a byte-level BPE with Qwen2's pre-tokenizer on :func:`tokenizer_corpus` and add Qwen's tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in ADDED_TOKENS])
    return Qwen2Tokenizer(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        extra_special_tokens=[text for text, special in ADDED_TOKENS if special],
        # Qwen2_5OmniProcessor.__call__ resizes videos to its class default (>= 128*28*28 pixels) unless told
        # otherwise; values in the tokenizer's init kwargs are the only saved defaults it reads for every modality.
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        **TOKENIZER_NAMED_TOKENS,
    )


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


def make_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 1024, overwrite: bool = False) -> Path:
    """Write a tiny random-weight Qwen2.5-Omni checkpoint (full layout, tokenizer, processor) to ``out_dir``.

    ``vocab_size`` is the number of embedding rows: the BPE gets ``vocab_size - 30`` of them, then come Qwen's 22 added
    tokens and 8 reserved rows (talker text tokens, speaker bos). The files are a pure function of ``seed`` and
    ``vocab_size``. The directory is assembled next to ``out_dir`` and moved into place when complete.
    """
    out = Path(out_dir)
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{parent} is a file, not a folder: cannot write the model to {out}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a model directory: refusing to replace it")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
        if not (out / "config.json").is_file():
            raise FileExistsError(
                f"refusing to replace {out}: it does not look like a model directory (no config.json)"
            )
    n_added = len(ADDED_TOKENS)
    if vocab_size < 256 + n_added + RESERVED_TAIL + 64:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE plus Qwen's added tokens")
    # after the checks: transformers takes seconds to import
    from transformers import GenerationConfig, Qwen2_5OmniForConditionalGeneration

    from verl_modality.models.checkpoint import assembled_dir

    with assembled_dir(out) as tmp:
        tokenizer = build_tokenizer(vocab_size - n_added - RESERVED_TAIL)
        token_ids = {text: tokenizer.convert_tokens_to_ids(text) for text, _ in ADDED_TOKENS}
        user_id = tokenizer.convert_tokens_to_ids("user")
        token_ids["user"] = user_id if isinstance(user_id, int) and user_id >= 0 else 0
        config = tiny_config(token_ids, vocab_size)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5OmniForConditionalGeneration(config).eval()
            speakers = _speaker_dict(config, vocab_size)
        model.save_pretrained(tmp)
        torch.save(speakers, tmp / "spk_dict.pt")
        # save_pretrained records the class it saved; hub checkpoints declare the name vLLM registers.
        config.architectures = ["Qwen2_5OmniModel"]
        config.save_pretrained(tmp)
        GenerationConfig(
            bos_token_id=token_ids["<|endoftext|>"],
            eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
            pad_token_id=token_ids["<|endoftext|>"],
        ).save_pretrained(tmp)
        build_processor(tokenizer).save_pretrained(tmp)
    return out
