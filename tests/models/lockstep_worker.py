"""One rank of the two-rank encoder-lockstep test (run by torchrun; see test_encoder_lockstep.py).

Each rank holds one prompt with the streams ``STREAMS`` names for it (comma-separated per rank, each ``+``-joined
``audio`` and ``video``, or ``text``; default ``audio,video``: rank 0 audio, rank 1 video). Each shards the tiny thinker with verl's own ``apply_fsdp2`` and the leaf-layer classes the
plugin gives verl's engine (every leaf layer and the untied token embedding, then the root), runs forward + backward of
its prompt's mean logit, and a second forward under ``no_grad`` (as verl's log-prob pass does); rank 0 writes the full
gradients (the mean over the two ranks) to ``argv[2]``, and every rank writes the FSDP collectives it issued, in
order, as ``[op, module, numel]`` to ``argv[2]`` + ``.rank<r>.json``: two ranks that gather two same-sized units in
opposite orders exchange the wrong shards without an error, so the test compares these lists. ``LOCKSTEP=0`` leaves
the thinker as transformers builds it; ``LORA=1`` builds the actor as verl does with ``lora_rank=8`` and the plugin's
default targets (gradient checkpointing, ``enable_input_require_grads``, PEFT adapters on the language model only).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from verl.utils.fsdp_utils import apply_fsdp2

from verl_modality.models import encoder_lockstep
from verl_modality.models.family import family_of
from verl_modality.models.omni import load_omni_processor, load_thinker
from verl_modality.models.omni_inputs import encode_prompt


def prompt(processor, streams: str):
    """A prompt with the ``+``-joined ``streams`` (audio, video), or text only (``text``)."""
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    video = rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    kinds = [k for k in streams.split("+") if k != "text"]
    media = {{"audio": "audios", "video": "videos"}[k]: [{"audio": audio, "video": video}[k]] for k in kinds}
    messages = [{"role": "user", "content": [*({"type": k} for k in kinds), {"type": "text", "text": "What is it?"}]}]
    return encode_prompt(processor, messages, **media)


def record_fsdp_collectives() -> list[list]:
    """Wraps the two collectives FSDP2 issues (``all_gather_into_tensor``, ``reduce_scatter_tensor``) to append
    ``[op, module, numel]`` to the returned list; ``module`` is the FSDP unit's name, read from the caller's frames."""
    calls: list[list] = []

    def unit() -> str:
        frame = sys._getframe(2)
        while frame is not None:
            owner = getattr(frame.f_locals.get("self"), "_module_fqn", None)
            if owner is not None:
                return str(owner)
            frame = frame.f_back
        return "?"

    for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        original = getattr(dist, name)

        def recorded(*args, _original=original, _name=name, **kwargs):
            tensor = args[1] if len(args) > 1 else kwargs.get("input_tensor", kwargs.get("input"))
            calls.append([_name, unit(), int(tensor.numel())])
            return _original(*args, **kwargs)

        setattr(dist, name, recorded)
    return calls


def loss_of(model, enc) -> torch.Tensor:
    ids = enc.input_ids[None]
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), **enc.multi_modal_inputs).logits.float().mean()


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    processor = load_omni_processor(path)
    model = load_thinker(path)
    if os.environ.get("LOCKSTEP", "1") == "1":
        encoder_lockstep.install(model)
    if os.environ.get("LORA") == "1":  # as verl's LoRA actor, with the plugin's default targets
        from peft import LoraConfig, get_peft_model

        from verl_modality.models import lora

        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        targets = lora.thinker_target_modules(lora.ALL_LINEAR)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, exclude_modules=lora.ENCODERS)
        model = get_peft_model(model, config)
    model._no_split_modules = list(family_of(model.config).fsdp_layer_classes)  # as verl_workers._build_module
    apply_fsdp2(model, {}, {})
    calls = record_fsdp_collectives()
    enc = prompt(processor, os.environ.get("STREAMS", "audio,video").split(",")[rank])
    loss_of(model, enc).backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():  # read before this forward: it leaves the root's parameters unsharded, without gradients
        loss_of(model, enc)
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(calls))
    if rank == 0:
        torch.save(grads, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
