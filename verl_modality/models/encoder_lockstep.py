"""Every encoder of an Omni thinker runs in every forward, in the thinker's own order, on every rank.

Under FSDP each encoder layer is a sharded unit: its forward all-gathers the layer's parameters and its backward
reduce-scatters their gradients. These are collectives, so every data-parallel rank must issue the same ones in the
same order. A thinker runs its audio encoder only for a micro-batch that holds audio and its vision encoder only for
images or videos; with per-sample streams (``data.modality.policy=exact``, one tag's batch split over ranks, a rank
whose shard happens to hold no audio) two ranks enter different collectives: gloo aborts with "Received data size
doesn't match", NCCL hangs or exchanges the wrong buffers. verl guards its Qwen2-VL forward the same way (a dummy
image through the vision tower, added as zero times its mean).

:func:`install` makes each forward of one thinker module run the three media slots, audio, image and video (the
order of the thinker's own forward, for every known family), each on its real input or, when the micro-batch has
none, on a tiny input of zeros; zero times the dummy outputs is added to the input embeddings before the decoder.
A dummy runs where the real encoder would: after the token-embedding lookup, which the thinker does first. Under
verl's wrap policy an untied ``nn.Embedding`` is an FSDP unit of its own, so a dummy run before the lookup puts the
embedding's all-gather after the encoder's on one rank and before it on the other (gloo: "65536 vs 8512 bytes").
No output value changes (``x + 0.0 == x``), every encoder gets a gradient (zero from a dummy), and the collectives
of a forward and its backward are the same on every rank whatever streams each rank holds. It is installed on the
modules verl's FSDP engine builds (actor and reference), at every world size, so that world size 1 and 2 step the
same optimizer state (an encoder with a zero gradient takes an AdamW step; one without a gradient does not).

A frozen encoder (no parameter trains: LoRA on the language model) runs, real or dummy, under ``no_grad``. Its output
then takes no part in the backward, whose order autograd sets from the graph. With a trainable encoder the token
embedding's gradient comes last on every rank. Under LoRA, though, the frozen embedding's output is a leaf
(transformers' ``enable_input_require_grads``, which verl turns on with the encoders' inputs too), whose gradient
autograd delivers as soon as it is ready: where one rank held audio and video and the other video only, FSDP
gathered the embedding and a vision block in opposite orders on the two ranks (gloo: "65536 vs 10592 bytes").
Without a graph through the frozen encoders there is nothing left to order, and no activations are kept for a
backward that has nothing to compute there.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: (slot, forward keyword of its input, the thinker's method that encodes it), in the thinker forward's order
SLOTS: tuple[tuple[str, str, str], ...] = (
    ("audio", "input_features", "get_audio_features"),
    ("image", "pixel_values", "get_image_features"),
    ("video", "pixel_values_videos", "get_video_features"),
)
#: the thinker attribute that holds each slot's encoder
ENCODER_MODULES = {"audio": "audio_tower", "image": "visual", "video": "visual"}
_MARK = "__verl_modality_lockstep__"


def dummy_call(model: torch.nn.Module, slot: str) -> tuple[Callable[..., Any], tuple, dict]:
    """The smallest valid encoder call of ``slot`` on ``model``: ``(method, args, kwargs)`` with inputs of zeros.

    audio: ``input_features`` ``(1, n_mels, 2 * n_window)`` and its all-ones mask (one chunk of the encoder);
    image / video: ``(m * m, C * T * p * p)`` patches of one ``(1, m, m)`` grid, m the spatial merge size.
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    config = model.config
    if slot == "audio":
        audio = config.audio_config
        frames = 2 * int(audio.n_window)
        feats = torch.zeros(1, int(audio.num_mel_bins), frames, device=device, dtype=dtype)
        mask = torch.ones(1, frames, device=device, dtype=torch.long)
        return model.get_audio_features, (feats, mask), {}
    vision = config.vision_config
    merge = int(vision.spatial_merge_size)
    channels = int(getattr(vision, "in_channels", None) or getattr(vision, "in_chans", 3))
    width = channels * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2
    pixels = torch.zeros(merge * merge, width, device=device, dtype=dtype)
    grid = torch.tensor([[1, merge, merge]], device=device, dtype=torch.long)
    method = model.get_image_features if slot == "image" else model.get_video_features
    return method, (pixels, grid), {}


def is_frozen(model: torch.nn.Module, slot: str) -> bool:
    """Whether no parameter of ``slot``'s encoder trains (LoRA on the language model, a frozen tower)."""
    return _frozen(getattr(model, ENCODER_MODULES[slot], None))


def _frozen(encoder: torch.nn.Module | None) -> bool:
    return encoder is not None and not any(p.requires_grad for p in encoder.parameters())


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):  # transformers' ModelOutput is a dict
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def zero_of(output: Any) -> torch.Tensor | None:
    """``0 * sum`` of every floating tensor in an encoder's output: a zero that keeps the encoder in the graph."""
    parts = [t.float().sum() for t in _tensors(output) if t.is_floating_point()]
    return sum(parts) * 0.0 if parts else None


class _Forward:
    """One forward's plan: which slots have input, which dummies have run, the zeros still to add."""

    def __init__(self, model: torch.nn.Module, present: list[bool]):
        self.model, self.present = model, present
        towers = {name: _frozen(getattr(model, name, None)) for name in set(ENCODER_MODULES.values())}  # once each
        self.frozen = [towers[ENCODER_MODULES[slot]] for slot, _, _ in SLOTS]
        self.done = 0  # slots before this index have run (real or dummy)
        self.zeros: list[torch.Tensor] = []

    def grad_mode(self, index: int) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.frozen[index] else contextlib.nullcontext()

    def run_dummies_until(self, stop: int) -> None:
        for i in range(self.done, stop):
            if not self.present[i]:
                method, args, kwargs = dummy_call(self.model, SLOTS[i][0])
                with self.grad_mode(i):
                    zero = zero_of(method(*args, **kwargs))
                if zero is not None:
                    self.zeros.append(zero)
        self.done = max(self.done, stop)

    def next_present(self, after: int) -> int:
        return next((i for i in range(after + 1, len(SLOTS)) if self.present[i]), len(SLOTS))


def _wrap_encoder(model: torch.nn.Module, index: int, plan: _Forward) -> Callable[..., Any]:
    method = getattr(model, SLOTS[index][2])

    @functools.wraps(method)
    def encode(*args: Any, **kwargs: Any) -> Any:
        plan.run_dummies_until(index)  # nothing left to run here unless the thinker skipped a slot we saw as present
        with plan.grad_mode(index):
            out = method(*args, **kwargs)
        plan.done = max(plan.done, index + 1)
        plan.run_dummies_until(plan.next_present(index))
        return out

    return encode


@contextmanager
def _lockstep(model: torch.nn.Module, present: list[bool]) -> Iterator[_Forward]:
    plan = _Forward(model, present)
    saved = {name: model.__dict__.get(name) for _, _, name in SLOTS}
    for i, (_, _, name) in enumerate(SLOTS):
        if present[i]:
            setattr(model, name, _wrap_encoder(model, i, plan))

    def add_zeros(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        plan.run_dummies_until(len(SLOTS))  # a slot the thinker did not encode after all
        embeds = kwargs.get("inputs_embeds")
        if not plan.zeros or embeds is None:
            return None
        kwargs["inputs_embeds"] = embeds + sum(plan.zeros).to(embeds.dtype)
        return args, kwargs

    def after_embedding(module: torch.nn.Module, args: tuple, output: Any) -> None:
        # the thinker looks up its token embeddings before it encodes any stream: dummies of the slots before the
        # first present one run here, where that stream's encoder would run, not before the lookup
        plan.run_dummies_until(plan.next_present(-1))

    handles = [
        model.get_input_embeddings().register_forward_hook(after_embedding),
        model.model.register_forward_pre_hook(add_zeros, with_kwargs=True),
    ]
    try:
        yield plan
    finally:
        for handle in handles:
            handle.remove()
        for name, value in saved.items():
            if value is None:
                model.__dict__.pop(name, None)
            else:
                setattr(model, name, value)


def install(model: torch.nn.Module) -> torch.nn.Module:
    """Make every forward of ``model`` (a thinker) run all encoders in lockstep (see the module docstring).
    Idempotent; returns ``model``."""
    forward = model.forward
    if getattr(forward, _MARK, False):
        return model
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def lockstep_forward(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs).arguments
        present = [bound.get(key) is not None for _, key, _ in SLOTS]
        with _lockstep(model, present):
            return forward(*args, **kwargs)

    setattr(lockstep_forward, _MARK, True)
    model.forward = lockstep_forward
    return model


def is_installed(model: torch.nn.Module) -> bool:
    return bool(getattr(model.forward, _MARK, False))
