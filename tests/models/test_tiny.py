"""The tiny offline Qwen2.5-Omni checkpoint: layout, tokenizer/config agreement, determinism, forward/backward/generate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from verl_modality.models.omni import load_processor, load_thinker
from verl_modality.models.tiny import make_tiny_model
from verl_modality.models.tiny.qwen2_5_omni import ADDED_TOKENS, DEFAULT_SYSTEM_PROMPT

SR = 16000


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-omni", seed=0)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_processor(str(tiny_dir), local_files_only=True)


@pytest.fixture(scope="module")
def thinker(tiny_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_thinker(str(tiny_dir), local_files_only=True)


def _beep_audio(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _video(frames: int = 4, size: int = 56) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def av_inputs(processor):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": "beeps.wav"},
                {"type": "video", "video": "clip.mp4"},
                {"type": "text", "text": "How many beeps do you hear, and what colour is the square?"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=text, audio=[_beep_audio()], videos=[_video()], return_tensors="pt")


def test_layout(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    for name in ("config.json", "model.safetensors", "generation_config.json", "spk_dict.pt", "tokenizer.json"):
        assert name in names
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no leftover temp dir
    assert sum(p.stat().st_size for p in tiny_dir.iterdir()) < 10 * 2**20

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_dir, local_files_only=True)
    assert config.model_type == "qwen2_5_omni"
    assert config.architectures == ["Qwen2_5OmniModel"]
    text = config.thinker_config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) * 2 == head_dim
    assert head_dim >= 32  # the smallest head size vLLM's CPU attention supports (same checkpoint for hf and vLLM)
    assert config.thinker_config.audio_config.num_mel_bins == 128
    assert config.thinker_config.vision_config.out_hidden_size == text.hidden_size

    prefixes = {key.split(".", 1)[0] for key in load_file(tiny_dir / "model.safetensors")}
    assert prefixes == {"thinker", "talker", "token2wav"}


def test_token_ids_match_config(tiny_dir, processor, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    tok = processor.tokenizer
    thinker = AutoConfig.from_pretrained(tiny_dir, local_files_only=True).thinker_config
    ids = {text: tok.convert_tokens_to_ids(text) for text, _ in ADDED_TOKENS}
    base = ids["<|endoftext|>"]
    assert list(ids.values()) == list(range(base, base + len(ADDED_TOKENS)))  # Qwen's order, contiguous
    assert thinker.audio_token_index == ids["<|AUDIO|>"]
    assert thinker.image_token_index == ids["<|IMAGE|>"]
    assert thinker.video_token_index == ids["<|VIDEO|>"]
    assert thinker.audio_start_token_id == ids["<|audio_bos|>"]
    assert thinker.audio_end_token_id == ids["<|audio_eos|>"]
    assert thinker.vision_start_token_id == ids["<|vision_bos|>"]
    assert thinker.vision_end_token_id == ids["<|vision_eos|>"]
    assert tok.eos_token_id == thinker.eos_token_id == ids["<|im_end|>"]
    assert tok.pad_token_id == thinker.pad_token_id == ids["<|endoftext|>"]
    assert len(tok) <= thinker.text_config.vocab_size
    for text, special in ADDED_TOKENS:
        assert tok.encode(text, add_special_tokens=False) == [ids[text]]
        assert (text in tok.all_special_tokens) == special
    # Any text encodes (byte-level) and round-trips.
    sample = "Quel ton est le plus aigu ? 高い音 🙂 <think>two beeps</think><answer>B</answer>"
    assert tok.decode(tok.encode(sample, add_special_tokens=False)) == sample
    # The processor reads its placeholder tokens off the tokenizer.
    assert processor.audio_token == "<|AUDIO|>" and processor.video_token == "<|VIDEO|>"


def test_chat_template(processor):
    messages = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "image"}, {"type": "text", "text": "Which?"}]},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And now?"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|><|vision_bos|><|IMAGE|><|vision_eos|>Which?<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>And now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(own_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_deterministic(tiny_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)
    ref, same, diff = (load_file(d / "model.safetensors") for d in (tiny_dir, again, other))
    assert ref.keys() == same.keys()
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not all(torch.equal(ref[k], diff[k]) for k in ref)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json", "spk_dict.pt"):
        assert (tiny_dir / name).read_bytes() == (again / name).read_bytes(), name
    with pytest.raises(FileExistsError):
        make_tiny_model(again, seed=0)
    assert make_tiny_model(again, seed=0, overwrite=True) == again


def test_thinker_weights_match_checkpoint(tiny_dir, thinker):
    saved = load_file(tiny_dir / "model.safetensors")
    state = thinker.state_dict()
    assert {f"thinker.{k}" for k in state} == {k for k in saved if k.startswith("thinker.")}
    assert all(torch.equal(v, saved[f"thinker.{k}"]) for k, v in state.items())
    assert thinker.dtype == torch.float32


def test_forward_audio_video(thinker, av_inputs):
    inputs, config = av_inputs, thinker.config
    ids = inputs["input_ids"][0]
    # Whisper frames -> audio tokens: conv stride 2 then pooling 2 (25 tokens per second).
    frames = int(inputs["feature_attention_mask"].sum())
    assert (ids == config.audio_token_index).sum() == ((frames - 1) // 2 + 1 - 2) // 2 + 1 == 50
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert (t, h, w) == (2, 4, 4)  # 56x56 frames stay 56x56
    assert (ids == config.video_token_index).sum() == t * h * w // 4
    logits = thinker(**inputs).logits
    assert logits.shape == (1, ids.numel(), config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_backward_reaches_all_towers(thinker, av_inputs):
    thinker.zero_grad(set_to_none=True)
    logits = thinker(**av_inputs).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], av_inputs["input_ids"][0, 1:])
    loss.backward()
    try:
        for part in ("model", "audio_tower", "visual"):
            grads = [p.grad for p in getattr(thinker, part).parameters() if p.grad is not None]
            assert grads and sum(g.abs().sum() for g in grads) > 0, part
    finally:
        thinker.zero_grad(set_to_none=True)


def test_generate(thinker, av_inputs):
    with torch.no_grad():
        out = thinker.generate(**av_inputs, max_new_tokens=4, do_sample=False)
    new = out.shape[1] - av_inputs["input_ids"].shape[1]
    assert 1 <= new <= 4


PLUGIN_LINE = "PLUGIN"  # replaced by a way of loading the plugin's log filter for the talker's thinker-vocabulary ids
LOAD_QUIETLY = """
import logging, sys
from transformers import AutoConfig, AutoProcessor
PLUGIN
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("transformers").addHandler(Keep(level=logging.WARNING))
AutoConfig.from_pretrained(sys.argv[1])
AutoProcessor.from_pretrained(sys.argv[1])
records.append("-- loaded --")
# the same check on a config with a talker id really outside the talker's vocabulary still warns
from transformers import Qwen2_5OmniTalkerConfig
Qwen2_5OmniTalkerConfig(vocab_size=16, pad_token_id=99)
print("\\n".join(records))
"""


@pytest.mark.parametrize(
    "plugin",
    [
        "import verl  # noqa: F401  (loads the plugin)",
        "from verl_modality.integrations import registry; registry.install()  # what the CLI does",
    ],
)
def test_loads_without_warnings(tiny_dir, plugin):
    import subprocess
    import sys

    code = LOAD_QUIETLY.replace(PLUGIN_LINE, plugin)
    assert code != LOAD_QUIETLY
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    cut = lines.index("-- loaded --")
    assert lines[:cut] == []  # loading the checkpoint and its processor warned about nothing
    assert any(w.startswith("Model config: pad_token_id must be") for w in lines[cut + 1 :]), lines  # others still do
