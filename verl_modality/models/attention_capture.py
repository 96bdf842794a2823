"""Audio attention mass of an Omni thinker, from query/key states captured during a normal forward.

MAPO-AT (docs/method.md §5) needs, per response token, the attention probability mass on the audio-placeholder keys on a
few late decoder layers. Asking the model for attention probabilities (``output_attentions=True``) forces eager
attention and a ``(B, H, L, L)`` matrix per layer. Instead, :class:`AudioAttentionCapture` puts a forward pre-hook on
the chosen ``model.model.layers[i].self_attn`` modules: the hook receives the module's ``hidden_states`` and
``position_embeddings`` ``(cos, sin)`` and recomputes the post-RoPE query and key states with the module's own
``q_proj`` / ``k_proj`` (and q/k norms) and the rotary function of the module's own source file, as the model
family's adapter describes (:meth:`verl_modality.models.family.OmniFamily.query_key_states`). The module itself
then runs unchanged, with whatever attention implementation the model was loaded with (sdpa, flash, eager). The
mass is computed afterwards by :func:`verl_modality.algorithms.audio_mass.audio_attention_mass` (chunked, no
attention matrix), and its gradient flows back through the recomputed projections into the model.

Usage::

    with AudioAttentionCapture(model) as cap:           # default: the last three decoder layers
        out = model(input_ids=..., attention_mask=..., position_ids=..., **multi_modal_inputs)
    per_layer = cap.audio_mass(audio_key_mask_from_ids(input_ids, audio_id), response_length=R,
                               attention_mask=attention_mask)              # list of (B, H, R)
    a = reduce_heads_layers(per_layer)                                     # (B, R)

Scope: training-style forwards over the whole sequence (no KV cache; a forward with ``past_key_values`` is recorded
with its new positions only and is not supported by :meth:`AudioAttentionCapture.audio_mass`). Sliding-window
attention (off in both Omni families) is not modelled. Under gradient checkpointing the recomputation during backward
is not recorded again (the forward record is kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from verl_modality.algorithms.audio_mass import (
    audio_attention_mass,
    naive_audio_attention_mass,
    reduce_heads_layers,
)
from verl_modality.models.family import OmniFamily, families

__all__ = [
    "AudioAttentionCapture",
    "audio_key_mask_from_ids",
    "decoder_layers",
    "nested_response_audio_mass",
    "response_audio_mass",
    "usable_layers",
]

DEFAULT_NUM_LAYERS = 3


def decoder_layers(model: Any) -> Sequence[torch.nn.Module]:
    """The text decoder layers of a thinker (``model.model.layers``), also through a wrapper's ``.module`` and a PEFT
    (LoRA) model's ``get_base_model()``: the layers are the thinker's, their adapted projections included."""
    inner = getattr(model, "module", model)
    if callable(getattr(inner, "get_base_model", None)):  # PeftModel: a bare .model resolves to the thinker
        inner = inner.get_base_model()
    text_model = getattr(inner, "model", None)
    layers = getattr(text_model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(inner).__name__} has no text decoder layers at .model.layers")
    return layers


def audio_key_mask_from_ids(input_ids: torch.Tensor, audio_token_id: int) -> torch.Tensor:
    """Bool ``(B, L)``: True where ``input_ids`` ``(B, L)`` is the audio placeholder (``<|AUDIO|>``)."""
    return input_ids == int(audio_token_id)


class AudioAttentionCapture:
    """Context manager recording post-RoPE ``q`` ``(B, H, L, D)`` and ``k`` ``(B, Hk, L, D)`` on chosen layers.

    Args:
        model: an Omni thinker of a known family (anything with ``.model.layers[i].self_attn`` of
            the same kind), or a PEFT model wrapping one (its LoRA q/k adapters enter the captured states).
        layers: decoder layer indices (negative counts from the end); default the last three (or all, if fewer).
    """

    def __init__(self, model: Any, layers: Sequence[int] | None = None):
        all_layers = decoder_layers(model)
        n = len(all_layers)
        if layers is None:
            layers = range(max(0, n - DEFAULT_NUM_LAYERS), n)
        idx = set()
        for i in layers:
            if not -n <= int(i) < n:
                raise ValueError(f"layer index {i} out of range for {n} decoder layers")
            idx.add(int(i) % n)
        if not idx:
            raise ValueError("no layers chosen")
        self.layers: list[int] = sorted(idx)
        self._modules = {i: all_layers[i].self_attn for i in self.layers}
        self._handles: list[Any] = []
        self.states: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- hooks ----------------------------------------------------------------------------------------------------
    def __enter__(self) -> AudioAttentionCapture:
        if self._handles:
            raise RuntimeError("AudioAttentionCapture is already active")
        for i, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if torch._C._current_graph_task_id() != -1:  # recomputation inside backward (gradient checkpointing)
                return None
            hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            position_embeddings = kwargs.get("position_embeddings")
            if position_embeddings is None:
                raise RuntimeError(f"layer {layer}: self_attn was called without position_embeddings")
            self.states[layer] = query_key_states(module, hidden_states, position_embeddings)
            return None

        return hook

    def clear(self) -> None:
        """Drop the recorded states (and the graph they hold)."""
        self.states.clear()

    # -- mass -----------------------------------------------------------------------------------------------------
    def audio_mass(
        self,
        audio_key_mask: torch.Tensor,
        response_length: int | None = None,
        attention_mask: torch.Tensor | None = None,
        predictive: bool = True,
        query_chunk: int = 256,
        naive: bool = False,
    ) -> list[torch.Tensor]:
        """Per captured layer, the audio attention mass ``(B, H, Tq)`` of the query positions.

        Args:
            audio_key_mask: bool ``(B, L)`` audio key positions (:func:`audio_key_mask_from_ids`).
            response_length: ``R``; the queries are those of the last ``R`` tokens (verl layout: prompt left padded,
                response right padded, ``L = P + R``). None: every position.
            attention_mask: ``(B, L)`` 1 on real tokens; padding keys get no attention.
            predictive: True: response token ``t`` uses the query of the position that *predicts* it (position
                ``L - R - 1 + t``, where its log-prob and entropy come from); False: the query at the token itself.
            query_chunk: see :func:`audio_attention_mass`.
            naive: use :func:`naive_audio_attention_mass` (materialises the probabilities; tests and benchmark).
        """
        if not self.states:
            raise RuntimeError("nothing captured: run a forward inside the context first")
        out = []
        for i in self.layers:
            if i not in self.states:
                raise RuntimeError(f"layer {i} was not run in the captured forward")
            q, k = self.states[i]
            length = k.shape[2]
            if tuple(audio_key_mask.shape) != (k.shape[0], length):
                raise ValueError(f"audio_key_mask {tuple(audio_key_mask.shape)} does not match {(k.shape[0], length)}")
            r = length if response_length is None else int(response_length)
            end = length - 1 if predictive and response_length is not None else length
            if not 0 < r <= end:
                raise ValueError(f"response_length={response_length} does not fit a sequence of {length}")
            pad = attention_mask.bool()[:, :end] if attention_mask is not None else None
            scale = getattr(self._modules[i], "scaling", None)
            args = (q[:, :, end - r : end], k[:, :, :end], audio_key_mask.bool()[:, :end])
            if naive:
                out.append(naive_audio_attention_mass(*args, causal=True, scale=scale, key_padding_mask=pad))
            else:
                out.append(
                    audio_attention_mass(*args, causal=True, query_chunk=query_chunk, scale=scale, key_padding_mask=pad)
                )
        return out


def query_key_states(
    module: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-RoPE ``(q (B, H, L, D), k (B, Hk, L, D))`` of an Omni text attention module, as its forward makes them
    (the module's family knows how: :meth:`verl_modality.models.family.OmniFamily.query_key_states`)."""
    return family_of_module(module).query_key_states(module, hidden_states, position_embeddings)


def family_of_module(module: torch.nn.Module) -> OmniFamily:
    """The family of a text attention module, from its config's model type."""
    config = getattr(module, "config", None)
    for family in families():
        if type(module).__module__ == family.modeling_module:
            return family
    raise TypeError(f"{type(module).__name__} (config {type(config).__name__}) belongs to no known Omni family")


def response_audio_mass(
    capture: AudioAttentionCapture,
    input_ids: torch.Tensor,
    audio_token_id: int,
    response_length: int,
    attention_mask: torch.Tensor | None = None,
    predictive: bool = True,
    query_chunk: int = 256,
) -> torch.Tensor:
    """``(B, R)`` response-token audio mass: max over heads, mean over the captured layers."""
    per_layer = capture.audio_mass(
        audio_key_mask_from_ids(input_ids, audio_token_id),
        response_length=response_length,
        attention_mask=attention_mask,
        predictive=predictive,
        query_chunk=query_chunk,
    )
    return reduce_heads_layers(per_layer)


def nested_response_audio_mass(
    capture: AudioAttentionCapture,
    input_ids: torch.Tensor,
    response_lengths: list[int],
    audio_token_id: int,
    packed: bool,
) -> torch.Tensor:
    """``(B, R_max)`` audio attention mass of each response token (max over heads, mean over layers), for verl's
    actor batches.

    ``input_ids`` is verl's nested ``(B, j)`` full-sequence ids; the model saw the sequences either packed into one
    row (``packed``, remove-padding) or right-padded one per row. Token t of a response uses the query of the
    position that predicts it, and keys up to that position.
    """
    lengths = input_ids.offsets().diff().tolist()
    starts = input_ids.offsets()[:-1].tolist()
    values = input_ids.values()
    r_max = max(response_lengths)
    per_layer = []
    for layer in capture.layers:
        q, k = capture.states[layer]
        scale = getattr(capture._modules[layer], "scaling", None)
        rows = []
        for i, (length, r) in enumerate(zip(lengths, response_lengths, strict=True)):
            row, start = (0, starts[i]) if packed else (i, 0)
            p = length - r
            q_i = q[row : row + 1, :, start + p - 1 : start + length - 1]
            k_i = k[row : row + 1, :, start : start + length - 1]
            audio = (values[starts[i] : starts[i] + length - 1] == audio_token_id)[None]
            mass = audio_attention_mass(q_i, k_i, audio.to(q.device), causal=True, scale=scale)[0]  # (H, r)
            rows.append(torch.nn.functional.pad(mass, (0, r_max - r)))
        per_layer.append(torch.stack(rows))
    return reduce_heads_layers(per_layer)


def usable_layers(model: Any, layers: Sequence[int]) -> list[int]:
    """``layers`` without the negative indices a shallow model does not reach ("the last three" of a two-layer model
    are its two layers); a positive index beyond the depth is an error (raised by the capture)."""
    n = len(decoder_layers(model))
    kept = [int(i) for i in layers if int(i) >= -n]
    if not kept:
        raise ValueError(f"algorithm.mapo_at.layers={list(layers)}: none of them exists in a {n}-layer model")
    return kept
