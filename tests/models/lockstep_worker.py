"""One rank of the two-rank encoder-lockstep test (run by torchrun; see test_encoder_lockstep.py).

Rank 0 holds one audio-only prompt, rank 1 one video-only prompt. Each shards the tiny thinker with verl's own
``apply_fsdp2`` and the leaf-layer classes the plugin gives verl's engine (every leaf layer and the untied token
embedding, then the root), runs forward + backward of its prompt's mean logit, and a second forward under
``no_grad`` (as verl's log-prob pass does); rank 0 writes the full gradients (the mean over the two ranks) to
``argv[2]``. ``LOCKSTEP=0`` leaves the thinker as transformers builds it.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from verl.utils.fsdp_utils import apply_fsdp2

from verl_modality.models import encoder_lockstep
from verl_modality.models.family import family_of
from verl_modality.models.omni import load_omni_processor, load_thinker
from verl_modality.models.omni_inputs import encode_prompt


def prompt(processor, stream: str):
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    video = rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": stream}, {"type": "text", "text": "What is it?"}]}]
    return encode_prompt(processor, messages, **({"audios": [audio]} if stream == "audio" else {"videos": [video]}))


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
    model._no_split_modules = list(family_of(model.config).fsdp_layer_classes)  # as verl_workers._build_module
    apply_fsdp2(model, {}, {})
    enc = prompt(processor, "audio" if rank == 0 else "video")
    loss_of(model, enc).backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():  # read before this forward: it leaves the root's parameters unsharded, without gradients
        loss_of(model, enc)
    if rank == 0:
        torch.save(grads, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
