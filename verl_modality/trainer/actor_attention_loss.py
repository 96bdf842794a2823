"""MAPO-AT's attention loss inside verl's actor update (SPEC §5), worker side.

Two patches, both inert unless the update batch carries the ``mapo_at`` knob (set by
:class:`~verl_modality.trainer.modality_trainer.ModalityTrainerSync` when ``algorithm.mapo_at.attention_loss`` is on):

* ``FSDPEngineWithLMHead.forward_step`` runs the model inside :class:`AudioAttentionCapture` for training
  micro-batches, so the post-RoPE q/k of the chosen layers are recorded while the model's own attention runs as usual;
* ``engine_workers.ppo_loss`` (the actor's loss) adds eta * L_attn to verl's PPO loss, computed from the captured
  states, per sequence (packed or padded layout alike) with the chunked audio attention mass, and the per-token
  fields the trainer wrote: ``mapo_dh`` (entropy difference), ``mapo_attn_content`` (content tokens),
  ``mapo_attn_reward`` and ``mapo_attn_adv`` (task reward and |A_i|, repeated over the response).

L_attn is a mean over the micro-batch's content tokens; it is scaled by the micro-batch's share of the global batch
(sequences), so gradient accumulation over micro-batches gives the batch mean.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import torch

from verl_modality.algorithms.attention_loss import attention_loss, audio_attention_mass, reduce_heads_layers
from verl_modality.models.attention_capture import AudioAttentionCapture

KNOB = "mapo_at"
FIELDS = ("mapo_dh", "mapo_attn_content", "mapo_attn_reward", "mapo_attn_adv")
_ACTIVE: contextvars.ContextVar[AudioAttentionCapture | None] = contextvars.ContextVar("mapo_at_capture", default=None)


def _knob(data: Any) -> dict | None:
    from verl.utils import tensordict_utils as tu

    value = tu.get_non_tensor_data(data=data, key=KNOB, default=None)
    return dict(value) if value else None


def _padded(nested: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    return nested.to_padded_tensor(fill) if nested.is_nested else nested


def response_audio_mass(
    capture: AudioAttentionCapture,
    input_ids: torch.Tensor,
    response_lengths: list[int],
    audio_token_id: int,
    packed: bool,
) -> torch.Tensor:
    """``(B, R_max)`` audio attention mass of each response token (max over heads, mean over layers).

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


def usable_layers(model: Any, layers: list[int]) -> list[int]:
    """``layers`` without the negative indices a shallow model does not reach ("the last three" of a two-layer model
    are its two layers); a positive index beyond the depth is an error (raised by the capture)."""
    from verl_modality.models.attention_capture import decoder_layers

    n = len(decoder_layers(model))
    kept = [int(i) for i in layers if int(i) >= -n]
    if not kept:
        raise ValueError(f"algorithm.mapo_at.layers={list(layers)}: none of them exists in a {n}-layer model")
    return kept


def _patch_forward_step(module) -> None:
    cls = module.FSDPEngineWithLMHead
    if getattr(cls.forward_step, "__verl_modality__", False):
        return
    original = cls.forward_step

    @functools.wraps(original)
    def forward_step(self, micro_batch, loss_function, forward_only):
        knob = None if forward_only else _knob(micro_batch)
        if knob is None:
            return original(self, micro_batch, loss_function, forward_only)
        with AudioAttentionCapture(self.module, usable_layers(self.module, knob["layers"])) as capture:
            token = _ACTIVE.set(capture)
            try:
                return original(self, micro_batch, loss_function, forward_only)
            finally:
                _ACTIVE.reset(token)
                capture.clear()

    forward_step.__verl_modality__ = True
    cls.forward_step = forward_step


def with_attention_loss(ppo_loss):
    """verl's ``ppo_loss`` plus eta * L_attn when the batch asks for it (see the module docstring)."""
    if getattr(ppo_loss, "__verl_modality__", False):
        return ppo_loss

    @functools.wraps(ppo_loss)
    def loss_fn(config, model_output, data, dp_group=None):
        loss, metrics = ppo_loss(config, model_output, data, dp_group)
        capture = _ACTIVE.get()
        knob = _knob(data)
        if capture is None or knob is None:
            return loss, metrics
        from verl.utils import tensordict_utils as tu

        response_mask = _padded(data["response_mask"]).float()
        lengths = data["response_mask"].offsets().diff().tolist()
        packed = bool(tu.get_non_tensor_data(data=data, key="use_remove_padding", default=True))
        a = response_audio_mass(capture, data["input_ids"], lengths, int(knob["audio_token_id"]), packed)
        l_attn, attn_metrics = attention_loss(
            a,
            response_mask.to(a.device),
            _padded(data["mapo_attn_content"]).bool().to(a.device),
            _padded(data["mapo_dh"]).float().to(a.device),
            _padded(data["mapo_attn_reward"])[:, 0].float().to(a.device),
            _padded(data["mapo_attn_adv"])[:, 0].float().to(a.device),
            kappa=float(knob["kappa"]),
            tau_base=float(knob["tau_base"]),
            c_mask=float(knob["c_mask"]),
        )
        global_bsz = data["global_batch_size"] if "global_batch_size" in data.keys() else None
        global_bsz = tu.get_non_tensor_data(data=data, key="global_batch_size", default=None) or global_bsz
        share = len(lengths) / float(global_bsz) if global_bsz else 1.0
        loss = loss + float(knob["eta"]) * share * l_attn.to(loss.dtype)
        metrics.update({f"mapo_at/{k.split('/', 1)[1]}": v for k, v in attn_metrics.items()})
        return loss, metrics

    loss_fn.__verl_modality__ = True
    return loss_fn


def _patch_engine_workers(module) -> None:
    module.ppo_loss = with_attention_loss(module.ppo_loss)
