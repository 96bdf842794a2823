"""OmniSFTDataset on a real `verl-modality w2s` SFT file: verl's tokens for text, audio/video through the RL path."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from verl_modality.audio_contribution.weak_to_strong import W2SConfig, build_w2s
from verl_modality.data import schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    """Mixed-to-Strong SFT file of seven demo rows, one per tag (A, V, S, AS, VA, VS, VAS)."""
    from verl_modality.data.synthetic import make_demo_data

    out = tmp_path_factory.mktemp("omni_sft")
    make_demo_data(out / "data", seed=1, n_train=7, n_test=0, progress=False)
    rows = schema.read_rows(out / "data" / "train.parquet")
    weak = schema.write_rows(rows[:3], out / "data" / "weak.parquet")
    strong = schema.write_rows(rows[3:], out / "data" / "strong.parquet")
    build_w2s(weak, strong, out / "w2s", W2SConfig(paradigm="mixed_to_strong"))
    return out / "w2s" / "sft.parquet"


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from verl_modality.models.omni import load_omni_processor

    return load_omni_processor(str(tiny_model_dir))


def _config(**overrides):
    base = {"messages_key": "messages", "max_length": 1024, "pad_mode": "no_padding", "truncation": "error"}
    return OmegaConf.create({**base, **overrides})


def _dataset(path, processor, **overrides):
    from verl_modality.data.omni_sft_dataset import OmniSFTDataset

    return OmniSFTDataset(str(path), processor.tokenizer, _config(**overrides), processor=processor)


def _index(dataset, tag: str) -> int:
    return dataset.dataframe["modality_tag"].tolist().index(tag)


def _wave(dataset, index: int):
    from verl_modality.data import media

    return media.load_audio(dataset.dataframe.iloc[index]["audios"][0]["audio"], sr=16000)


def test_text_only_row_matches_verl(sft_file, processor):
    """The subtitle-only row: verl's MultiTurnSFTDataset gives the same tokens, loss mask and (text) positions."""
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    ours = _dataset(sft_file, processor)
    theirs = MultiTurnSFTDataset(str(sft_file), processor.tokenizer, _config(), processor=processor)
    i = _index(ours, "S")
    a, b = ours[i], theirs[i]
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["loss_mask"], b["loss_mask"])
    assert torch.equal(a["position_ids"], b["position_ids"])  # no media: Qwen2-VL's and Omni's RoPE agree
    assert a["multi_modal_inputs"] == {}
    answer = ours.dataframe.iloc[i]["answer"]
    assert processor.tokenizer.decode(a["input_ids"][a["loss_mask"].bool()]) == f"<answer>{answer}</answer><|im_end|>\n"


def test_audio_row_expands_audio_like_the_rl_path(sft_file, processor):
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    from verl_modality.models.omni import compute_position_ids
    from verl_modality.models.omni_inputs import encode_prompt

    ds = _dataset(sft_file, processor)
    i = _index(ds, "A")
    item = ds[i]
    ids, mask, mm = item["input_ids"], item["loss_mask"], item["multi_modal_inputs"]
    wave = _wave(ds, i)

    # placeholder expansion: as many <|AUDIO|> tokens as the processor gives for this wav, and the formula of the
    # audio encoder (two stride-2 stages over the 100 Hz mel frames)
    direct = build_multimodal_processor_inputs(processor, text=["<|audio_bos|><|AUDIO|><|audio_eos|>"], audio=[wave])
    n_audio = int((ids == processor.audio_token_id).sum())
    assert n_audio == int((direct["input_ids"] == processor.audio_token_id).sum())
    frames = int(direct["feature_attention_mask"].sum())
    assert frames == len(wave) // 160 and n_audio == ((frames - 1) // 2 + 1 - 2) // 2 + 1
    assert torch.equal(mm["input_features"], direct["input_features"])
    assert torch.equal(mm["feature_attention_mask"], direct["feature_attention_mask"])
    assert "<audio>" not in processor.tokenizer.decode(ids)

    # the prompt part is the RL prompt, token for token, with the RL positions
    user = ds.build_messages(ds.dataframe.iloc[i].to_dict(), i)[:-1]
    prompt = encode_prompt(processor, user, audios=[wave])
    p = prompt.input_ids.numel()
    assert torch.equal(ids[:p], prompt.input_ids)
    assert torch.equal(item["position_ids"], compute_position_ids(processor, ids, torch.ones_like(ids), mm))
    assert item["position_ids"].shape == (4, ids.numel())
    rl_pos = compute_position_ids(
        processor, prompt.input_ids, torch.ones_like(prompt.input_ids), prompt.multi_modal_inputs
    )
    assert torch.equal(item["position_ids"][:, :p], rl_pos)

    # loss: exactly the assistant answer and its end of turn, nothing of the prompt
    answer = ds.dataframe.iloc[i]["answer"]
    assert mask[:p].sum() == 0 and bool(mask[p:].all())
    assert processor.tokenizer.decode(ids[p:]) == f"<answer>{answer}</answer><|im_end|>\n"


def test_video_and_audio_row(sft_file, processor):
    ds = _dataset(sft_file, processor)
    item = ds[_index(ds, "VA")]
    ids, mm = item["input_ids"], item["multi_modal_inputs"]
    merge = processor.image_processor.merge_size**2
    assert int((ids == processor.video_token_id).sum()) == int(mm["video_grid_thw"].prod(-1).sum()) // merge
    assert int((ids == processor.audio_token_id).sum()) > 0 and mm["input_features"].shape[0] == 1
    assert mm["pixel_values_videos"].shape[0] == int(mm["video_grid_thw"].prod(-1).sum())
    # video tokens get t/h/w positions: the RoPE rows differ from the text row (0..L-1)
    pos = item["position_ids"]
    assert torch.equal(pos[0], torch.arange(ids.numel())) and not torch.equal(pos[2], pos[0])


def test_lengths_padding_and_errors(sft_file, processor, tmp_path):
    from verl_modality.data.omni_sft_dataset import OmniSFTDataset

    full = _dataset(sft_file, processor)
    i = _index(full, "A")
    item = full[i]
    length, prompt_len = item["input_ids"].numel(), int(item["loss_mask"].nonzero()[0, 0])
    rid = full.dataframe.iloc[i]["id"]

    with pytest.raises(ValueError, match=rf"{rid}.*prompt alone is {prompt_len} tokens"):
        _dataset(sft_file, processor, max_length=prompt_len, truncation="right")[i]
    with pytest.raises(ValueError, match=rf"{rid}.*{length} tokens .*> data.max_length {length - 1}"):
        _dataset(sft_file, processor, max_length=length - 1)[i]
    cut = _dataset(sft_file, processor, max_length=prompt_len + 2, truncation="right")[i]
    assert cut["input_ids"].numel() == prompt_len + 2 and int(cut["loss_mask"].sum()) == 2
    assert torch.equal(cut["position_ids"], item["position_ids"][:, : prompt_len + 2])
    with pytest.raises(ValueError, match="truncation=left"):
        _dataset(sft_file, processor, truncation="left")

    padded = _dataset(sft_file, processor, pad_mode="right", max_length=length + 5)[i]
    assert padded["input_ids"].shape == (length + 5,) and padded["position_ids"].shape == (4, length + 5)
    assert padded["attention_mask"].tolist() == [1] * length + [0] * 5
    assert torch.equal(padded["input_ids"][:length], item["input_ids"]) and padded["loss_mask"][length:].sum() == 0

    # a placeholder without its media item, and no processor: errors that name the problem
    rows = pq.read_table(sft_file).to_pylist()
    bad = [{**rows[i], "audios": []}]
    pq.write_table(pa.Table.from_pylist(bad, schema=pq.read_schema(sft_file)), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=rf"sample {rid} \(row 0\): more <audio> placeholders than items"):
        _dataset(tmp_path / "bad.parquet", processor)[0]
    with pytest.raises(ValueError, match="needs an Omni processor"):
        OmniSFTDataset(str(sft_file), processor.tokenizer, _config(), processor=None)


def test_collated_batch_trains_the_audio_tower(sft_file, processor, tiny_model_dir):
    """verl's collator + its unpadded->padded model inputs; one forward/backward of the thinker reaches the audio
    and vision towers, and the positions we hand over equal the ones the model computes itself."""
    from verl.utils.dataset.dataset_utils import SFTTensorCollator
    from verl.utils.model import extract_multi_modal_inputs

    from verl_modality.models.omni import load_thinker

    torch.manual_seed(0)
    ds = _dataset(sft_file, processor)
    samples = [ds[_index(ds, "A")], ds[_index(ds, "VA")]]
    batch = SFTTensorCollator("no_padding")(samples)
    lengths = batch["input_ids"].offsets().diff()
    bs, max_len = len(samples), int(lengths.max())
    pad_id = processor.tokenizer.pad_token_id
    input_ids = torch.nested.to_padded_tensor(batch["input_ids"], padding=pad_id, output_size=(bs, max_len))
    position_ids = torch.nested.to_padded_tensor(batch["position_ids"], padding=0, output_size=(bs, 4, max_len))
    attention_mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    loss_mask = torch.nested.to_padded_tensor(batch["loss_mask"], padding=0, output_size=(bs, max_len))
    mm = extract_multi_modal_inputs(list(batch["multi_modal_inputs"]))
    assert mm["input_features"].shape[0] == 2 and "pixel_values_videos" in mm

    model = load_thinker(str(tiny_model_dir)).train()
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids.transpose(0, 1), **mm)
    logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    target = loss_mask[:, 1:].bool()  # the token at t+1 is trained when its loss mask is set
    loss = -logp[target].mean()
    assert math.isfinite(loss.item()) and target.sum() == sum(int(s["loss_mask"].sum()) for s in samples)
    loss.backward()
    for tower in ("audio_tower", "visual"):
        grad = sum(
            p.grad.abs().sum().item() for n, p in model.named_parameters() if n.startswith(tower) and p.grad is not None
        )
        assert grad > 0, tower

    # sample 0 alone, the model computing its own multimodal RoPE: same logits
    model.eval()
    n = int(lengths[0])
    one = samples[0]
    with torch.no_grad():
        own = model(
            input_ids=one["input_ids"][None],
            attention_mask=torch.ones(1, n, dtype=torch.long),
            **one["multi_modal_inputs"],
        ).logits
        ours = model(
            input_ids=one["input_ids"][None],
            attention_mask=torch.ones(1, n, dtype=torch.long),
            position_ids=one["position_ids"][:, None],
            **one["multi_modal_inputs"],
        ).logits
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_verl_sft_trainer_one_step(sft_file, processor, tiny_model_dir, tmp_path):
    """verl's SFT trainer (torchrun, one CPU process; the plugin's cpu platform gives it a gloo process group) with
    the recipe: one step on all seven rows moves the audio
    tower (no weight decay, so only a gradient changes a weight)."""
    from verl_modality.models.omni import load_thinker

    ckpt = tmp_path / "ckpt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "1",
        "-m", "verl.trainer.sft_trainer", "--config-path", str(ROOT / "recipes" / "audio_contribution"),
        "--config-name", "sft_weak_to_strong",
        f"data.train_files={sft_file}", "data.train_batch_size=7", "data.micro_batch_size_per_gpu=7",
        "data.num_workers=0", "data.max_length=1024", "data.max_token_len_per_gpu=8192",
        f"model.path={tiny_model_dir}", "model.enable_gradient_checkpointing=false", "model.use_remove_padding=false",
        "+model.override_config.attn_implementation=sdpa",
        "engine.strategy=fsdp2", "engine.model_dtype=fp32", "engine.dtype=float32", "engine.use_torch_compile=false",
        "optim.lr=1e-3", "optim.weight_decay=0.0", "trainer.total_training_steps=1", "trainer.logger=[console]",
        "trainer.device=cpu", "trainer.n_gpus_per_node=1", f"trainer.default_local_dir={ckpt}",
        "trainer.resume_mode=disable", "checkpoint.save_contents=[model]",
    ]  # fmt: skip
    env = {**os.environ, "VERL_PLATFORM": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.search(r"step:1 - .*train/loss:([-\d.eE+naif]+) .*train/global_tokens:(\d+)", proc.stdout)
    assert found, proc.stdout[-3000:]
    assert math.isfinite(float(found.group(1)))
    ds = _dataset(sft_file, processor)
    assert int(found.group(2)) == sum(ds[i]["input_ids"].numel() for i in range(len(ds)))  # all rows, media tokens

    state = torch.load(ckpt / "global_step_1" / "model_world_size_1_rank_0.pt", weights_only=False)
    before = load_thinker(str(tiny_model_dir)).state_dict()
    moved = {}
    for name, value in state.items():
        value = value.to_local() if hasattr(value, "to_local") else value
        part = name.split(".")[0]
        moved[part] = moved.get(part, 0.0) + (value.float() - before[name].float()).abs().sum().item()
    assert moved["audio_tower"] > 0 and moved["visual"] > 0 and moved["model"] > 0, moved
