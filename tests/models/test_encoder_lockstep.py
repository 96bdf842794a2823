"""Every encoder in every forward (models/encoder_lockstep.py): the same encoder calls whatever streams a micro-batch
holds, outputs unchanged, and two FSDP2 ranks with different streams agreeing with one process."""

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from verl_modality.models import encoder_lockstep
from verl_modality.models.omni import load_omni_processor, load_thinker
from verl_modality.models.omni_inputs import encode_prompt

WORKER = Path(__file__).with_name("lockstep_worker.py")
STREAMS = ("audio", "image", "video")


def _media():
    rng = np.random.default_rng(0)  # audio and video drawn as lockstep_worker.py draws them
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    video = rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    return {"audio": audio, "video": video, "image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)}


def _inputs(processor, streams: tuple[str, ...]) -> dict:
    media = _media()
    content = [{"type": s} for s in streams] + [{"type": "text", "text": "What is it?"}]
    enc = encode_prompt(
        processor,
        [{"role": "user", "content": content}],
        audios=[media["audio"]] if "audio" in streams else None,
        images=[media["image"]] if "image" in streams else None,
        videos=[media["video"]] if "video" in streams else None,
    )
    ids = enc.input_ids[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **enc.multi_modal_inputs}


def _encoder_calls(model) -> list[str]:
    """The calls of the token embedding and the encoders, in order: under verl's FSDP2 wrap policy each is (or holds)
    its own units, so this is the order of their all-gathers."""
    calls: list[str] = []
    model.get_input_embeddings().register_forward_hook(lambda *a: calls.append("embed"))
    model.audio_tower.register_forward_hook(lambda *a: calls.append("audio"))
    model.visual.register_forward_hook(lambda *a: calls.append("visual"))
    return calls


@pytest.fixture(scope="module")
def models(family_model_dir):
    _, path = family_model_dir
    plain, lockstep = load_thinker(path), load_thinker(path)
    encoder_lockstep.install(lockstep)
    return load_omni_processor(str(path)), plain, lockstep


@pytest.fixture(scope="module")
def unused(models) -> set[str]:
    """Parameters no forward uses, even with all three streams (e.g. Qwen2.5-Omni's ``audio_bos_eos_token``)."""
    processor, plain, _ = models
    plain.zero_grad(set_to_none=True)
    plain(**_inputs(processor, STREAMS)).logits.mean().backward()
    return {n for n, p in plain.named_parameters() if p.grad is None}


@pytest.mark.parametrize("streams", [c for n in range(4) for c in itertools.combinations(STREAMS, n)], ids=str)
def test_every_encoder_runs_once_in_the_thinkers_order_and_nothing_else_changes(models, unused, streams):
    processor, plain, lockstep = models
    inputs = _inputs(processor, streams)
    plain.zero_grad(set_to_none=True)
    lockstep.zero_grad(set_to_none=True)
    calls_plain, calls_lockstep = _encoder_calls(plain), _encoder_calls(lockstep)
    try:
        out_plain = plain(**inputs).logits
        out_lockstep = lockstep(**inputs).logits
        assert torch.equal(out_plain, out_lockstep)  # adding zeros changes no value
        out_plain.mean().backward()
        out_lockstep.mean().backward()
    finally:
        for model in (plain, lockstep):
            for module in (model.get_input_embeddings(), model.audio_tower, model.visual):
                module._forward_hooks.clear()
    # transformers looks up the token embeddings, then runs an encoder only for a stream the micro-batch holds; with
    # lockstep, always all three slots, each after the lookup (as a real encoder call)
    assert calls_plain == ["embed", *({"audio": "audio"}.get(s, "visual") for s in streams)]
    assert calls_lockstep == ["embed", "audio", "visual", "visual"]
    grads_plain = {n: p.grad for n, p in plain.named_parameters()}
    for name, param in lockstep.named_parameters():
        assert (param.grad is None) == (name in unused), name  # every encoder takes part in the backward too
        if name in unused:
            continue
        if grads_plain[name] is None:
            assert not param.grad.any(), name  # from a dummy: exactly zero
        else:
            assert torch.equal(param.grad, grads_plain[name]), name


def test_install_is_idempotent_and_restores_the_encoder_methods(models):
    processor, _, lockstep = models
    forward = lockstep.forward
    assert encoder_lockstep.install(lockstep) is lockstep and lockstep.forward is forward
    assert encoder_lockstep.is_installed(lockstep)
    lockstep(**_inputs(processor, ("audio",)))
    assert not {"get_audio_features", "get_image_features", "get_video_features"} & set(vars(lockstep))


@pytest.mark.parametrize("streams", [(), ("audio",), ("video",), STREAMS], ids=str)
def test_frozen_encoders_run_without_a_graph(models, streams):
    """As under LoRA (encoders and embedding frozen; transformers' ``enable_input_require_grads``, which makes the
    input embedding of every tower require grad): the encoders, real or dummy, leave nothing for the backward, while
    the logits and the language model's gradients stay those of the thinker without lockstep."""
    processor, plain, lockstep = models
    inputs = _inputs(processor, streams)
    frozen = [m for model in (plain, lockstep) for m in (model.audio_tower, model.visual, model.get_input_embeddings())]
    outputs: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda mod, a, out: outputs.append(out))
        for m in (lockstep.audio_tower, lockstep.visual)
    ]
    for model in (plain, lockstep):
        model.enable_input_require_grads()  # as verl does for LoRA with gradient checkpointing: every tower's input
    try:
        for module in frozen:
            module.requires_grad_(False)
        assert all(encoder_lockstep.is_frozen(lockstep, slot) for slot in STREAMS)
        plain.zero_grad(set_to_none=True)
        lockstep.zero_grad(set_to_none=True)
        out_plain, out_lockstep = plain(**inputs).logits, lockstep(**inputs).logits
        assert torch.equal(out_plain, out_lockstep)
        out_plain.mean().backward()
        out_lockstep.mean().backward()
    finally:
        for handle in handles:
            handle.remove()
        for model in (plain, lockstep):
            model.disable_input_require_grads()
        for module in frozen:
            module.requires_grad_(True)
    assert len(outputs) == 3  # audio, image, video: every slot ran
    assert not any(t.requires_grad for out in outputs for t in encoder_lockstep._tensors(out))
    grads_plain = {n: p.grad for n, p in plain.named_parameters()}
    for name, param in lockstep.named_parameters():
        if grads_plain[name] is None:
            assert param.grad is None, name
        else:
            assert torch.equal(param.grad, grads_plain[name]), name


def _two_ranks(
    path: Path, out: Path, lockstep: bool, timeout: int = 240, **env_vars: str
) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOCKSTEP": "1" if lockstep else "0", "OMP_NUM_THREADS": "1", **env_vars}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    proc = subprocess.Popen(
        [*cmd, str(path), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        return subprocess.CompletedProcess(proc.args, -9, stdout + "\n[timed out]")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout)


@pytest.mark.slow
def test_two_ranks_with_different_streams_give_the_one_process_gradient(family_model_dir, models, tmp_path):
    """Rank 0 holds audio only, rank 1 video only: FSDP2 over gloo, sharded by verl's own ``apply_fsdp2`` (the token
    embedding a unit of its own), and the mean gradient of the two ranks equals the gradient of the mean loss in one
    process."""
    _, path = family_model_dir
    processor, _, lockstep = models
    result = _two_ranks(path, tmp_path / "grads.pt", lockstep=True)
    assert result.returncode == 0, result.stdout[-4000:]
    assert_same_collectives(tmp_path / "grads.pt")
    two_ranks = torch.load(tmp_path / "grads.pt")
    lockstep.zero_grad(set_to_none=True)
    losses = [lockstep(**_inputs(processor, (s,))).logits.float().mean() for s in ("audio", "video")]
    (sum(losses) / 2).backward()
    one = {n: p.grad for n, p in lockstep.named_parameters() if p.grad is not None}
    assert set(two_ranks) == set(one)
    for name, grad in one.items():
        torch.testing.assert_close(two_ranks[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def assert_same_collectives(out: Path) -> None:
    """The two ranks issued the same FSDP collectives, unit by unit, in the same order (lockstep_worker.py's record):
    two same-sized units gathered in opposite orders would mix their shards without an error."""
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] and any(call[0] == "reduce_scatter_tensor" for call in ranks[0])
    assert ranks[0] == ranks[1], next((i, a, b) for i, (a, b) in enumerate(itertools.zip_longest(*ranks)) if a != b)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("streams", "lora"), [("audio+video,video", "1"), ("audio+video,text", "1"), ("audio+video,text", "0")]
)
def test_two_ranks_issue_the_same_collectives(family_model_dir, tmp_path, streams, lora):
    """Per-rank stream mixes as verl's micro-batches hold them, with LoRA on the language model as verl builds the actor
    (frozen encoders, ``enable_input_require_grads``, gradient checkpointing) or full fine-tuning. Under LoRA a frozen
    encoder whose output joined the backward let the ranks reach the token embedding and a vision block in opposite
    orders (gloo: "65536 vs 10592")."""
    _, path = family_model_dir
    result = _two_ranks(path, tmp_path / "grads.pt", lockstep=True, STREAMS=streams, LORA=lora)
    assert result.returncode == 0, result.stdout[-4000:]
    assert_same_collectives(tmp_path / "grads.pt")


@pytest.mark.slow
def test_without_lockstep_two_ranks_with_different_streams_break(tiny_model_dir, tmp_path):
    """The control: the thinker as transformers builds it sends the two ranks into different FSDP collectives."""
    result = _two_ranks(tiny_model_dir, tmp_path / "grads.pt", lockstep=False, timeout=120)
    assert result.returncode != 0
    assert "doesn't match" in result.stdout or "[timed out]" in result.stdout, result.stdout[-4000:]
